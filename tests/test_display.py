"""The kiosk window: what the status line says (pure logic), and what a rendered real frame shows.

The real window runs under Xvfb in tests/test_kiosk.py.
"""

import cv2
import numpy as np
import pytest

from door_access.core import ALARM, CAMERA_BACK, CAMERA_LOST, CHALLENGE, DENIED, UNLOCK, Box, Event, readable_name
from door_access.door.controller import LOCKED, RELOCK_FAILING, UNLOCKED
from door_access.kiosk.display import (
    AMBER,
    CHALLENGE_STATE,
    ENROLL,
    GREEN,
    GREY,
    HOLD,
    IDLE,
    LOCKOUT,
    LOOK,
    NO_CAMERA,
    NOT_RECOGNISED,
    RED,
    WELCOME,
    WHITE,
    FaceView,
    StatusModel,
    Ticker,
    challenge_text,
    enroll_status,
    font_path,
    render,
    text_mask,
)
from door_access.recognition.enroll_prompt import EnrollPrompt

from conftest import SHARED_DATA

CLIP = SHARED_DATA / "face_recognition_examples" / "short_hamilton_clip.mp4"


def ev(kind, t, name=None, detail=""):
    return Event(kind, t, 0.0, name=name, detail=detail)


FACE = FaceView(1, Box(300, 60, 120, 120))
KNOWN = FaceView(1, Box(300, 60, 120, 120), "lin_manuel", 0.4)


# ---- the status model: pure, milliseconds ----------------------------------------------------


def test_faces_in_view_give_the_instruction_for_where_the_attempt_is():
    model = StatusModel(message_s=4.0)
    assert model.status(0.0, []).state == IDLE
    assert model.status(0.0, [FACE]).text == "Look at the camera"  # a face, not matched yet
    assert model.status(0.0, [KNOWN]).text == "Hold still"  # recognised: votes and liveness pending
    asked = FaceView(1, KNOWN.box, "lin_manuel", 0.4, challenge="turn_left")
    assert model.status(0.0, [asked]).text == "Turn your head left"


@pytest.mark.parametrize("key, shown", [
    ("lin-manuel-miranda", "Lin Manuel Miranda"), ("mary_jane", "Mary Jane"), ("obama", "Obama"),
    ("McKay__o'brien-", "McKay O'brien"), ("van_der-Berg", "Van Der Berg"),
])
def test_the_name_read_out_from_a_photo_or_folder_name(key, shown):
    assert readable_name(key) == shown


def test_the_welcome_shows_the_display_name_and_else_the_name_read_out():
    model = StatusModel(message_s=4.0)
    model.feed(Event(UNLOCK, 1.0, 0.0, name="lin-manuel-miranda", display_name="Lin-Manuel Miranda"))
    assert model.status(1.5, [KNOWN]).text == "Welcome Lin-Manuel Miranda"
    model.feed(ev(UNLOCK, 2.0, "alex_lacamoire"))  # an event from before display names: read out
    assert model.status(2.5, [KNOWN]).text == "Welcome Alex Lacamoire"


def test_verdicts_show_for_message_seconds_then_give_way():
    model = StatusModel(message_s=4.0)
    model.feed(ev(UNLOCK, 10.0, "lin_manuel"))
    s = model.status(10.5, [KNOWN])
    assert (s.state, s.text, s.color) == (WELCOME, "Welcome Lin Manuel", GREEN)
    assert model.status(14.5, [KNOWN]).state == HOLD  # the welcome is over
    model.feed(ev(DENIED, 20.0))
    assert (model.status(21.0, [FACE]).text, model.status(21.0, [FACE]).color) == ("Not recognised", RED)
    model.feed(ev(UNLOCK, 22.0, "alex"))  # the latest verdict wins
    assert model.status(22.1, []).text == "Welcome Alex"


def test_lockout_beats_verdicts_and_camera_lost_beats_everything_until_it_is_back():
    model = StatusModel(message_s=4.0)
    model.feed(ev(DENIED, 1.0))
    model.feed(ev(ALARM, 1.1, detail="3 failed attempts"))
    model.feed(ev(DENIED, 1.2))
    assert model.status(2.0, [FACE]).state == LOCKOUT and model.status(2.0, [FACE]).text == "Try again later"
    model.feed(ev(CAMERA_LOST, 3.0))
    assert model.status(30.0, []).state == NO_CAMERA  # for as long as it is lost
    assert model.status(30.0, []).text == "Camera lost"
    model.feed(ev(CAMERA_BACK, 31.0))
    assert model.status(31.0, []).state == IDLE


def test_challenge_event_is_shown_while_a_face_is_in_view_and_cleared_by_the_verdict():
    model = StatusModel(message_s=4.0)
    model.feed(ev(CHALLENGE, 5.0, "alex", detail="turn_right"))
    s = model.status(5.5, [KNOWN])
    assert (s.state, s.text, s.color) == (CHALLENGE_STATE, "Turn your head right", AMBER)
    assert model.status(5.5, []).state == IDLE  # nobody there to ask
    model.feed(ev(UNLOCK, 6.0, "alex"))
    assert model.status(10.5, [KNOWN]).state == HOLD


def test_an_unanswered_challenge_of_a_track_that_ended_does_not_hide_the_new_ask():
    """The tracker split a live person's track mid-answer: the old one is denied, the new one asked again."""
    model = StatusModel(message_s=4.0)
    model.feed(ev(DENIED, 5.0, "alex", detail="challenge not answered: the face left (turn left)"))
    asked = FaceView(7, KNOWN.box, "alex", 0.5, challenge="turn right")
    assert model.status(5.5, [asked]).text == "Turn your head right"
    assert model.status(5.5, [KNOWN]).text == "Challenge not passed"  # nobody asked: the denial is shown


@pytest.mark.parametrize("key,text", [("left", "Turn your head left"), ("Turn Right", "Turn your head right"),
                                      ("turn left", "Turn your head left"),  # the spoken instruction
                                      ("blink", "Blink"), ("raise_your_eyebrows", "Raise your eyebrows"),
                                      ("Turn your head left", "Turn your head left")])
def test_challenge_text(key, text):
    assert challenge_text(key) == text


def test_ticker_renders_at_most_fps_and_does_not_burst_after_a_stall():
    now = [0.0]
    ticker = Ticker(10.0, clock=lambda: now[0])
    assert ticker.due() and not ticker.due()  # one render, then wait
    assert ticker.wait_ms() == 100
    now[0] = 0.1
    assert ticker.due()
    now[0] = 5.0  # the main thread stalled
    assert ticker.due() and not ticker.due()


# ---- rendering real frames -----------------------------------------------------------------


@pytest.fixture(scope="module")
def frame():
    cap = cv2.VideoCapture(str(CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, image = cap.read()
    cap.release()
    assert ok, f"cannot read {CLIP}"
    return image


def _near(pixels: np.ndarray, color, tol=40) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.asarray(color)) <= tol, axis=-1)


def _band(img):
    h = img.shape[0]
    return img[h - max(40, h // 6):]


STATES = {
    IDLE: ([], [], GREY),
    LOOK: ([], [FACE], WHITE),
    HOLD: ([], [KNOWN], WHITE),
    CHALLENGE_STATE: ([ev(CHALLENGE, 0.0, detail="left")], [KNOWN], AMBER),
    WELCOME: ([ev(UNLOCK, 0.0, "lin_manuel")], [KNOWN], GREEN),
    NOT_RECOGNISED: ([ev(DENIED, 0.0)], [FACE], RED),
    LOCKOUT: ([ev(ALARM, 0.0)], [FACE], RED),
    NO_CAMERA: ([ev(CAMERA_LOST, 0.0)], [], RED),
}


@pytest.mark.parametrize("state", list(STATES))
def test_each_state_writes_a_large_status_line_in_its_colour(frame, state):
    events, faces, color = STATES[state]
    model = StatusModel()
    for e in events:
        model.feed(e)
    status = model.status(0.5, faces)
    assert status.state == state
    out = render(frame, status, faces, door=UNLOCKED if state == WELCOME else LOCKED)
    band = _band(out)
    ink = _near(band, color, tol=30)
    rows, cols = np.nonzero(ink)
    assert ink.sum() > 400, f"{state}: too little text in the status colour"
    assert rows.max() - rows.min() >= band.shape[0] * 0.4  # large: the text fills most of the band's height
    assert abs((cols.min() + cols.max()) / 2 - out.shape[1] / 2) < out.shape[1] * 0.05  # centred
    # the band is darkened under the text, so it reads on any picture
    assert band[:, :8].mean() < _band(cv2.flip(frame, 1))[:, :8].mean() * 0.5 + 1


def test_different_messages_differ_on_screen(frame):
    texts = {}
    for state, (events, faces, _color) in STATES.items():
        model = StatusModel()
        for e in events:
            model.feed(e)
        texts[state] = _band(render(frame, model.status(0.5, faces), faces, door=LOCKED))
    states = list(texts)
    for i, a in enumerate(states):
        for b in states[i + 1:]:
            assert not np.array_equal(texts[a], texts[b]), (a, b)


def test_preview_is_mirrored_with_boxes_names_and_the_door_state(frame):
    h, w = frame.shape[:2]
    original = frame.copy()
    known = FaceView(1, Box(60, 80, 100, 100), "Lin Manuel", 0.41)  # the display name (pipeline.labels)
    stranger = FaceView(2, Box(400, 100, 90, 90), None, 1.3)
    model = StatusModel()
    out = render(frame, model.status(0.0, [known, stranger]), [known, stranger], door=UNLOCKED)
    assert out.shape == frame.shape
    plain = render(frame, model.status(0.0, []), [], door=LOCKED)
    # mirrored: an area without overlays is the frame flipped left to right
    assert np.array_equal(plain[h // 3:h // 2, w // 3:w // 2], cv2.flip(frame, 1)[h // 3:h // 2, w // 3:w // 2])
    # boxes land where the face is in the mirror image: the known face's left edge at w - x - w_box
    assert _near(out[130:160, w - 60 - 100], GREEN, 10).all()
    assert _near(out[150:170, w - 400 - 90], RED, 10).all()
    # the name is written above the known box on a green label
    lh, lw = text_mask("Lin Manuel", max(12, h // 30)).shape
    label = out[80 - lh:80, w - 160:w - 160 + lw]
    assert _near(label, GREEN, 10).mean() > 0.5 and _near(label, WHITE, 60).sum() > 50
    # the door state badge, top right: green when unlocked, red when locked
    corner = (slice(0, h // 8), slice(w - w // 4, w))
    assert _near(out[corner], GREEN, 10).sum() > 200 and _near(plain[corner], RED, 10).sum() > 200
    failing = render(frame, model.status(0.0, []), [], door=RELOCK_FAILING)  # a relock that keeps failing: amber
    assert _near(failing[corner], AMBER, 10).sum() > 200 and _near(failing[corner], GREEN, 10).sum() == 0
    assert np.array_equal(frame, original)  # the input is not drawn on
    not_mirrored = render(frame, model.status(0.0, []), [], door=LOCKED, mirror=False)
    assert np.array_equal(not_mirrored[h // 3:h // 2, w // 3:w // 2], frame[h // 3:h // 2, w // 3:w // 2])


def test_long_names_shrink_to_fit_and_the_font_is_truetype(frame):
    assert font_path() is not None and font_path().name == "DejaVuSans-Bold.ttf"
    model = StatusModel()
    model.feed(ev(UNLOCK, 0.0, "Maximilian_Alexander_von_Humboldt_Bonaparte"))
    out = render(frame, model.status(0.1, []), [], door=UNLOCKED)
    cols = np.nonzero(_near(_band(out), GREEN, 30))[1]
    assert cols.min() > 0 and cols.max() < out.shape[1] - 1  # nothing cut off at the edges


def test_the_enroll_prompt_takes_the_status_line_and_shows_the_name_as_typed(frame):
    assert enroll_status(None) is None  # no prompt: the door's own status line
    typing = EnrollPrompt()
    for key in "eANA":
        typing.key(ord(key), 0.0)
    status = enroll_status(typing.line(0.0))
    assert (status.state, status.text, status.color) == (ENROLL, "Enroll as: ANA_", WHITE)
    short = _band(render(frame, status, [], door=LOCKED))
    ink = np.nonzero(_near(short, WHITE, 30))
    assert len(ink[0]) > 400 and ink[0].max() - ink[0].min() >= short.shape[0] * 0.4  # large, like every status
    for key in "BELLA":
        typing.key(ord(key), 0.0)
    longer = _band(render(frame, enroll_status(typing.line(0.0)), [], door=LOCKED))
    cols = np.nonzero(_near(longer, WHITE, 30))[1]
    assert cols.max() - cols.min() > ink[1].max() - ink[1].min()  # each letter typed shows
    idle = _band(render(frame, StatusModel().status(0.0, []), [], door=LOCKED))
    assert not np.array_equal(short, idle)

    typing.key(13, 0.0)
    typing.take()
    typing.finished(1.0, enrolled=False, looks_like=["bob"])
    asked = enroll_status(typing.line(1.0))
    assert asked.text == "Looks like bob: Enter again to confirm, Esc to cancel" and asked.color == AMBER
    out = render(frame, asked, [], door=LOCKED)
    cols = np.nonzero(_near(_band(out), AMBER, 30))[1]
    assert len(cols) > 400 and cols.min() > 0 and cols.max() < out.shape[1] - 1  # a long line shrinks to fit


def test_a_denial_says_why_in_words_and_a_stranger_hears_only_not_recognised():
    model = StatusModel(message_s=4.0)
    said = {}
    for t, detail in enumerate(("unknown face (closest: alex 0.91)", "no liveness: none", "spoof (screen light)",
                                "spoof (challenge failed (asked right, saw left))",
                                "conflict: one track named alex and lin", "policy: outside hours (08:00-18:00)",
                                "locked out for 50 s after repeated failed attempts",
                                "challenge not answered: the face left (look up)", "something new")):
        model.feed(ev(DENIED, 10.0 * t, detail=detail))
        said[detail.split()[0]] = model.status(10.0 * t + 0.5, [FACE]).text
    assert said == {"unknown": "Not recognised", "no": "Not live: blink or turn your head",
                    "spoof": "Challenge not passed", "conflict:": "One person at a time, please",
                    "policy:": "No access at this time", "locked": "Try again later",
                    "challenge": "Challenge not passed", "something": "Not recognised"}
    model.feed(ev(DENIED, 100.0, detail="spoof (screen light)"))
    assert model.status(100.5, [FACE]).text == "Photo or screen: denied"
