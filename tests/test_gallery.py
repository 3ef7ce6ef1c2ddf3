"""The images/ folder as a gallery: layouts, the embedding cache, and every kind of bad photo."""

import logging
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from door_access.faces.photos import load_rgb
from door_access.recognition.gallery import GalleryBuilder

from conftest import CELEBRITY, FR_IMAGES, make_config


@pytest.fixture
def builder(tmp_path, detector, encoder):
    return GalleryBuilder(make_config(tmp_path), detector, encoder)


def test_single_file_and_folder_layouts_merge_by_name(tmp_path, builder):
    images = tmp_path / "images"
    (images / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama" / "a.jpg")
    shutil.copy(FR_IMAGES / "obama2.jpg", images / "obama" / "b.jpg")
    shutil.copy(FR_IMAGES / "obama3.jpg", images / "obama.jpg")
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    gallery = builder.build(images)
    assert gallery.people() == {"biden": 1, "obama": 3}
    assert gallery.skipped == []
    assert gallery.embeddings.shape == (4, 128)


def test_second_load_encodes_nothing_and_changes_are_picked_up(tmp_path, builder):
    images = tmp_path / "images"
    shutil.copytree(CELEBRITY / "train" / "madonna", images / "madonna")
    shutil.copytree(CELEBRITY / "train" / "ben_afflek", images / "ben_afflek")
    first = builder.build(images)
    assert first.encoded == len(first.names) + len(first.skipped) > 0

    again = builder.build(images)
    assert again.encoded == 0
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.people() == first.people()

    # a changed file (same name, new content) and a new file are encoded; nothing else is
    changed = sorted((images / "madonna").glob("*.jpg"))[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, "JPEG")
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    third = builder.build(images)
    assert third.encoded == 2
    assert third.people()["biden"] == 1

    # a removed photo leaves the gallery
    (images / "biden.jpg").unlink()
    assert "biden" not in builder.build(images).people()


def test_bad_photos_are_listed_with_reasons_and_the_rest_enrolls(tmp_path, detector, encoder):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.jpg").write_text("not a photo")
    data = (FR_IMAGES / "biden.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 4])
    Image.new("L", (12_000, 12_000)).save(images / "bomb.png")
    # no face: a face-free region of a real photo (the top-left corner, above the head)
    rgb = load_rgb(FR_IMAGES / "obama.jpg", 40_000_000)
    Image.fromarray(rgb[:150, :300]).save(images / "noface.jpg")
    # two faces of the same size side by side: neither dominates, so which one is the person is a guess
    Image.fromarray(np.hstack([rgb, rgb])).save(images / "two.jpg")
    # a face too small: the same photo shrunk until the face is ~40 px, with min_face raised
    Image.fromarray(cv2.resize(rgb, None, fx=0.18, fy=0.18, interpolation=cv2.INTER_AREA)).save(images / "tiny.jpg")
    (images / "readme.txt").write_text("hello")

    import dataclasses

    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, photo=dataclasses.replace(cfg.photo, max_pixels=40_000_000),
                              detection=dataclasses.replace(cfg.detection, min_face=60))
    gallery = GalleryBuilder(cfg, detector, encoder).build(images)
    reasons = {s.path.name: s.reason for s in gallery.skipped}
    assert gallery.people() == {"obama": 1}
    assert "empty file" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "over the limit" in reasons["bomb.png"]
    assert reasons["noface.jpg"] == "no face found"
    assert reasons["two.jpg"].startswith("2 faces found")
    assert reasons["tiny.jpg"].startswith("face too small")
    assert "not a photo" in reasons["readme.txt"]


@pytest.mark.parametrize("name", [
    "Zoë Saldaña", "o'brien \"the\" man", "$(touch pwned)", "a;rm -rf x", "name with spaces", "trailing dash-",
])
def test_awkward_names_are_kept_verbatim(tmp_path, builder, name):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / f"{name}.jpg")
    gallery = builder.build(images)
    assert gallery.people() == {name: 1}
    assert not (tmp_path / "pwned").exists() and not (images.parent / "pwned").exists()


def test_a_name_that_reads_as_an_option_dropped_in_while_running_is_named_once_and_not_enrolled(tmp_path, builder,
                                                                                                 caplog):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    assert builder.build(images).people() == {"obama": 1}
    shutil.copy(FR_IMAGES / "biden.jpg", images / "--exec=reboot.jpg")
    with caplog.at_level(logging.WARNING):
        change = builder.update(images)
        again = builder.update(images)
    assert not change.added and change.skipped_total == 1 and not again.added
    named = [r.getMessage() for r in caplog.records if "--exec=reboot.jpg" in r.getMessage()]
    assert len(named) == 1 and "starts with '-'" in named[0], named


# ---- hot enroll without races, and a cache that is only a cache -------------------------------------


class DropDuringFirstBuild(GalleryBuilder):
    """A real builder whose first build has a photo dropped into the folder while it encodes."""

    def __init__(self, *args, drop: tuple, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop = drop
        self.fail_next = False

    def _encode(self, todo):
        if self.drop:
            shutil.copy(*self.drop)  # after the folder was scanned, before the build is done
            self.drop = ()
        return super()._encode(todo)

    def update(self, images_dir):
        if self.fail_next:
            self.fail_next = False
            raise OSError("the disk hiccuped")
        return super().update(images_dir)


def _watched(builder, images):
    """A watcher whose updates go into a real matcher, as in the running door."""
    from door_access.recognition.gallery import GalleryWatcher, apply_update
    from door_access.recognition.recognizer import Recognizer

    swapped = []
    watcher = GalleryWatcher(builder, images, 0.1, lambda u: (apply_update(recognizer, u), swapped.append(u)))
    recognizer = Recognizer(watcher.load(), 0.9)
    return watcher, recognizer, swapped


def test_a_photo_dropped_in_during_the_first_build_is_enrolled_within_two_polls(tmp_path, detector, encoder):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    builder = DropDuringFirstBuild(make_config(tmp_path), detector, encoder,
                                   drop=(FR_IMAGES / "biden.jpg", images / "biden.jpg"))
    watcher, recognizer, _ = _watched(builder, images)
    assert recognizer.people == ["obama"]  # biden arrived too late for the first build
    assert watcher.poll() or watcher.poll()
    assert recognizer.people == ["biden", "obama"]
    assert not watcher.poll()  # nothing changed since


def test_a_reload_that_fails_once_succeeds_at_the_next_poll(tmp_path, detector, encoder, caplog):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    builder = DropDuringFirstBuild(make_config(tmp_path), detector, encoder, drop=())
    watcher, recognizer, swapped = _watched(builder, images)
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    builder.fail_next = True
    with caplog.at_level("WARNING", logger="door_access.recognition.gallery"):
        assert not watcher.poll()  # failed: the previous gallery stays
    assert swapped == [] and "disk hiccuped" in caplog.text
    assert watcher.poll()  # retried, although the folder has not changed since
    assert recognizer.people == ["biden", "obama"]


@pytest.mark.parametrize("damage", ["garbage_bytes", "foreign_table"])
def test_an_unusable_embedding_cache_is_moved_aside_with_one_warning_and_rebuilt(tmp_path, detector, encoder,
                                                                                  caplog, damage):
    import sqlite3

    cfg = make_config(tmp_path)
    cache = cfg.path("cache") / "embeddings.sqlite"
    cache.parent.mkdir(parents=True)
    if damage == "garbage_bytes":
        cache.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    else:
        with sqlite3.connect(cache) as db:
            db.execute("CREATE TABLE embeddings (path TEXT, vector BLOB)")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    with caplog.at_level("WARNING", logger="door_access.recognition.gallery"):
        gallery = GalleryBuilder(cfg, detector, encoder).build(images)  # starts, does not raise
    warned = [r for r in caplog.records if "embedding cache" in r.getMessage()]
    assert len(warned) == 1 and "moved aside" in warned[0].getMessage()
    assert gallery.people() == {"obama": 1} and gallery.encoded == 1  # re-encoded
    assert len(list(cache.parent.glob("embeddings.sqlite.bad-*"))) == 1
    caplog.clear()
    again = GalleryBuilder(cfg, detector, encoder).build(images)  # the rebuilt cache works
    assert again.encoded == 0 and not [r for r in caplog.records if "embedding cache" in r.getMessage()]
