"""The matcher for a whole site: sorted-by-person build, photos spliced in and out while running.

Pure numpy (no model): each check compares against a brute-force distance to each person's centroid.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from door_access.recognition.recognizer import Recognizer

RNG = np.random.default_rng(7)


def unit(n: int) -> np.ndarray:
    e = RNG.standard_normal((n, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def brute_force(names, embeddings, probes):
    """Each person's normalised mean embedding, and each probe's distance to it."""
    people = sorted(set(names))
    mean = np.stack([embeddings[[i for i, n in enumerate(names) if n == p]].sum(axis=0) for p in people])
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return people, np.linalg.norm(probes[:, None, :] - mean[None], axis=2)


def check(recognizer, names, embeddings, probes):
    people, expected = brute_force(names, embeddings, probes)
    assert recognizer.people == people
    assert recognizer.photo_count == len(names)
    np.testing.assert_allclose(recognizer.distances(probes), expected, atol=1e-5)


def test_unsorted_build_matches_brute_force_and_identifies_the_owner():
    names = [f"p{RNG.integers(0, 30):02d}" for _ in range(120)]  # interleaved, as a folder may list them
    emb = unit(120)
    recognizer = Recognizer(SimpleNamespace(names=names, photos=[Path(f"/i/{i}.jpg") for i in range(120)],
                                            embeddings=emb), 0.5)
    probes = unit(4)
    check(recognizer, names, emb, probes)
    alone = [i for i, n in enumerate(names) if names.count(n) == 1][:2]  # a one-photo person is that photo
    matches = recognizer.identify(emb[alone])
    assert [m.name for m in matches] == [names[i] for i in alone]
    distance, match = recognizer.verify(emb[alone[0]], names[alone[0]])
    assert distance < 1e-3 and match
    j = recognizer.people.index(names[0])
    assert recognizer.verify(probes[0], names[0])[0] == pytest.approx(recognizer.distances(probes[0])[0, j], abs=1e-5)


def test_photos_added_and_removed_one_by_one_and_in_bulk_match_a_rebuild():
    names = [f"p{RNG.integers(0, 20):02d}" for _ in range(60)]
    photos = [Path(f"/i/{i}.jpg") for i in range(60)]
    emb = unit(60)
    recognizer = Recognizer(SimpleNamespace(names=list(names), photos=list(photos), embeddings=emb), 0.9)
    probes = unit(3)
    for step in range(120):
        if RNG.random() < 0.5 and names:  # removals empty some people out entirely
            i = int(RNG.integers(len(names)))
            assert recognizer.remove(photos[i])
            del names[i], photos[i]
            emb = np.delete(emb, i, axis=0)
        else:  # known people and new ones, sorting anywhere among them
            name, e, photo = f"p{RNG.integers(0, 30):02d}", unit(1), Path(f"/new/{step}.jpg")
            recognizer.add(name, photo, e[0])
            names.append(name), photos.append(photo)
            emb = np.vstack([emb, e])
        check(recognizer, names, emb, probes)
    assert not recognizer.remove(Path("/never/enrolled.jpg"))

    added = [(f"q{i % 4}", Path(f"/bulk/{i}.jpg"), unit(1)[0]) for i in range(12)]
    recognizer.apply(photos[:10], added)  # more than a splice: one re-sort
    names = names[10:] + [a[0] for a in added]
    emb = np.vstack([emb[10:]] + [a[2][None] for a in added])
    check(recognizer, names, emb, probes)


def test_empty_gallery_and_last_photo_removed():
    recognizer = Recognizer(SimpleNamespace(names=[], photos=[], embeddings=np.zeros((0, 128), np.float32)), 0.9)
    assert recognizer.identify(unit(1))[0].name is None
    e = unit(1)[0]
    recognizer.add("solo", Path("/solo.jpg"), e)
    assert recognizer.identify(e)[0].name == "solo"
    assert recognizer.remove(Path("/solo.jpg"))
    assert recognizer.people == [] and recognizer.identify(e)[0].name is None


def test_bench_gallery_prints_the_figures(capsys):
    import json

    from door_access.cli import main

    assert main(["bench", "gallery", "--people", "2000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"people", "build_s", "identify_ms", "add_one_s", "matrix_mb"}
    assert result["people"] == 2000 and result["matrix_mb"] == round(2 * 2000 * 128 * 4 / 2**20, 1)  # + centroids
    assert all(result[k] > 0 for k in ("build_s", "identify_ms", "add_one_s"))
