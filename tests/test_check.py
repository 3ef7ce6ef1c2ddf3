"""`door-access check`: each part ok, or a problem with its fix; exit 0 only when all are ok."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from door_access.cli import main

from conftest import FR_IMAGES, REPO, SHARED_DATA

CLIP = SHARED_DATA / "face_recognition_examples" / "short_hamilton_clip.mp4"


def _site(root, camera=str(CLIP), weights=REPO / "weights", hooks="", extra=""):
    (root / "images" / "obama").mkdir(parents=True, exist_ok=True)
    shutil.copy(FR_IMAGES / "obama.jpg", root / "images" / "obama" / "a.jpg")
    os.chmod(root / "images" / "obama" / "a.jpg", 0o600)  # as `enroll` writes it; see test_privacy_*
    (root / "config.yaml").write_text(
        f"paths:\n  weights: {weights}\n  cache: cache\ncamera:\n  source: {json.dumps(camera)}\n"
        f"tts:\n  enabled: false\naccess_log:\n  path: logs/log.sqlite\ndoor:\n{hooks or '  unlock_seconds: 5.0'}\n"
        f"{extra}")
    os.chmod(root / "config.yaml", 0o600)  # it may hold secrets; see test_a_config_holding_a_secret_*
    return root / "config.yaml"


def _check(capsys, config, *extra):
    code = main(["check", "--config", str(config), *extra])
    return code, capsys.readouterr().out


def test_a_ready_machine_is_all_ok(capsys, tmp_path):
    hook = f"  unlock_command: [{json.dumps(sys.executable)}, '-c', 'pass']\n  webhook_url: https://door.example/unlock"
    code, out = _check(capsys, _site(tmp_path, hooks=hook), "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] is True, out
    checks = {c["name"]: c for c in result["checks"]}
    assert list(checks) == ["camera", "speaker", "models", "gallery", "hooks", "log", "privacy", "secrets"]
    assert checks["camera"]["detail"].endswith("640x360")  # a frame was read
    assert "1 people, 1 photos" in checks["gallery"]["detail"]
    assert all(c["ok"] and c["fix"] == "" for c in checks.values())


def test_each_problem_comes_with_its_fix(capsys, tmp_path):
    hook = tmp_path / "unlock.sh"
    hook.write_text("#!/bin/sh\n")  # not executable
    (tmp_path / "logs").write_text("a file where the log folder should be")
    config = _site(tmp_path, camera="9", weights=tmp_path / "no-weights",
                   hooks=f"  unlock_command: [{json.dumps(str(hook))}]\n  relock_command: [no-such-relay-tool]\n")
    shutil.rmtree(tmp_path / "images" / "obama")
    code, out = _check(capsys, config, "--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert not checks["camera"]["ok"] and "no camera at index 9" in checks["camera"]["detail"]
    assert not checks["models"]["ok"] and "door-access setup" in checks["models"]["fix"]
    assert not checks["gallery"]["ok"] and "nobody is enrolled" in checks["gallery"]["detail"]
    hooks = checks["hooks"]
    assert not hooks["ok"] and "is not executable" in hooks["detail"] and "chmod +x" in hooks["fix"]
    assert "'no-such-relay-tool' does not exist" in hooks["detail"]
    assert not checks["log"]["ok"] and "not a writable folder" in checks["log"]["detail"]
    assert checks["speaker"]["ok"]  # speech is off in this config
    assert all(c["fix"] for c in checks.values() if not c["ok"])
    # the text form: one line per part, and the fix under each problem
    code, text = _check(capsys, config)
    assert code == 1
    lines = text.splitlines()
    assert [x.split()[0] for x in lines if not x.startswith(" ")] == ["PROBLEM", "ok", "PROBLEM", "PROBLEM",
                                                                       "PROBLEM", "PROBLEM", "ok", "ok"]
    assert sum("fix:" in x for x in lines) == 5


def test_speech_without_its_audio_player_is_a_problem(capsys, tmp_path, monkeypatch):
    config = _site(tmp_path)
    config.write_text(config.read_text().replace("tts:\n  enabled: false\n", "tts:\n  enabled: true\n"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no aplay (nor anything else) on PATH
    code, out = _check(capsys, config, "--json")
    speaker = next(c for c in json.loads(out)["checks"] if c["name"] == "speaker")
    assert code == 1 and not speaker["ok"] and "apt-get install" in speaker["fix"], speaker
    config.write_text(config.read_text().replace("tts:\n  enabled: true\n", "tts:\n  enabled: true\n  wav_dir: wav\n"))
    code, out = _check(capsys, config, "--json")
    speaker = next(c for c in json.loads(out)["checks"] if c["name"] == "speaker")
    assert speaker["ok"] and "WAV" in speaker["detail"]


def test_check_loads_no_model(tmp_path):
    code = ("import sys\nfrom door_access.cli import main\ncode = main(sys.argv[1:])\n"
            "print('loaded:', sorted(m for m in ('tensorflow', 'keras', 'dlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, "check", "--config", str(_site(tmp_path))],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.stdout.splitlines()[-1] == "loaded: []", proc.stderr


def test_privacy_reports_files_others_can_read_and_notes_a_group_shared_folder(capsys, tmp_path):
    """Real files with real modes: a photo others can read, a snapshot, the log's WAL; group-readable passes."""
    config = _site(tmp_path)
    photo = tmp_path / "images" / "obama" / "a.jpg"
    wal, snapshot = tmp_path / "logs" / "log.sqlite-wal", tmp_path / "snapshots" / "denied-1.jpg"
    for path in (wal, snapshot, tmp_path / "cache" / "embeddings.sqlite"):
        path.parent.mkdir(exist_ok=True)
        path.touch()
        os.chmod(path, 0o600)

    def privacy():
        code, out = _check(capsys, config, "--json")
        return next(c for c in json.loads(out)["checks"] if c["name"] == "privacy")

    assert privacy()["ok"]
    os.chmod(photo, 0o640)  # a group-shared images folder: allowed, and said
    p = privacy()
    assert p["ok"] and "by their group for 1 file(s)" in p["detail"] and str(photo) in p["detail"]
    os.chmod(photo, 0o644)
    os.chmod(wal, 0o604)
    os.chmod(snapshot, 0o644)
    p = privacy()
    assert not p["ok"] and "3 file(s)" in p["detail"], p
    assert all(str(f) in p["detail"] for f in (photo, wal, snapshot))
    assert "chmod o-rwx" in p["fix"]


def test_a_config_holding_a_secret_that_others_can_read_is_a_problem_with_its_fix(capsys, tmp_path):
    """A real config file with real modes: each kind of secret makes a group- or world-readable file a problem."""
    def secrets(config):
        code, out = _check(capsys, config, "--json")
        return code, next(c for c in json.loads(out)["checks"] if c["name"] == "secrets")

    plain = _site(tmp_path / "plain", hooks="  webhook_url: https://door.example/")  # a host alone is no secret
    os.chmod(plain, 0o644)
    assert secrets(plain)[1]["ok"]
    for key, door, extra in (
            ("door.webhook_url", "  webhook_url: http://ha.local:8123/api/webhook/front-door-8f3k2", ""),
            ("door.webhook_secret", "  webhook_secret: s3cret-signing-key", ""),
            ("door.unlock_command", "  unlock_command: [curl, 'https://relay.local/open?token=abc123']", ""),
            ("mqtt.password", "", "mqtt:\n  username: door\n  password: hunter22\n")):
        config = _site(tmp_path / key, hooks=door, extra=extra)
        code, ok = secrets(config)
        assert ok["ok"] and key in ok["detail"], ok  # _site writes it 0600
        for mode in (0o640, 0o604, 0o620):
            os.chmod(config, mode)
            code, check = secrets(config)
            assert code == 1 and not check["ok"] and key in check["detail"] and f"{mode:04o}" in check["detail"]
            assert check["fix"] == f"chmod 600 {config.resolve()}"
