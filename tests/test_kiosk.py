"""The kiosk as a person meets it: start-up without a camera, and the real window under Xvfb.

Xvfb, xdotool and xwininfo are installed by the `xvfb` fixture when the tests run as root on a
Debian-like system; otherwise those tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

EXAMPLES = SHARED_DATA / "face_recognition_examples"
CLIP = EXAMPLES / "short_hamilton_clip.mp4"
X_TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "xwininfo": "x11-utils"}
SCREEN = (1280, 800)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)  # this checkout's code, whatever the venv points at
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _apt_install(packages: list[str]) -> None:
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", *packages]
    if subprocess.run(cmd, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(cmd, capture_output=True, timeout=900)


@pytest.fixture(scope="session")
def xvfb(tmp_path_factory):
    """A virtual X display (1280x800) for the real window; the DISPLAY value."""
    missing = [tool for tool in X_TOOLS if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"{', '.join(missing)} missing and cannot install them (not root or no apt-get): "
                        f"apt-get install {' '.join(sorted({X_TOOLS[t] for t in missing}))}")
        _apt_install(sorted({X_TOOLS[t] for t in missing}))
        missing = [tool for tool in X_TOOLS if not shutil.which(tool)]
        if missing:
            pytest.skip(f"could not install {', '.join(missing)} with apt-get")
    # Xvfb picks a free display itself and writes its number to the pipe (no race with another
    # Xvfb, e.g. a parallel test worker's)
    log = tmp_path_factory.mktemp("xvfb") / "xvfb.log"
    read_fd, write_fd = os.pipe()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                                 f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                                stdout=out, stderr=out, pass_fds=(write_fd,))
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()  # empty when Xvfb exits without starting
    if not number.isdigit():
        proc.kill()
        pytest.skip(f"Xvfb did not start: {log.read_text()[-500:]}")
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def _geometry(display: str) -> tuple[int, int] | None:
    out = subprocess.run(["xdotool", "search", "--name", "^door-access$", "getwindowgeometry"],
                         capture_output=True, text=True, env=dict(os.environ, DISPLAY=display)).stdout
    line = next((x for x in out.splitlines() if "Geometry:" in x), None)
    return tuple(int(v) for v in line.split()[-1].split("x")) if line else None


def _site(root: Path, extra: str = "") -> Path:
    """The Hamilton clip's two reference photos enrolled, welcomes to WAV files."""
    for name, photo in (("alex", "alex-lacamoire.png"), ("lin", "lin-manuel-miranda.png")):
        (root / "images" / name).mkdir(parents=True)
        shutil.copy(EXAMPLES / photo, root / "images" / name / photo)
    (root / "config.yaml").write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n"
                                      f"tts:\n  wav_dir: wav\naccess_log:\n  path: log.sqlite\n{extra}")
    return root


# ---- start-up ------------------------------------------------------------------------------


def test_no_camera_is_one_clear_line_and_exit_2_before_any_model_loads(tmp_path):
    code = ("import sys\nfrom door_access.cli import main\ncode = main(sys.argv[1:])\n"
            "print('loaded:', sorted(m for m in ('tensorflow', 'keras', 'dlib') if m in sys.modules))\n"
            "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--source", "9", "--headless"],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["error: no camera at index 9: plug one in, or use --source FILE_OR_URL"]
    assert proc.stdout.strip() == "loaded: []"


def test_window_has_no_toolbar_and_the_requested_size(tmp_path, xvfb):
    """Without full screen the window is the size asked for, and the picture fills all of it."""
    code = """
import cv2
from door_access.kiosk.display import Status, Window, render
window = Window(fullscreen=False, size=(1280, 720))
frame = cv2.VideoCapture({clip!r}).read()[1]
for _ in range(20):
    window.show(render(frame, Status("idle", "Step up to the camera", (160, 160, 160)), [], False))
    window.poll(20)
print(*cv2.getWindowImageRect(Window.TITLE))
window.close()
""".replace("{clip!r}", repr(str(CLIP)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env(DISPLAY=xvfb), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0", "1280", "720"]  # a toolbar or status bar would shift or shrink it
    assert proc.stderr == ""  # Qt finds its fonts: no warnings


# ---- the window and its keys, on one real door ----------------------------------------------

WEBCAM_CLIP = SHARED_DATA / "liveness" / "genuine" / "g08_mounish_webcam_blink.mp4"  # one person, 12.8 s


@pytest.mark.model
@pytest.mark.skipif(not WEBCAM_CLIP.is_file(), reason=f"shared real data not found at {WEBCAM_CLIP}")
def test_the_window_fills_the_screen_e_enrolls_the_face_in_view_and_q_still_quits(tmp_path, xvfb):
    """The real door in its full-screen window: one ready line and nothing but the app's own lines;
    keys typed at a person's pace: e enrolls under the typed name (a q in the name is a letter), q quits."""
    site = _site(tmp_path, "display:\n  enroll_key: true\n")
    proc = subprocess.Popen([sys.executable, "-m", "door_access", "run", "--config", str(site / "config.yaml"),
                             "--source", str(WEBCAM_CLIP), "--realtime", "--fullscreen", "--max-seconds", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(DISPLAY=xvfb),
                            cwd=site)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def keys(*names):
        for name in names:
            subprocess.run(["xdotool", "search", "--name", "^door-access$", "key", "--window", "%1", name],
                           capture_output=True, env=dict(os.environ, DISPLAY=xvfb), timeout=10)
            time.sleep(0.15)

    sizes = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and (
                len(sizes) < 5 or not any(" ready: " in x for x in lines)):  # the window's first looks, then ready
            size = _geometry(xvfb)
            if size:
                sizes.append(size)
            time.sleep(0.2)
        keys("e", "q", "u", "i", "n", "n", "BackSpace", "Return")
        for _ in range(20):  # a frame mid-blink is refused ("eyes closed"): Enter tries the newest frame again
            time.sleep(0.5)
            if any("kiosk enroll:" in x and "written" in x for x in lines) or proc.poll() is not None:
                break
            if any("kiosk enroll: quin not enrolled" in x for x in lines[-3:]):
                keys("Return")
        keys("q")
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 0, err[-3000:]
    # full screen from its first look but one (OpenCV's default window is 400x300)
    assert sizes and sizes[-1] == SCREEN and sizes.count(SCREEN) >= len(sizes) - 1, sizes
    ready = [x for x in lines if " ready: " in x]
    assert len(ready) == 1 and "at 1280x720, 2 people enrolled" in ready[0], err[-3000:]
    noise = [x for x in lines if "door_access" not in x]  # every line is the app's own
    assert not noise, noise
    photos = list((site / "images" / "quin").glob("enroll-*.jpg"))
    assert len(photos) == 1, err[-3000:]
    frames_in = int(next(x for x in lines if " stopped: " in x).split(" stopped: ")[1].split()[0])
    assert frames_in < 380, "the clip ran to its end (384 frames): q did not quit"
    assert "kiosk enroll: cancelled" not in err


# ---- speech reaches the speaker --------------------------------------------------------------


def test_welcome_is_played_through_the_default_sound_device(tmp_path):
    """pyttsx3's espeak driver plays through `aplay`; ALSA's default device is pointed at a file here."""
    tools = (("aplay", "alsa-utils"), ("espeak-ng", "espeak-ng"))
    missing = [tool for tool, package in tools if not shutil.which(tool)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install(["alsa-utils", "espeak-ng"])  # what `make setup` installs
        missing = [tool for tool in ("aplay", "espeak-ng") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing and cannot be installed here: apt-get install alsa-utils espeak-ng")
    played = tmp_path / "speaker.raw"
    (tmp_path / ".asoundrc").write_text(
        f'pcm.!default {{\n  type file\n  slave.pcm "null"\n  file "{played}"\n  format "raw"\n}}\n')
    code = ("import time\nfrom door_access.door.speech import Speaker\nfrom door_access.config import TtsConfig\n"
            "s = Speaker(TtsConfig(), None)\ns.start()\ns.say('Welcome alex')\ntime.sleep(0.2)\ns.stop(60)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env(HOME=str(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert played.is_file(), f"nothing reached the sound device: {proc.stderr[-2000:]}"
    import numpy as np

    samples = np.frombuffer(played.read_bytes()[: len(played.read_bytes()) // 2 * 2], np.int16)
    assert samples.size > 8000 and np.abs(samples).max() > 1000  # half a second or more of audible speech
