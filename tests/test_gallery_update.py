"""Hot enroll, incrementally: only the photos added or replaced are read and encoded (real models)."""

import os
import shutil

import numpy as np
import pytest

from door_access.faces.photos import load_rgb
from door_access.recognition.gallery import GalleryBuilder
from door_access.recognition.recognizer import Recognizer

from conftest import FR_IMAGES


@pytest.mark.model
def test_update_encodes_only_what_changed_and_matches_a_rebuild(cfg, detector, encoder, tmp_path):
    images = tmp_path / "images"
    (images / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama" / "1.jpg")
    shutil.copy(FR_IMAGES / "obama3.jpg", images / "obama" / "2.jpg")
    builder = GalleryBuilder(cfg, detector, encoder)
    read = []
    real_assemble = builder._assemble

    def assemble(found, skipped):  # the real method, recording which photos it had to read
        read.extend(p.name for _, p in found)
        return real_assemble(found, skipped)

    builder._assemble = assemble
    recognizer = Recognizer(builder.build(images), cfg.recognition.threshold)
    read.clear()
    assert not builder.update(images)  # nothing changed: nothing read

    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    (images / "notes.jpg").write_text("not a photo")
    change = builder.update(images)
    assert sorted(read) == ["biden.jpg", "notes.jpg"]  # obama's photos were not read again
    assert [(n, p.name) for n, p, _ in change.added] == [("biden", "biden.jpg")]
    assert [s.path.name for s in change.skipped] == ["notes.jpg"] and change.skipped_total == 1
    recognizer.apply(change.removed, change.added)

    read.clear()
    shutil.copy(FR_IMAGES / "obama2.jpg", images / "obama" / "1.jpg")  # replaced in place
    os.utime(images / "obama" / "1.jpg", ns=(1, 1))
    (images / "obama" / "2.jpg").unlink()
    change = builder.update(images)
    assert read == ["1.jpg"]
    assert sorted(p.name for p in change.removed) == ["1.jpg", "2.jpg"]
    recognizer.apply(change.removed, change.added)

    rebuilt = Recognizer(GalleryBuilder(cfg, detector, encoder).build(images), cfg.recognition.threshold)
    assert recognizer.people == rebuilt.people == ["biden", "obama"] and recognizer.photo_count == 2
    probe = encoder.encode(np.stack([detector.photo_faces(load_rgb(FR_IMAGES / "obama.jpg", 10**8))[0].chip]))
    np.testing.assert_allclose(recognizer.distances(probe), rebuilt.distances(probe), atol=1e-5)
