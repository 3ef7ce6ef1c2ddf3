"""The kiosk's enroll key as a state machine: pure, milliseconds (the real enrollment is in test_enrollment.py)."""

import subprocess
import sys

import pytest

from door_access.recognition.enroll_prompt import (
    ASK,
    BAD,
    CONFIRM,
    IDLE_S,
    MAX_NAME,
    OFF,
    OK,
    TYPING,
    WORKING,
    EnrollPrompt,
    Request,
    short_problem,
)

from conftest import REPO

ENTER, ESC, BACKSPACE = 13, 27, 8
X11_ENTER, X11_ESC, X11_BACKSPACE, LEFT, SHIFT = 0xFF0D, 0xFF1B, 0xFF08, 0xFF51, 0xFFE1


def press(prompt, keys, now=0.0):
    """Each key in turn (a str is typed character by character); what each returned."""
    return [prompt.key(ord(k) if isinstance(k, str) else k, now) for k in keys]


def typed(name, now=0.0):
    prompt = EnrollPrompt(message_s=4.0)
    press(prompt, ["e", *name], now)
    return prompt


def test_typing_backspace_and_enter_ask_for_one_enrollment():
    prompt = EnrollPrompt()
    assert prompt.line(0.0) is None and not prompt.key(-1, 0.0)  # no key, nothing shown
    assert press(prompt, ["e"]) == [True] and prompt.line(0.0) == ("Enroll as: _", ASK)
    press(prompt, "Anaq")  # q is a letter here, not quit
    assert prompt.line(0.0) == ("Enroll as: Anaq_", ASK)
    press(prompt, [BACKSPACE, LEFT, SHIFT, -55, 0xFFFF])  # keys without text change nothing
    assert prompt.line(0.0) == ("Enroll as: Ana_", ASK) and prompt.take() is None
    press(prompt, [ENTER])
    assert prompt.take() == Request("Ana") and prompt.take() is None  # handed over once
    assert prompt.line(0.0) == ("Enrolling Ana...", ASK)
    assert press(prompt, ["q", ESC, ENTER]) == [True] * 3 and prompt.state == WORKING  # swallowed while it runs
    prompt.finished(1.0, enrolled=True)
    assert prompt.line(1.0) == ("Enrolled Ana", OK)
    assert prompt.line(5.0) is None  # after message_s the door's status is back
    assert not prompt.key(ord("q"), 5.0)  # and q is the window's again (quit)


def test_x11_key_codes_work_like_ascii():
    prompt = typed("Bob")
    press(prompt, [X11_BACKSPACE, X11_ENTER])
    assert prompt.take() == Request("Bo")
    prompt = typed("Bob")
    press(prompt, [X11_ESC])
    assert prompt.state == OFF


def test_esc_cancels_without_enrolling_and_is_the_quit_key_again_after():
    prompt = typed("Ana")
    assert press(prompt, [ESC]) == [True]
    assert prompt.line(0.0) is None and prompt.take() is None
    assert press(prompt, [ESC, "q"]) == [False, False]  # not the prompt's: the window quits


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "$(reboot)", "x;rm -rf", "a..b", "`id`"])
def test_a_name_that_cannot_be_a_folder_is_refused_with_a_clear_message(name):
    prompt = typed(name)
    press(prompt, [ENTER])
    assert prompt.take() is None and prompt.state == TYPING
    assert prompt.line(0.0) == ("Not a usable name: use letters, digits, space . _ -", BAD)
    press(prompt, [BACKSPACE])  # the next key brings the name back, to be fixed
    assert prompt.line(0.0) == (f"Enroll as: {name[:-1]}_", ASK)


def test_an_empty_name_asks_for_one_and_names_are_trimmed_and_capped():
    prompt = typed("   ")
    press(prompt, [ENTER])
    assert prompt.take() is None and prompt.line(0.0) == ("Type a name, then Enter", BAD)
    prompt = typed("  Anne-Marie O. ")
    press(prompt, [ENTER])
    assert prompt.take() == Request("Anne-Marie O.")
    prompt = typed("x" * (MAX_NAME + 10))
    assert prompt.name == "x" * MAX_NAME


def test_a_look_alike_is_enrolled_only_after_a_second_enter_from_the_frame_checked():
    prompt = typed("barack")
    press(prompt, [ENTER])
    assert prompt.take() == Request("barack")
    prompt.finished(1.0, enrolled=False, problem="the new face ... obama", looks_like=["obama"])
    assert prompt.line(1.0) == ("Looks like obama: Enter again to confirm, Esc to cancel", CONFIRM)
    press(prompt, ["x"], 2.0)  # other keys do nothing
    assert prompt.take() is None and prompt.state != WORKING
    press(prompt, [ENTER], 2.0)
    assert prompt.take() == Request("barack", accept_collision=True)
    prompt.finished(3.0, enrolled=True)
    assert prompt.line(3.0) == ("Enrolled barack", OK)


def test_esc_at_a_look_alike_writes_nothing():
    prompt = typed("barack")
    press(prompt, [ENTER])
    prompt.take()
    prompt.finished(1.0, enrolled=False, looks_like=["obama", "bob"])
    assert prompt.line(1.0)[0].startswith("Looks like obama, bob:")
    press(prompt, [ESC])
    assert prompt.take() is None and prompt.line(1.0) is None


@pytest.mark.parametrize("problem,shown", [
    ("no face", "No face"),
    ("2 faces: one person at a time", "2 faces: one person at a time"),
    ("face too small (62 px, need 80): come closer", "Face too small: come closer"),
    ("blurred (sharpness 9, need 15): hold still", "Blurred: hold still"),
    ("eyes closed (eye ratio 0.10, need 0.15): open your eyes", "Eyes closed: open your eyes"),
])
def test_a_failed_check_says_what_to_do_and_enter_tries_again(problem, shown):
    assert short_problem(problem) == shown
    prompt = typed("Ana")
    press(prompt, [ENTER])
    prompt.take()
    prompt.finished(1.0, enrolled=False, problem=problem)
    assert prompt.line(1.0) == (f"{shown}. Enter to retry, Esc to cancel", BAD)
    press(prompt, [ENTER])
    assert prompt.take() == Request("Ana")  # on the newest frame
    assert prompt.state == WORKING


def test_an_abandoned_prompt_gives_the_status_line_back():
    prompt = typed("An", now=10.0)
    assert prompt.line(10.0 + IDLE_S - 1) is not None
    assert prompt.line(10.0 + IDLE_S) is None
    assert not prompt.key(ord("q"), 10.0 + IDLE_S)  # the window's key again
    stuck = typed("An")
    press(stuck, [ENTER])
    assert stuck.key(ord("q"), IDLE_S - 1) and not stuck.key(ord("q"), IDLE_S)  # a worker that never answers
    stuck.finished(IDLE_S + 1, enrolled=True)
    assert stuck.line(IDLE_S + 1) is None  # its late outcome is not shown


def test_after_enrolled_esc_dismisses_and_e_starts_again():
    prompt = typed("Ana")
    press(prompt, [ENTER])
    prompt.finished(0.5, enrolled=True)
    assert press(prompt, [ESC], 1.0) == [True] and prompt.line(1.0) is None  # does not quit the door
    prompt = typed("Ana")
    press(prompt, [ENTER])
    prompt.finished(0.5, enrolled=True)
    press(prompt, ["e"], 1.0)
    assert prompt.line(1.0) == ("Enroll as: _", ASK)


def test_the_prompt_module_loads_no_model_library_nor_opencv():
    code = ("import sys, door_access.recognition.enroll_prompt\n"
            "print(sorted(m for m in ('cv2', 'dlib', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
