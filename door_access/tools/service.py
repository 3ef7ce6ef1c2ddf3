"""`door-access service install|uninstall`: a systemd unit that starts the door at boot, restarts it
after a crash and when its watchdog fires, and, for the kiosk window, a desktop autostart entry.

systemd does the supervising (no daemon of our own): `Type=notify` waits for the door's READY=1
(door locked, camera open, models loaded) and `WatchdogSec` for its WATCHDOG=1 pings, which the
progress monitor sends only while no stage is stalled (watchdog.py); a stalled stage exits 3 by
itself, and `WatchdogSec` catches the monitor itself frozen (a native call holding the GIL). The
door relocks first when it starts (runner.py), and `ExecStopPost=door-access lock` relocks as soon
as it has ended, however it ended (a crash, `kill -9`), without waiting for the restart.

- system (root): /etc/systemd/system/door-access.service, `run --headless` as the config file's
  owner, started at boot (multi-user.target).
- `--user`: ~/.config/systemd/user/door-access.service, `run` (headless until a display is known),
  and ~/.config/autostart/door-access.desktop, which hands the desktop session's display to the
  user manager and restarts the unit, so the kiosk window shows once someone is logged in.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path

from door_access.config import Config

log = logging.getLogger(__name__)

UNIT = "door-access.service"
DESKTOP = "door-access.desktop"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
RESTART_S = 5  # first wait before a restart; systemd >= 254 doubles it up to RESTART_MAX_S
RESTART_MAX_S = 120
START_TIMEOUT_S = 300  # models load in ~10-30 s on a busy 2-core machine; a first `setup` is not run here
WATCHDOG_MIN_S = 30  # the monitor pings every 0.25 s: missing them this long means the process is frozen


def user_unit_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def autostart_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "autostart"


def systemd_version() -> int | None:
    """The installed systemd's version (`systemctl --version`), None when there is none."""
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else None


def _quote(arg: str) -> str:
    """One ExecStart argument, quoted for systemd's parser (which also expands % and $)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    return arg if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg) else '"' + arg.replace("\\", "\\\\").replace(
        '"', '\\"') + '"'


def unit_text(cfg: Config, config_path: Path, user: bool, python: str = sys.executable,
              version: int | None = None) -> str:
    """The unit file. `version`: the target systemd's, for the exponential restart back-off (254+)."""
    config_path = config_path.resolve()
    if not (str(config_path) + python).isprintable():
        raise ValueError(f"{config_path!r}: a path with control characters cannot go into a unit file")
    argv = [python, "-m", "door_access", "run", "--config", str(config_path)] + ([] if user else ["--headless"])
    lock = [python, "-m", "door_access", "lock", "--config", str(config_path)]
    # relock once the door has ended, however it ended: a crash or `kill -9` in the unlock window
    relock = f"ExecStopPost={' '.join(_quote(a) for a in lock)}\n" if cfg.door.relock_command else ""
    backoff = (f"RestartSteps=5\nRestartMaxDelaySec={RESTART_MAX_S}\n" if version and version >= 254 else "")
    owner = "" if user else f"User={pwd.getpwuid(config_path.stat().st_uid).pw_name}\nSupplementaryGroups=video\n"
    watchdog_s = max(WATCHDOG_MIN_S, int(2 * cfg.watchdog.stall_s))
    stop_s = int(2 * cfg.door.hook_timeout_s + 15)  # the relock hook may need two tries at stop
    return f"""# Written by `door-access service install`; `door-access service uninstall` removes it.
[Unit]
Description=door-access face-recognition door ({config_path})
After=network-online.target
Wants=network-online.target
# never give up restarting: a door kiosk has nobody to start it again
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(_quote(a) for a in argv)}
{relock}WorkingDirectory={str(config_path.parent).replace("%", "%%")}
{owner}UMask=0077
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec={RESTART_S}
{backoff}TimeoutStartSec={START_TIMEOUT_S}
TimeoutStopSec={stop_s}
WatchdogSec={watchdog_s}
KillMode=mixed

[Install]
WantedBy={"default.target" if user else "multi-user.target"}
"""


def desktop_text() -> str:
    """The autostart entry: give the user manager this session's display, then restart the door in it."""
    script = ("systemctl --user import-environment DISPLAY WAYLAND_DISPLAY XAUTHORITY XDG_RUNTIME_DIR; "
              f"systemctl --user restart {UNIT}")
    return f"""[Desktop Entry]
Type=Application
Name=door-access kiosk
Comment=Shows the door's kiosk window (the {UNIT} user unit) in this session
Exec=sh -c "{script}"
X-GNOME-Autostart-enabled=true
NoDisplay=true
"""


def install(cfg: Config, config_path: Path, user: bool, unit_dir: Path | None = None,
            desktop_dir: Path | None = None) -> list[Path]:
    """Write the unit (and with `user` the autostart entry); the paths written."""
    if not user and unit_dir is None and os.geteuid() != 0:
        raise PermissionError(f"a system unit goes to {SYSTEM_UNIT_DIR}: run as root, or use --user")
    unit_dir = unit_dir or (user_unit_dir() if user else SYSTEM_UNIT_DIR)
    written = [_write(unit_dir / UNIT, unit_text(cfg, config_path, user, version=systemd_version()))]
    if user:
        written.append(_write((desktop_dir or autostart_dir()) / DESKTOP, desktop_text()))
    return written


def uninstall(user: bool, unit_dir: Path | None = None, desktop_dir: Path | None = None) -> list[Path]:
    """Stop and disable the unit (when it is the one systemd runs), remove what `install` wrote; the
    paths removed."""
    ctl = ["systemctl", "--user"] if user else ["systemctl"]
    managed = unit_dir is None and Path("/run/systemd/system").is_dir()  # not a test's folder
    if managed:
        _systemctl([*ctl, "disable", "--now", UNIT])
    paths = [(unit_dir or (user_unit_dir() if user else SYSTEM_UNIT_DIR)) / UNIT]
    if user:
        paths.append((desktop_dir or autostart_dir()) / DESKTOP)
    removed = []
    for path in paths:
        if path.exists():
            path.unlink()
            removed.append(path)
    if managed:
        _systemctl([*ctl, "daemon-reload"])
    return removed


def _systemctl(argv: list[str]) -> None:
    try:
        subprocess.run(argv, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s failed: %s", " ".join(argv), exc)


def next_steps(user: bool) -> list[str]:
    """The systemctl commands that enable and start what `install` wrote."""
    ctl = "systemctl --user" if user else "systemctl"
    steps = [f"{ctl} daemon-reload", f"{ctl} enable --now {UNIT}"]
    if user:
        steps.append(f"loginctl enable-linger {shlex.quote(pwd.getpwuid(os.getuid()).pw_name)}  "
                     "# start at boot, before anyone logs in")
    return steps


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path
