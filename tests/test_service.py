"""`door-access service install|uninstall`: the systemd unit passes `systemd-analyze verify`, runs the door
with absolute paths, restarts it with a back-off and supervises it (Type=notify, WatchdogSec); the user
install adds the kiosk's autostart entry; uninstall removes both.

systemd-analyze is installed by the `analyze` fixture when the tests run as root on a Debian-like
system (as tests/test_kiosk.py installs Xvfb); otherwise the verify test is skipped with the reason.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys

import pytest

from door_access.cli import main
from door_access.config import load_config
from door_access.tools.service import unit_text

from conftest import REPO

CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def analyze() -> str:
    if not shutil.which("systemd-analyze"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("systemd-analyze missing and cannot install it (not root or no apt-get): "
                        "apt-get install systemd")
        cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "systemd"]
        if subprocess.run(cmd, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            subprocess.run(cmd, capture_output=True, timeout=900)
        if not shutil.which("systemd-analyze"):
            pytest.skip("could not install systemd (for systemd-analyze) with apt-get")
    return shutil.which("systemd-analyze")


@pytest.fixture
def site(tmp_path):
    """A door's folder with a space in its name (quoting), holding its config."""
    folder = tmp_path / "front door"
    folder.mkdir()
    (folder / "config.yaml").write_text("watchdog:\n  stall_s: 20.0\ndoor:\n  hook_timeout_s: 10.0\n")
    return folder


def service(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "door_access", "service", *argv], capture_output=True, text=True,
                          env=CLI_ENV, cwd=cwd, timeout=120)


def read_unit(path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def test_system_unit_runs_the_door_headless_supervised_and_passes_verify(tmp_path, site, analyze):
    units = tmp_path / "units"
    proc = service("install", "--config", str(site / "config.yaml"), "--unit-dir", str(units), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    unit = units / "door-access.service"
    assert f"wrote {unit}" in proc.stdout and "systemctl enable --now door-access.service" in proc.stdout
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), verify.stderr
    s = read_unit(unit)["Service"]
    assert s["ExecStart"] == (f'{sys.executable} -m door_access run --config "{site / "config.yaml"}" --headless')
    assert s["WorkingDirectory"] == str(site)
    assert (s["Type"], s["NotifyAccess"], s["Restart"], s["UMask"]) == ("notify", "main", "always", "0077")
    assert int(s["WatchdogSec"]) == 40  # twice stall_s, at least 30
    assert int(s["TimeoutStopSec"]) == 35  # two relock tries of door.hook_timeout_s, and the rest
    assert int(s["RestartSec"]) >= 1 and read_unit(unit)["Unit"]["StartLimitIntervalSec"] == "0"
    assert read_unit(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_a_broken_unit_fails_verify(tmp_path, analyze):
    """The verify test above has teeth: the same checker refuses a unit with a relative ExecStart."""
    unit = tmp_path / "door-access.service"
    unit.write_text(unit_text(load_config(None), REPO / "config.yaml", user=False, python="venv/bin/python"))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert verify.returncode != 0 and "absolute path" in verify.stderr


def test_back_off_doubles_on_systemd_254_and_later(site):
    cfg = load_config(site / "config.yaml")
    assert "RestartSteps" not in unit_text(cfg, site / "config.yaml", user=True, version=252)
    newer = unit_text(cfg, site / "config.yaml", user=True, version=254)
    assert "RestartSteps=5" in newer and "RestartMaxDelaySec=120" in newer


def test_user_install_adds_the_kiosk_autostart_and_uninstall_removes_both(tmp_path, site, analyze):
    units, autostart = tmp_path / "user", tmp_path / "autostart"
    dirs = ["--user", "--unit-dir", str(units), "--autostart-dir", str(autostart)]
    proc = service("install", "--config", str(site / "config.yaml"), *dirs, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    unit, entry = units / "door-access.service", autostart / "door-access.desktop"
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    s = read_unit(unit)["Service"]
    assert "--headless" not in s["ExecStart"]  # the window once the session's display is known
    assert "User" not in s and read_unit(unit)["Install"]["WantedBy"] == "default.target"
    desktop = read_unit(entry)["Desktop Entry"]
    assert desktop["Type"] == "Application"
    assert "import-environment DISPLAY" in desktop["Exec"] and "restart door-access.service" in desktop["Exec"]
    assert "loginctl enable-linger" in proc.stdout
    proc = service("uninstall", *dirs, cwd=tmp_path)
    assert proc.returncode == 0 and not unit.exists() and not entry.exists()
    assert proc.stdout.splitlines() == [f"removed {unit}", f"removed {entry}"]


def test_install_without_a_config_file_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    assert main(["service", "install", "--unit-dir", str(tmp_path / "units")]) == 2
    assert "needs the door's config file" in capsys.readouterr().err
    assert not (tmp_path / "units").exists()


def test_the_unit_relocks_as_soon_as_the_door_ends_however_it_ended(tmp_path, site, analyze):
    """With a relock hook, `ExecStopPost=door-access lock`: systemd runs it after any end of the door (a crash,
    `kill -9`), before the restart, which relocks first too; the unit still passes verify."""
    (site / "config.yaml").write_text('door:\n  relock_command: ["/usr/local/bin/relay", "close"]\n')
    units = tmp_path / "units"
    proc = service("install", "--config", str(site / "config.yaml"), "--unit-dir", str(units), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    verify = subprocess.run([analyze, "verify", str(units / "door-access.service")], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    s = read_unit(units / "door-access.service")["Service"]
    assert s["ExecStopPost"] == f'{sys.executable} -m door_access lock --config "{site / "config.yaml"}"'
    assert "ExecStopPost" not in unit_text(load_config(None), site / "config.yaml", user=False)  # no hook: no lock
