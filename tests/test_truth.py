"""Tools fail early: `eval-liveness` and `learn-attacks` check every row of a truth.csv (the file,
the labels, a video's person photo) before any model loads, and name each problem's line and
column. No model is loaded: a detector built before the check would fail the test."""

import csv
import shutil

import cv2
import pytest

from door_access.cli import main
from door_access.faces.detection import FaceDetector

from conftest import FR_IMAGES

HEADER = ["file", "kind", "subkind", "person_photo", "notes"]
ROWS = [  # line 1 is the header; the first row's note spans lines 2 and 3
    ["live.mp4", "genuine", "", "obama.jpg", "a note\nover two lines"],  # line 2: fine
    ["live.mp4", "genuine", "", "", ""],  # line 4: a video without its person's photo (the IsADirectoryError)
    ["frames/", "attack_print", "attack_print", "", ""],  # line 5: fine (frame folders need no photo)
    ["missing.mp4", "genuine", "", "obama.jpg", ""],  # line 6
    ["frames/", "attak_print", "", "", ""],  # line 7: a typo in the label
    ["live.mp4", "genuine", "", "gone.jpg", ""],  # line 8
    ["no_frames/", "genuine", "", "", ""],  # line 9
    ["broken.mp4", "attack_screen", "attack_screen_video", "obama.jpg", ""],  # line 10
]
FILE_PROBLEMS = [
    "line 6, column file: missing.mp4 not found",
    "line 7, column kind: 'attak_print' is not one of genuine, attack_screen, attack_print",
    "line 9, column file: folder no_frames/ holds no .jpg/.jpeg/.png frame",
    "line 10, column file: broken.mp4 cannot be opened as a video",
]
PHOTO_PROBLEMS = [
    "line 4, column person_photo: empty, but live.mp4 is a video",
    "line 8, column person_photo: gone.jpg not found",
]


def _write_video(path, frames: int = 5):
    bgr = cv2.resize(cv2.imread(str(FR_IMAGES / "obama.jpg")), (320, 240))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(bgr)
    writer.release()


def _write_folder(root, rows):
    (root / "frames").mkdir(parents=True)
    (root / "no_frames").mkdir()
    (root / "no_frames" / "readme.txt").write_text("frames were never copied here")
    shutil.copy(FR_IMAGES / "obama.jpg", root / "frames" / "0001.jpg")
    shutil.copy(FR_IMAGES / "obama.jpg", root / "obama.jpg")
    _write_video(root / "live.mp4")
    (root / "broken.mp4").write_text("not a video")
    with (root / "truth.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return root


@pytest.fixture
def no_model(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the truth.csv was checked")

    monkeypatch.setattr(FaceDetector, "__init__", loaded)


@pytest.mark.parametrize("command,expected,absent", [
    ("eval-liveness", PHOTO_PROBLEMS + FILE_PROBLEMS, []),
    ("learn-attacks", FILE_PROBLEMS, PHOTO_PROBLEMS),  # it learns from frames: no photo is enrolled
])
def test_every_bad_row_is_named_by_line_and_column_before_any_model_loads(tmp_path, capsys, no_model, command,
                                                                          expected, absent):
    folder = _write_folder(tmp_path / "clips", ROWS)
    code = main([command, str(folder)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{folder / 'truth.csv'}: {len(expected)} problem(s), nothing was run" in err
    for problem in expected:
        assert problem in err
    for problem in absent:
        assert problem.split(":")[0] not in err
    assert "line 2," not in err and "line 5," not in err


def test_a_video_without_its_person_photo_stops_eval_liveness_at_once(tmp_path, capsys, no_model):
    """The reported case: an empty person_photo on a video row ran the models, then died with
    IsADirectoryError. Now: exit 2 naming the row and the column, before anything loads."""
    folder = _write_folder(tmp_path / "clips", [ROWS[0], ROWS[1]])
    code = main(["eval-liveness", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "IsADirectoryError" not in err
    assert "error: " in err and "1 problem(s)" in err and PHOTO_PROBLEMS[0] in err


def test_a_truth_csv_without_a_file_column_is_named(tmp_path, capsys, no_model):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "truth.csv").write_text("video,kind\nlive.mp4,genuine\n")
    assert main(["learn-attacks", str(folder)]) == 2
    assert "line 1: no column file (columns: video, kind)" in capsys.readouterr().err
