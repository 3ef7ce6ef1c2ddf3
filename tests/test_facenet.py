import numpy as np
import pytest

from door_access.core import EMBEDDING_SIZE
from door_access.faces.facenet import build_inception_resnet_v1
from door_access.faces.photos import load_rgb

from conftest import FR_IMAGES


def test_network_matches_the_published_model_size():
    assert build_inception_resnet_v1().count_params() == 22_808_144


@pytest.fixture(scope="module")
def chips(detector, cfg):
    out = []
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        faces = detector.photo_faces(load_rgb(FR_IMAGES / name, cfg.photo.max_pixels))
        assert len(faces) == 1, name
        out.append(faces[0].chip)
    return np.stack(out)


def test_embeddings_are_unit_length_and_batch_independent(encoder, chips):
    batch = encoder.encode(chips)
    assert batch.shape == (3, EMBEDDING_SIZE) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([encoder.encode(c[None]) for c in chips])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-4)


def test_same_person_is_closer_than_another_person(encoder, chips):
    obama, obama2, biden = encoder.encode(chips)
    same = np.linalg.norm(obama - obama2)
    other = min(np.linalg.norm(obama - biden), np.linalg.norm(obama2 - biden))
    assert same < 0.9 < other


def test_wrong_chip_shape_is_refused(encoder):
    with pytest.raises(ValueError, match="expected chips of shape"):
        encoder.encode(np.zeros((2, 96, 96, 3), np.uint8))
    assert encoder.encode(np.zeros((0, 160, 160, 3), np.uint8)).shape == (0, EMBEDDING_SIZE)


def test_missing_or_corrupt_weights_name_setup(tmp_path):
    from door_access.faces.facenet import FaceEncoder

    with pytest.raises(FileNotFoundError, match="door-access setup"):
        FaceEncoder(tmp_path / "absent.weights.h5")
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="door-access setup"):
        FaceEncoder(bad)
