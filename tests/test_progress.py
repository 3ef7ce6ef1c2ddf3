"""Long commands people can read: a progress bar on a terminal (none in tests, CI or a pipe), log
lines for what goes wrong drawn above it, and no TensorFlow GPU probe on a machine without a GPU."""

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest

from conftest import REPO

APP_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) door_access[.\w]*: ")


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_bar_on_a_terminal_with_log_lines_above_it(monkeypatch):
    from door_access.quiet import progress

    master, slave = pty.openpty()  # a real terminal, as a person at a console has, 80 columns wide
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    tty = os.fdopen(slave, "w")
    handler = logging.StreamHandler(tty)
    monkeypatch.setattr(sys, "stderr", tty)
    logging.getLogger().addHandler(handler)
    try:
        seen = []
        for clip in progress(["a.mp4", "b.mp4", "c.mp4"], "eval-liveness", unit="clip"):
            seen.append(clip)
            if clip == "b.mp4":
                logging.getLogger("door_access.test").warning("b.mp4: no face in any frame")
        tty.flush()
        out = _read_all(master)
    finally:
        logging.getLogger().removeHandler(handler)
        tty.close()
        os.close(master)
    assert seen == ["a.mp4", "b.mp4", "c.mp4"]
    assert "eval-liveness:" in out and "/3 [" in out and "clip" in out, out
    assert "b.mp4: no face in any frame\n" in out.replace("\r\n", "\n"), out  # a whole line, not cut by the bar


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    from door_access.quiet import progress

    assert list(progress(range(5), "learn-attacks", unit="clip")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""


@pytest.mark.model
def test_a_model_loading_command_prints_only_the_apps_own_lines(tmp_path):
    """`gallery` imports TensorFlow and builds FaceNet; on a machine without a GPU TensorFlow used to
    print its failed GPU probe (`failed call to cuInit`, an ERROR line) and its import notices."""
    (tmp_path / "images").mkdir()
    (tmp_path / "config.yaml").write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n")
    proc = subprocess.run([sys.executable, "-m", "door_access", "gallery", "--config", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuInit" not in proc.stderr and "cuda" not in proc.stderr.lower(), proc.stderr[-3000:]
    assert all(APP_LOG_LINE.match(line) for line in proc.stderr.splitlines()), proc.stderr[-3000:]
