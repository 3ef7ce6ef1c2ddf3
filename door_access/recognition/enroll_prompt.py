"""The kiosk's enroll key: the name typed in the window, and what the status line says meanwhile.

Pure (no OpenCV, dlib or TensorFlow), so every key is tested in milliseconds. The window feeds it
key codes; it hands back a `Request` when there is something to enroll, and is told the outcome.
The enrollment itself runs elsewhere (`enrollment.KioskEnroller`, on a worker thread).

The name rule lives here too, free of OpenCV, so `door-access enroll` and the key share it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_NAME = 64

# key codes as cv2.waitKeyEx gives them: text keys as their character, other keys as X11 keysyms
ENROLL_KEY = ord("e")
ESC = {27, 0xFF1B}
QUIT_KEYS = {ord("q"), *ESC}  # the window's own, when the prompt does not take them
ENTER = {10, 13, 0xFF0D, 0xFF8D}  # Return, keypad Enter
BACKSPACE = {8, 0xFF08}

IDLE_S = 60.0  # a prompt left alone this long gives the status line back to the door

OFF, TYPING, WORKING, PROBLEM, COLLISION, DONE = "off", "typing", "working", "problem", "collision", "done"
# tones of the status line (display.py gives each its colour)
ASK, OK, BAD, CONFIRM = "ask", "ok", "bad", "confirm"


class EnrollError(ValueError):
    """Enrollment cannot go on; the message says why and what to do."""


def name_problem(name: str) -> str | None:
    """Why `name` (a file or folder name under images/) cannot be a person's name, or None.

    The name reaches hooks as an argument: one starting with '-' would read as an option, a
    control character could forge a log line. Other characters are kept verbatim."""
    if not name:
        return "the name is empty"
    if name.startswith("-"):
        return f"the name {name!r} starts with '-' (a hook could take it for an option)"
    if any("\udc80" <= c <= "\udcff" for c in name):  # os.fsdecode's stand-ins for bytes that are not UTF-8
        return f"the name {name!r} is not valid UTF-8 (rename the file)"
    if not name.isprintable() or "/" in name:
        return f"the name {name!r} holds a control character or '/'"
    return None


def safe_name(name: str) -> str:
    """`name` if it can be a folder under images/ (letters, digits, space, . _ -; no path parts), else EnrollError.

    The name becomes a folder name and is shown on screen; it never reaches a shell.
    """
    name = unicodedata.normalize("NFC", str(name)).strip()
    if not name or len(name) > MAX_NAME:
        raise EnrollError(f"the name must be 1 to {MAX_NAME} characters")
    if name.startswith((".", "-")) or not all(c.isalnum() or c in " ._-" for c in name) or ".." in name:
        raise EnrollError(f"{name!r} is not a usable name: use letters, digits, spaces, '.', '_' or '-' "
                          "(not starting with '.' or '-')")
    return name


@dataclass(frozen=True)
class Request:
    """Enroll `name` now: from the newest frame, or (`accept_collision`) from the frame already checked."""

    name: str
    accept_collision: bool = False


class EnrollPrompt:
    """`e` starts; printable keys type the name, Backspace deletes, Enter enrolls, Esc cancels.

    After a look-alike (collision), Enter again enrolls the same frame anyway; after a failed check
    (no face, blurred...), Enter tries again on the newest frame. While the enrollment runs, keys
    are swallowed: the outcome is never shown for something the operator has since cancelled.
    Times are the caller's clock (seconds).
    """

    def __init__(self, message_s: float = 4.0):
        self.message_s = message_s
        self.state = OFF
        self.name = ""
        self.message = ""  # the problem to show (a refused name, a failed check, who it looks like)
        self.since = 0.0  # the last key or outcome: for how long "Enrolled" stays, and IDLE_S
        self._request: Request | None = None

    def key(self, code: int, now: float) -> bool:
        """Handle one key; False when it is not the prompt's (the window's own keys then apply: q, Esc)."""
        if code == -1:  # no key
            return False
        if self._expired(now):
            self.state = OFF
        if self.state in (OFF, DONE):
            if code == ENROLL_KEY:
                self._to(TYPING, now, name="")
                return True
            if self.state == DONE and code in ESC:  # dismiss the outcome; a second Esc quits as usual
                self._to(OFF, now)
                return True
            return False
        if self.state == WORKING:
            return True
        if code in ESC:
            log.info("kiosk enroll: cancelled%s", f" ({self.name})" if self.name else "")
            self._to(OFF, now)
        elif self.state == TYPING:
            self._type(code, now)
        elif code in ENTER:  # PROBLEM: try again; COLLISION: enroll anyway
            self._request = Request(self.name, accept_collision=self.state == COLLISION)
            self._to(WORKING, now)
        else:
            self.since = now
        return True

    def _type(self, code: int, now: float) -> None:
        self.since, self.message = now, ""
        if code in ENTER:
            try:
                self.name = safe_name(self.name)
            except EnrollError:
                self.message = ("Type a name, then Enter" if not self.name.strip() else
                                "Not a usable name: use letters, digits, space . _ -")
                return
            self._request = Request(self.name)
            self._to(WORKING, now)
        elif code in BACKSPACE:
            self.name = self.name[:-1]
        elif 32 <= code < 127 and len(self.name) < MAX_NAME:
            self.name += chr(code)

    def take(self) -> Request | None:
        """The enrollment asked for by the last key, once."""
        request, self._request = self._request, None
        return request

    def finished(self, now: float, enrolled: bool, problem: str = "", looks_like: list[str] | None = None) -> None:
        """The outcome of the last request: written, a look-alike to confirm, or a failed check."""
        if self.state != WORKING:
            return
        if enrolled:
            self._to(DONE, now)
        elif looks_like:
            self._to(COLLISION, now, message=", ".join(looks_like))
        else:
            self._to(PROBLEM, now, message=short_problem(problem))

    def line(self, now: float) -> tuple[str, str] | None:
        """(status line text, tone) while enrolling; None when the door's own status applies."""
        if self.state == OFF or self._expired(now):
            return None
        if self.state == TYPING:
            return (self.message, BAD) if self.message else (f"Enroll as: {self.name}_", ASK)
        if self.state == WORKING:
            return f"Enrolling {self.name}...", ASK
        if self.state == DONE:
            return f"Enrolled {self.name}", OK
        if self.state == COLLISION:
            return f"Looks like {self.message}: Enter again to confirm, Esc to cancel", CONFIRM
        return f"{self.message}. Enter to retry, Esc to cancel", BAD

    def _expired(self, now: float) -> bool:
        if self.state == DONE:
            return now - self.since >= self.message_s
        return self.state != OFF and now - self.since >= IDLE_S  # WORKING too: a stuck worker keeps no key

    def _to(self, state: str, now: float, name: str | None = None, message: str = "") -> None:
        self.state, self.since, self.message = state, now, message
        if name is not None:
            self.name = name


def short_problem(problem: str) -> str:
    """A check's message for the status line: no measurements ("blurred (sharpness 9, need 15): hold
    still" -> "Blurred: hold still"); the log keeps the whole message."""
    text = re.sub(r"\s*\([^)]*\)", "", problem).strip() or "Not enrolled"
    return text[:1].upper() + text[1:]
