"""`door_access.api`: the five verbs on real photos (the shipped examples and LFW pairs), their errors,
and that they are the door's own code paths with its models loaded once."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest

from door_access import api
from door_access.config import RecognitionConfig
from door_access.faces.photos import PhotoError, load_rgb
from door_access.tools.evaluation import read_pairs

from conftest import CELEBRITY, FR_IMAGES, REPO, SHARED_DATA, make_config

LFW = SHARED_DATA / "lfw"
PAIRS_EACH = 5  # the first same-person and different-people pairs of LFW's fold 1


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A config with its cache here, and an images folder of obama and biden (one photo each)."""
    root = tmp_path_factory.mktemp("api")
    (root / "images").mkdir()
    for name in ("obama", "biden"):
        shutil.copy(FR_IMAGES / f"{name}.jpg", root / "images" / f"{name}.jpg")
    return make_config(root)


@pytest.fixture
def door(site, shared_encoder):
    return api.load(site)


def small(name: str) -> np.ndarray:
    """A shipped photo as an RGB array, 400 px on its longest side: the same faces, found in a fraction of the time."""
    rgb = load_rgb(FR_IMAGES / name, 10**8)
    scale = 400 / max(rgb.shape[:2])
    return cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def two_people() -> np.ndarray:
    a, b = small("obama.jpg"), small("biden.jpg")
    return np.hstack([a, cv2.resize(b, (round(b.shape[1] * a.shape[0] / b.shape[0]), a.shape[0]))])


# ---- find_faces and encode -------------------------------------------------------------------------


def test_find_faces_and_encode_a_path_or_an_array(door, detector):
    path = FR_IMAGES / "obama.jpg"
    [box] = door.find_faces(path)
    assert door.find_faces(load_rgb(path, 10**8)) == [box]
    rgb = small("obama.jpg")
    [box] = door.find_faces(rgb)
    assert [f.box for f in detector.photo_faces(rgb)] == [box]  # the door's photo detection
    found = door.encode(rgb)
    assert found.shape == (1, 128) and found.dtype == np.float32
    assert np.allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)
    assert np.allclose(door.encode(rgb, [box]), found, atol=1e-5)  # the box aligns as the door aligns it
    assert np.allclose(door.encode(rgb, []), np.zeros((0, 128)))


def test_two_faces_two_boxes_two_embeddings(door):
    image = two_people()
    boxes = door.find_faces(image)
    assert len(boxes) == 2 and boxes[0].iou(boxes[1]) == 0
    embeddings = door.encode(image, boxes)
    assert embeddings.shape == (2, 128)
    assert np.linalg.norm(embeddings[0] - embeddings[1]) > 1.0  # obama and biden
    assert np.allclose(door.encode(image), embeddings, atol=1e-5)


# ---- verify --------------------------------------------------------------------------------------


def test_verify_uses_the_configured_threshold(site, shared_encoder):
    """The same pair, the same distance: one person under the default threshold, two under a threshold below it."""
    pair = small("obama.jpg"), small("obama2.jpg")
    same, distance = api.load(site).verify(*pair)
    assert same is True and 0.3 < distance <= site.recognition.threshold
    door = api.load(dataclasses.replace(site, recognition=RecognitionConfig(threshold=0.3)))
    assert door.verify(*pair) == (False, distance)


@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"LFW is not at {LFW} (../shared/data is absent)")
def test_verify_lfw_pairs(door):
    """The first pairs of LFW's fold 1: no stranger is let in, at most one same-person pair is missed at the door's
    threshold (it is set for strangers: Abel Pacheco's photos 1 and 4 are 0.885 apart), and every same-person pair
    is closer than every pair of strangers."""
    pairs, _ = read_pairs(LFW / "pairs.txt", LFW / "images_deepfunneled")
    same = [door.verify(p.first, p.second) for p in [p for p in pairs if p.same][:PAIRS_EACH]]
    other = [door.verify(p.first, p.second) for p in [p for p in pairs if not p.same][:PAIRS_EACH]]
    assert not any(verdict for verdict, _ in other), other
    assert sum(verdict for verdict, _ in same) >= PAIRS_EACH - 1, same
    assert max(d for _, d in same) < min(d for _, d in other)


@pytest.mark.parametrize("photos,needle", [
    (("{obama}", "{empty}"), "image_b: no face found"),
    (("{two}", "{obama}"), "image_a: 2 faces found"),
])
def test_verify_needs_one_face_each(door, photos, needle):
    subst = {"{obama}": FR_IMAGES / "obama.jpg", "{empty}": np.full((240, 320, 3), 128, np.uint8),
             "{two}": two_people()}
    with pytest.raises(ValueError, match=needle):
        door.verify(*(subst[p] for p in photos))


def test_bad_images_name_the_problem(door, tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=f"{missing}: file not found"):
        door.verify(FR_IMAGES / "obama.jpg", missing)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(PhotoError, match="empty.jpg: empty file"):
        door.find_faces(tmp_path / "empty.jpg")
    with pytest.raises(ValueError, match=r"RGB uint8 of shape \(H, W, 3\); got float64"):
        door.encode(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="got uint8 \\(10, 10\\)"):
        door.find_faces(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="Box"):
        door.encode(FR_IMAGES / "obama.jpg", [(0, 0, 10, 10)])


# ---- identify ------------------------------------------------------------------------------------


def test_identify_by_the_door_rule(door, site):
    images = site.path("images")
    name, distance = door.identify(small("obama2.jpg"), images)
    assert name == "obama" and distance <= site.recognition.threshold
    stranger = next((CELEBRITY / "val" / "madonna").glob("*.jpg"))
    name, distance = door.identify(stranger, images)
    assert name is None and distance > 0
    assert door.recognizer(images).identify(door.encode(stranger))[0].name is None  # the door's own matcher
    assert (site.path("cache") / "embeddings.sqlite").is_file()  # the door's embedding cache
    with pytest.raises(FileNotFoundError, match="nowhere"):
        door.identify(FR_IMAGES / "obama2.jpg", site.path("cache") / "nowhere")


def test_identify_sees_people_added_to_the_folder(door, tmp_path):
    images = tmp_path / "people"
    (images / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama" / "a.jpg")
    recognizer = door.recognizer(images)
    assert door.identify(FR_IMAGES / "biden.jpg", images)[0] is None
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    assert door.identify(FR_IMAGES / "biden.jpg", images)[0] == "biden"
    assert door.recognizer(images) is recognizer  # one gallery per folder, brought up to date in place
    assert recognizer.people == ["biden", "obama"]


# ---- loading -------------------------------------------------------------------------------------


def test_the_models_load_once_per_door(site, shared_encoder, monkeypatch):
    from door_access.faces import detection, facenet

    made = {"detector": 0, "encoder": 0}

    def counted(kind, make):
        def load(*args, **kwargs):
            made[kind] += 1
            return make(*args, **kwargs)
        return load

    monkeypatch.setattr(detection, "FaceDetector", counted("detector", detection.FaceDetector))
    monkeypatch.setattr(facenet, "FaceEncoder", counted("encoder", facenet.FaceEncoder))
    door = api.load(site)
    assert made == {"detector": 0, "encoder": 0}  # nothing until the first verb
    door.find_faces(small("obama.jpg"))
    door.encode(small("obama.jpg"))
    door.verify(small("obama.jpg"), small("obama3.jpg"))
    door.identify(small("obama2.jpg"), site.path("images"))
    assert made == {"detector": 1, "encoder": 1}
    assert door.encoder is shared_encoder


def test_config_forms(tmp_path):
    assert api.load().cfg.path("weights") == REPO / "weights"  # None: the defaults, this checkout's weights
    (tmp_path / "config.yaml").write_text("recognition:\n  threshold: 0.7\n")
    door = api.load(tmp_path / "config.yaml")
    assert door.cfg.recognition.threshold == 0.7 and door.cfg.path("cache") == tmp_path / ".cache"
    assert api.load(door.cfg).cfg is door.cfg
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        api.load(tmp_path / "nope.yaml")


def test_importing_the_package_and_loading_a_door_loads_no_model_library():
    code = ("import sys, door_access\ndoor = door_access.api.load()\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'dlib', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_the_example_in_the_docs_prints_what_it_says(site, shared_encoder, monkeypatch, tmp_path):
    """docs/api.md's example, run as written from the checkout (its cache and temporary folder here): each
    `print(...)  # output` line prints that output."""
    text = (REPO / "docs" / "api.md").read_text()
    example = re.search(r"^## Example\n.*?^```python\n(.*?)^```", text, re.S | re.M).group(1)
    expected = re.findall(r"^print\(.*\)  # (.*)$", example, re.M)
    load = api.load
    monkeypatch.setattr(api, "load", lambda config=None: load(site))
    monkeypatch.setattr(tempfile, "mkdtemp", lambda: str(tmp_path))
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "docs/api.md", "exec"), {"__name__": "example"})
    assert len(expected) == 5 and out.getvalue().splitlines() == expected


def test_the_identify_command_answers_through_the_same_door(site, shared_encoder, monkeypatch, tmp_path, capsys):
    """`door-access identify` goes through `Door.faces` and `Door.recognizer`, and says what `identify` says."""
    from door_access.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  images: {site.path('images')}\n  weights: {REPO / 'weights'}\n"
                      f"  cache: {site.path('cache')}\n")
    used = []
    faces = api.Door.faces
    monkeypatch.setattr(api.Door, "faces", lambda self, image: used.append(image) or faces(self, image))
    assert main(["identify", "--config", str(config), "--json", str(FR_IMAGES / "obama2.jpg")]) == 0
    [face] = json.loads(capsys.readouterr().out)["faces"]
    assert used == [FR_IMAGES / "obama2.jpg"]
    name, distance = api.load(config).identify(FR_IMAGES / "obama2.jpg", site.path("images"))
    assert face["name"] == name == "obama" and face["distance"] == round(distance, 4)
