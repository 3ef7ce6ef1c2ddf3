"""The command line: JSON shapes, and one-line errors with exit code 2."""

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest

from door_access.cli import main

from conftest import CELEBRITY, FR_IMAGES, REPO

pytestmark = pytest.mark.usefixtures("shared_encoder")  # the commands run in this process share one model


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    """A config whose images are obama + biden, and whose cache is private to this module."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    (images / "broken.jpg").write_bytes(b"")
    config = root / "config.yaml"
    config.write_text(f"paths:\n  images: images\n  weights: {REPO / 'weights'}\n  cache: cache\n")
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_identify_json(capsys, setup_dir):
    cfg = setup_dir / "config.yaml"
    code, out, _ = run(capsys, "identify", "--config", cfg, "--json", FR_IMAGES / "obama2.jpg",
                       next((CELEBRITY / "val" / "madonna").glob("*.jpg")))
    assert code == 0
    first, second = [json.loads(line) for line in out.splitlines()]
    assert first["image"] == str(FR_IMAGES / "obama2.jpg")
    [face] = first["faces"]
    assert face["name"] == "obama" and 0 <= face["distance"] < 0.9
    assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
    assert second["faces"] and second["faces"][0]["name"] is None  # madonna is not enrolled here


def test_verify_json(capsys, setup_dir):
    cfg = setup_dir / "config.yaml"
    code, out, _ = run(capsys, "verify", "--config", cfg, "--json", FR_IMAGES / "obama3.jpg", "obama")
    assert code == 0
    result = json.loads(out)
    assert result["name"] == "obama" and result["match"] is True and result["distance"] < 0.9
    code, out, _ = run(capsys, "verify", "--config", cfg, "--json", FR_IMAGES / "obama3.jpg", "biden")
    result = json.loads(out)
    assert code == 0 and result["match"] is False and result["distance"] > 0.9


def test_gallery_json(capsys, setup_dir):
    code, out, _ = run(capsys, "gallery", "--config", setup_dir / "config.yaml", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["people"] == {"biden": 1, "obama": 1}
    assert result["skipped"] == [{"path": str(setup_dir / "images" / "broken.jpg"), "reason": "empty file (0 bytes)"}]


def test_images_flag_overrides_config(capsys, setup_dir, tmp_path):
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "someone.jpg")
    code, out, _ = run(capsys, "gallery", "--config", setup_dir / "config.yaml", "--images", tmp_path, "--json")
    assert code == 0 and json.loads(out)["people"] == {"someone": 1}


def test_bench_encoder_json(capsys, setup_dir):
    code, out, _ = run(capsys, "bench", "encoder", "--config", setup_dir / "config.yaml", "--json", "--repeats", "1",
                       "--photo", FR_IMAGES / "obama.jpg")
    assert code == 0
    result = json.loads(out)
    assert set(result["faces_per_s"]) == {"1", "8", "32"} and all(v > 0 for v in result["faces_per_s"].values())
    assert set(result["stage_ms"]) == {"decode", "detect", "align", "encode"}
    assert all(v > 0 for v in result["stage_ms"].values())


@pytest.mark.parametrize("argv,needle", [
    (["identify", "--json"], "the following arguments are required"),
    (["verify", "x.jpg"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
    (["identify", "{missing}"], "file not found"),
    (["identify", "{broken}"], "empty file"),
    (["verify", "{obama}", "nobody"], "'nobody' is not enrolled"),
    (["gallery", "--images", "{nowhere}"], "does not exist"),
    (["gallery", "--config", "{nowhere}/c.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, setup_dir, argv, needle):
    subst = {"missing": setup_dir / "missing.jpg", "broken": setup_dir / "images" / "broken.jpg",
             "obama": FR_IMAGES / "obama.jpg", "nowhere": setup_dir / "nowhere"}
    argv = [a.format(**subst) for a in argv]
    if "--config" not in argv and argv[0] != "frobnicate" and len(argv) > 1 and not argv[1].startswith("-") or \
            argv[0] == "gallery" and "--images" in argv:
        argv += ["--config", str(setup_dir / "config.yaml")]
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_console_script_and_run_door_py(tmp_path):
    """The installed entry point and run_door.py both reach the same CLI (real processes): the console
    script relocks the door (its hook runs, the lock is logged) and run_door.py prints that log."""
    marker = tmp_path / "relocked"
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n"
                      f"door:\n  id: hall\n  relock_command: {json.dumps(['touch', str(marker)])}\n")
    locked = subprocess.run([str(REPO / ".venv" / "bin" / "door-access"), "lock", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert locked.returncode == 0, locked.stderr[-2000:]
    assert marker.is_file()
    logged = subprocess.run([sys.executable, str(REPO / "run_door.py"), "log", "--csv", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert logged.returncode == 0, logged.stderr[-2000:]
    header, *rows = list(csv.reader(io.StringIO(logged.stdout)))
    assert header == ["time", "door", "event", "name", "distance", "track", "detail"]
    assert [(door, event) for _, door, event, *_ in rows] == [("hall", "relock")]
