"""The kiosk window: a mirrored preview with one large status line a person at the door can read.

Three parts, so the logic is testable without a window:
- `StatusModel`: pure state fed each event (from the actions worker) and asked, at render time,
  what the door is saying now given the faces in view. No OpenCV, no clock of its own. While the
  enroll key's prompt is up (`enroll_prompt`), its line takes the status line's place.
- `render`: draws a frame, boxes with names, the door state and the status line (Pillow, a
  DejaVu TrueType font shipped with matplotlib). Text is rasterised once per string and cached,
  so a frame costs a flip, a few rectangles and a blend.
- `Window`: the OpenCV window without toolbar, full screen on request, paced by `Ticker` at
  `display.fps` on the main thread, never in a pipeline thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from door_access.core import ALARM, CAMERA_BACK, CAMERA_LOST, CHALLENGE, DENIED, UNLOCK, Box, Event, readable_name
from door_access.door.controller import LOCKED, RELOCK_FAILING, UNLOCKED
from door_access.door.decision import RELEASED
from door_access.recognition.enroll_prompt import ASK, BAD, CONFIRM, OK

# BGR, as OpenCV draws
GREEN, RED, GREY, WHITE, AMBER = (60, 200, 60), (40, 40, 220), (160, 160, 160), (255, 255, 255), (0, 190, 255)
DOOR_BADGES = {LOCKED: ("LOCKED", RED), UNLOCKED: ("UNLOCKED", GREEN), RELOCK_FAILING: ("RELOCK FAILING", AMBER)}

IDLE, LOOK, HOLD, CHALLENGE_STATE, WELCOME, NOT_RECOGNISED, LOCKOUT, NO_CAMERA, ENROLL = (
    "idle", "look", "hold", "challenge", "welcome", "not_recognised", "lockout", "camera_lost", "enroll")
ENROLL_COLORS = {ASK: WHITE, OK: GREEN, BAD: RED, CONFIRM: AMBER}  # enroll_prompt's tones

_CHALLENGES = {  # liveness challenge keys (LiveVerdict.challenge / challenge events) -> what to say
    "left": "Turn your head left", "turn_left": "Turn your head left",
    "right": "Turn your head right", "turn_right": "Turn your head right",
    "up": "Look up", "look_up": "Look up", "down": "Look down", "look_down": "Look down",
    "blink": "Blink", "smile": "Smile", "nod": "Nod", "open_mouth": "Open your mouth",
    "open_your_mouth": "Open your mouth",
}


def challenge_text(challenge: str) -> str:
    """A challenge key as an instruction; text that already reads as one is shown as it is."""
    key = challenge.strip().lower().replace(" ", "_").replace("-", "_")
    if key in _CHALLENGES:
        return _CHALLENGES[key]
    text = challenge.strip().replace("_", " ")
    return text[:1].upper() + text[1:]


_DENIALS = (  # a denial's detail (decision.py) -> what the person at the door is told; first prefix wins
    ("spoof (challenge", "Challenge not passed"),
    ("challenge not answered", "Challenge not passed"),
    ("spoof", "Photo or screen: denied"),
    ("no liveness", "Not live: blink or turn your head"),
    ("conflict", "One person at a time, please"),
    ("locked out", "Try again later"),
    ("suspended", "Suspended: ask an admin"),
    ("policy", "No access at this time"),
)


def denial_text(detail: str) -> str:
    """The reason for a denial in words for the person at the door; "Not recognised" for a stranger
    (and for anything unforeseen: it tells an attacker nothing)."""
    return next((text for prefix, text in _DENIALS if detail.startswith(prefix)), "Not recognised")


@dataclass(frozen=True)
class FaceView:
    """One face as the window shows it (frame pixels, before mirroring)."""

    track: int
    box: Box
    name: str | None = None  # the display name of the track's latest match, None when unknown or not encoded yet
    distance: float | None = None
    challenge: str | None = None  # the liveness challenge asked of this face right now


@dataclass(frozen=True)
class Status:
    state: str  # one of the state names above
    text: str
    color: tuple[int, int, int]  # BGR


class StatusModel:
    """What the status line says: fed each event (any thread), asked at render time.

    Priority: camera lost (until it is back) > "Try again later" (a lockout alarm) > the latest of
    "Welcome NAME" / the denial in words (`denial_text`; not an unanswered challenge's, over a new ask: the
    person is still there) > the challenge asked of a face > "Hold still" (a face is
    recognised, the vote or liveness is pending) > "Look at the camera" (a face, no match yet) > idle.
    Messages from events stay up for `message_s`; times are the pipeline clock's (Event.t).
    """

    def __init__(self, message_s: float = 4.0):
        self.message_s = message_s
        self._lock = threading.Lock()
        self._camera_lost = False
        self._alarm_t: float | None = None
        self._verdict: Event | None = None  # latest unlock or denial
        self._challenge: Event | None = None

    def feed(self, event: Event) -> None:
        with self._lock:
            if event.event == CAMERA_LOST:
                self._camera_lost = True
            elif event.event == CAMERA_BACK:
                self._camera_lost = False
            elif event.event == ALARM and not event.detail.startswith(RELEASED):  # a release: nothing to tell
                self._alarm_t = event.t
            elif event.event in (UNLOCK, DENIED):
                self._verdict = event
                self._challenge = None
            elif event.event == CHALLENGE:
                self._challenge = event

    def status(self, now: float, faces: list[FaceView]) -> Status:
        with self._lock:
            camera_lost, alarm_t, verdict, challenge = self._camera_lost, self._alarm_t, self._verdict, self._challenge
        if camera_lost:
            return Status(NO_CAMERA, "Camera lost", RED)
        if alarm_t is not None and now - alarm_t < self.message_s:
            return Status(LOCKOUT, "Try again later", RED)
        asked = next((f.challenge for f in faces if f.challenge), None)
        gone = verdict is not None and (verdict.detail or "").startswith("challenge not answered")
        if verdict is not None and now - verdict.t < self.message_s and not (gone and asked):
            if verdict.event == UNLOCK:
                shown = verdict.display_name or readable_name(verdict.name or "")
                return Status(WELCOME, f"Welcome {shown}".strip(), GREEN)
            return Status(NOT_RECOGNISED, denial_text(verdict.detail or ""), RED)
        if asked is None and faces and challenge is not None and now - challenge.t < self.message_s:
            asked = challenge.detail or challenge.name
        if asked:
            return Status(CHALLENGE_STATE, challenge_text(asked), AMBER)
        if any(f.name for f in faces):
            return Status(HOLD, "Hold still", WHITE)
        if faces:
            return Status(LOOK, "Look at the camera", WHITE)
        return Status(IDLE, "Step up to the camera", GREY)


def enroll_status(line: tuple[str, str] | None) -> Status | None:
    """The enroll prompt's line (`EnrollPrompt.line`) as the status line; None when it is not showing."""
    return None if line is None else Status(ENROLL, line[0], ENROLL_COLORS[line[1]])


# ---- drawing ----------------------------------------------------------------------------------


def font_path() -> Path | None:
    """DejaVu Sans Bold from matplotlib's package data (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    path = font_path()
    return ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size)


@lru_cache(maxsize=256)
def text_mask(text: str, size: int) -> np.ndarray:
    """`text` rasterised once: a float32 coverage mask (0..1), tight around the ink plus a margin."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size // 8)
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=255)
    return np.asarray(img, np.float32) / 255.0


def _blit(img: np.ndarray, mask: np.ndarray, x: int, y: int, color, background=None) -> None:
    """Blend `color` through `mask` at (x, y), clipped to the image; optional solid background."""
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(img.shape[1], x + w), min(img.shape[0], y + h)
    if x1 <= x0 or y1 <= y0:
        return
    region = img[y0:y1, x0:x1]
    if background is not None:
        region[:] = background
    a = mask[y0 - y:y1 - y, x0 - x:x1 - x, None]
    region[:] = (region * (1.0 - a) + np.asarray(color, np.float32) * a).astype(np.uint8)


def render(image: np.ndarray, status: Status, faces: list[FaceView], door: str, mirror: bool = True) -> np.ndarray:
    """The window's picture: a (mirrored) copy of `image` with boxes, names, the door controller's
    state (`door.LOCKED`, `UNLOCKED` or `RELOCK_FAILING`) and the status line."""
    img = cv2.flip(image, 1) if mirror else image.copy()
    h, w = img.shape[:2]
    label_size = max(12, h // 30)
    for face in faces:
        b = face.box
        x = w - b.x - b.w if mirror else b.x
        color = GREEN if face.name else (GREY if face.distance is None else RED)
        cv2.rectangle(img, (x, b.y), (x + b.w, b.y + b.h), color, max(2, h // 240))
        label = face.name or ("unknown" if face.distance is not None else "")
        if label:
            mask = text_mask(label, label_size)
            _blit(img, mask, x, b.y - mask.shape[0] if b.y >= mask.shape[0] else b.y + b.h, WHITE, color)

    # the door state, top right
    state, color = DOOR_BADGES.get(door, DOOR_BADGES[RELOCK_FAILING])  # an unknown state is not shown as locked
    mask = text_mask(state, max(14, h // 20))
    _blit(img, mask, w - mask.shape[1] - h // 40, h // 40, WHITE, color)

    # the status line: a darkened band across the bottom, the text as large as fits
    band = max(40, h // 6)
    img[h - band:] = (img[h - band:] * 0.3).astype(np.uint8)
    size = int(band * 0.62)
    mask = text_mask(status.text, size)
    while mask.shape[1] > w * 0.96 and size > 10:
        size = int(size * 0.85)
        mask = text_mask(status.text, size)
    _blit(img, mask, (w - mask.shape[1]) // 2, h - band + (band - mask.shape[0]) // 2, status.color)
    return img


# ---- the window -----------------------------------------------------------------------------


class Window:
    """An OpenCV window without toolbar or status bar; full screen on request. Main thread only."""

    TITLE = "door-access"

    def __init__(self, fullscreen: bool = False, size: tuple[int, int] | None = None):
        fonts = font_path()
        if fonts is not None:  # OpenCV's Qt looks for fonts in a folder it does not ship, and says so on stderr
            os.environ.setdefault("QT_QPA_FONTDIR", str(fonts.parent))
        cv2.namedWindow(self.TITLE, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        if fullscreen:
            cv2.setWindowProperty(self.TITLE, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
            size = screen_size()  # a kiosk X server may have no window manager to honour "full screen"
            if size:
                cv2.moveWindow(self.TITLE, 0, 0)
        if size:
            cv2.resizeWindow(self.TITLE, *size)

    def show(self, image: np.ndarray) -> None:
        cv2.imshow(self.TITLE, image)

    def poll(self, wait_ms: int) -> int:
        """Handle window events for up to `wait_ms`; the key pressed (-1: none). Unmasked (waitKeyEx), so
        an arrow key (X11 0xFF51) is not read as the letter Q."""
        return cv2.waitKeyEx(max(1, wait_ms))

    def close(self) -> None:
        cv2.destroyWindow(self.TITLE)
        cv2.waitKey(1)


def screen_size() -> tuple[int, int] | None:
    """The X screen's size in pixels (None without X11)."""
    try:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XDisplayWidth.argtypes = x11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        display = x11.XOpenDisplay(None)
    except (OSError, AttributeError):
        return None
    if not display:
        return None
    try:
        return x11.XDisplayWidth(display, 0), x11.XDisplayHeight(display, 0)
    finally:
        x11.XCloseDisplay(display)


class Ticker:
    """Paces rendering at most `fps` times a second, and only when there is something new to show."""

    def __init__(self, fps: float, clock=time.monotonic):
        self.period = 1.0 / fps
        self.clock = clock
        self.next_due = clock()

    def wait_ms(self) -> int:
        return max(1, int((self.next_due - self.clock()) * 1000))

    def due(self) -> bool:
        now = self.clock()
        if now < self.next_due:
            return False
        self.next_due += self.period
        if self.next_due < now:  # late (a slow frame, a busy CPU): no burst to catch up
            self.next_due = now + self.period
        return True
