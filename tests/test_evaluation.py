"""Threshold calibration and LFW-style evaluation: ROC maths on known numbers, then real photos and the real model."""

import itertools
import json
import os
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from door_access.core import EMBEDDING_SIZE
from door_access.faces.detection import FaceDetector
from door_access.faces.photos import load_rgb
from door_access.recognition.gallery import EmbeddingCache, Gallery
from door_access.tools.evaluation import (
    MISSING_DISTANCE,
    Roc,
    best_threshold,
    calibrate,
    cross_validate,
    evaluate_pairs,
    evaluate_pairs_detailed,
    make_lfw_embedder,
    make_lfw_records,
    read_pairs,
)

from conftest import CELEBRITY, REPO, SHARED_DATA

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_FACE_PHOTO = CELEBRITY / "train" / "mindy_kaling" / "httpssmediacacheakpinimgcomxeedccadejpg.jpg"
SUMMARY_TYPES = {"pairs": int, "accuracy": float, "accuracy_std": float, "tar_at_far": dict, "eer": float,
                 "threshold": float, "failed_images": int}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 20_000  # two panels with curves and histograms, not an empty canvas
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size == (1200, 480)


def all_distances(embeddings: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    others = embeddings if others is None else others
    return np.linalg.norm(embeddings[:, None, :] - others[None, :, :], axis=2)


# --- the shared ROC maths, on hand-made distances (numbers, not faces) ----------------------------------------------


def test_tar_at_far_accepts_at_most_floor_far_times_impostors():
    impostor = (500 + np.arange(1000)) / 1000  # 0.500, 0.501, ... 1.499
    genuine = np.array([0.2, 0.4, 0.505, 0.8])
    roc = Roc.from_distances(genuine, impostor)

    p = roc.at_far(0.001)  # 1 of 1,000 impostors may pass: 0.500 does, 0.501 must not
    assert p.accepted_impostors == 1 and p.far == 0.001
    assert 0.500 <= p.threshold < 0.501
    assert p.tar == 0.5  # 0.2 and 0.4
    assert roc.at_threshold(p.threshold) == p  # the threshold reproduces the point under the app's `<=` rule

    p = roc.at_far(0.01)  # 10 impostors (0.500..0.509) pass, 0.510 does not
    assert p.accepted_impostors == 10 and 0.509 <= p.threshold < 0.510
    assert p.tar == 0.75  # now 0.505 too
    assert roc.tar_at_far() == {"0.01": 0.75, "0.001": 0.5}


def test_too_few_impostors_for_the_far_means_none_accepted_and_ties_stay_rejected():
    roc = Roc.from_distances(np.array([0.1, 0.3, 0.6]), np.array([0.3, 0.3, 0.9]))
    p = roc.at_far(0.001)  # 3 impostors: 0.001 * 3 < 1, so FAR 0
    assert p.accepted_impostors == 0 and p.far == 0.0 and p.threshold < 0.3
    assert p.tar == pytest.approx(1 / 3)  # the genuine pair at 0.3 ties the closest impostor and is not accepted
    p = roc.at_far(0.34)  # one impostor allowed, but the first two tie at 0.3: accepting one accepts both
    assert p.accepted_impostors == 0 and p.far == 0.0


def test_eer_exact_and_interpolated():
    # accept <= 0.5: genuine 0.6 rejected (FRR 1/4), impostor 0.5 accepted (FAR 1/4)
    rate, threshold = Roc.from_distances(np.array([0.1, 0.2, 0.3, 0.6]), np.array([0.5, 0.7, 0.8, 0.9])).eer()
    assert rate == pytest.approx(0.25) and threshold == pytest.approx(0.5)
    # FAR - FRR goes -1/6 (at 0.2) -> +1/6 (at 0.25): halfway is FAR = FRR = 1/2 at 0.225
    rate, threshold = Roc.from_distances(np.array([0.1, 0.3]), np.array([0.2, 0.25, 0.4])).eer()
    assert rate == pytest.approx(0.5) and threshold == pytest.approx(0.225)
    # perfectly separated
    rate, threshold = Roc.from_distances(np.array([0.1, 0.2]), np.array([0.8, 0.9])).eer()
    assert rate == 0.0 and 0.2 <= threshold < 0.8


def test_best_threshold_is_the_middle_of_the_best_gap():
    d = np.array([1.3, 0.2, 0.95, 0.4, 1.0, 0.35, 0.9])
    same = np.array([False, True, True, False, False, True, True])
    # sorted: 0.2 S, 0.35 S, 0.4 D, 0.9 S, 0.95 S, 1.0 D, 1.3 D: only the cut between 0.95 and 1.0 gets 6 of 7 right
    assert best_threshold(d, same) == pytest.approx(0.975)
    # equal distances cannot be split: the three at 0.5 are accepted together (3 of 4 right) or not at all (2 of 4)
    assert best_threshold(np.array([0.5, 0.5, 0.5, 0.7]), np.array([True, False, True, False])) == pytest.approx(0.6)


def test_each_fold_is_scored_at_the_threshold_tuned_on_the_other_folds():
    # fold 1 alone is best cut at 0.4, fold 2 alone at 0.8; each is scored with the other's cut and gets half right
    distances = np.array([0.3, 0.5, 0.7, 0.9])
    same = np.array([True, False, True, False])
    accuracies, thresholds = cross_validate(distances, same, np.array([1, 1, 2, 2]))
    assert thresholds == pytest.approx([0.8, 0.4])
    assert accuracies == [0.5, 0.5]
    # a single fold has nothing else to tune on: its own best cut
    accuracies, thresholds = cross_validate(distances[:2], same[:2], np.array([1, 1]))
    assert thresholds == pytest.approx([0.4]) and accuracies == [1.0]


# --- calibration on the enrolled celebrity photos --------------------------------------------------------------------


def test_calibrate_on_the_celebrity_gallery(celebrity_gallery, tmp_path):
    plot = tmp_path / "plots" / "calibration.png"
    result = calibrate(celebrity_gallery, 0.01, plot, current_threshold=0.9)

    assert_png(plot)
    assert result["plot"] == str(plot)
    counts = Counter(celebrity_gallery.names)
    n = len(celebrity_gallery.names)
    assert result["genuine_pairs"] == result["impostor_pairs"] == n  # the door's rule: one score of each per photo
    assert result["people"] == result["people_with_pairs"] == len(counts) == 5
    assert result["photos"] == n

    # recomputed with the door's rule (the mean of the person's other photos; the closest other person's mean):
    # FAR <= 1% at the suggestion, and 0.001 higher is already over
    e = celebrity_gallery.embeddings.astype(np.float64)
    names = np.array(celebrity_gallery.names)
    means = {p: _mean(*e[names == p]) for p in set(names)}
    impostor = np.array([min(np.linalg.norm(x - m) for p, m in means.items() if p != n) for x, n in zip(e, names)])
    genuine_d = np.array([np.linalg.norm(x - _mean(*e[(names == n) & (np.arange(len(e)) != i)]))
                          for i, (x, n) in enumerate(zip(e, names))])
    t = result["suggested_threshold"]
    assert np.mean(impostor <= t) <= 0.01
    assert np.mean(impostor <= t + 0.0011) > 0.01
    assert result["suggested_far"] == pytest.approx(np.mean(impostor <= t))
    assert result["suggested_tar"] == pytest.approx(np.mean(genuine_d <= t))
    assert result["current_tar"] == pytest.approx(np.mean(genuine_d <= 0.9))
    assert 0.0 < result["eer"] < 0.2
    assert result["tar_at_far"]["0.01"] >= result["tar_at_far"]["0.001"] > 0.8


def test_calibrate_needs_genuine_and_impostor_pairs(celebrity_gallery, tmp_path):
    names = np.array(celebrity_gallery.names)
    first = [int(np.flatnonzero(names == name)[0]) for name in sorted(set(names))]
    one_each = Gallery(names=[names[i] for i in first], photos=[celebrity_gallery.photos[i] for i in first],
                       embeddings=celebrity_gallery.embeddings[first])
    with pytest.raises(ValueError, match="same-person photo pairs"):
        calibrate(one_each, 0.01, tmp_path / "a.png")

    madonna = np.flatnonzero(names == "madonna")
    one_person = Gallery(names=["madonna"] * len(madonna), embeddings=celebrity_gallery.embeddings[madonna])
    with pytest.raises(ValueError, match="at least 2 different people"):
        calibrate(one_person, 0.01, tmp_path / "b.png")
    with pytest.raises(ValueError, match="target FAR"):
        calibrate(celebrity_gallery, 1.5, tmp_path / "c.png")
    assert not any(tmp_path.glob("*.png"))


# --- LFW-style pairs over real photos ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory) -> tuple[Path, Path]:
    """The celebrity photos laid out as LFW (root/<name>/<name>_0001.jpg), and a 2-fold pairs.txt over them:
    per fold 10 same-person pairs (2 per person) and 10 different-person pairs (one per pair of people)."""
    base = tmp_path_factory.mktemp("lfw_like")
    root = base / "images"
    people = sorted(p.name for p in (CELEBRITY / "train").iterdir())
    for name in people:
        (root / name).mkdir(parents=True)
        usable = [p for p in sorted((CELEBRITY / "train" / name).glob("*.jpg")) if p != NO_FACE_PHOTO]
        for k, photo in enumerate(usable[:8], 1):
            shutil.copy(photo, root / name / f"{name}_{k:04d}.jpg")
    lines = ["2\t10"]
    for fold in range(2):
        o = 4 * fold
        lines += [f"{name}\t{o + a}\t{o + b}" for name in people for a, b in ((1, 2), (3, 4))]
        lines += [f"{a}\t{o + 1 + k % 4}\t{b}\t{o + 4 - k % 4}"
                  for k, (a, b) in enumerate(itertools.combinations(people, 2))]
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    return base / "pairs.txt", root


def test_evaluate_pairs_on_celebrity_photos(lfw_like, cfg, detector, encoder, tmp_path):
    pairs_file, root = lfw_like
    embed = make_lfw_embedder(cfg, detector, encoder, EmbeddingCache(tmp_path / "lfw.sqlite", "test"))
    plot = tmp_path / "roc.png"
    result = evaluate_pairs(pairs_file, root, embed, None, plot)

    assert set(result) == set(SUMMARY_TYPES)
    for key, kind in SUMMARY_TYPES.items():
        assert type(result[key]) is kind, key
    assert set(result["tar_at_far"]) == {"0.01", "0.001"}
    assert all(type(v) is float for v in result["tar_at_far"].values())
    assert result["pairs"] == 40
    assert result["accuracy"] >= 0.9
    assert result["failed_images"] == 0
    assert 0.5 < result["threshold"] < 1.5
    assert 0.0 <= result["eer"] < 0.1
    assert_png(plot)

    detailed = evaluate_pairs_detailed(pairs_file, root, embed)
    assert detailed.folds == [1, 2] and not detailed.threshold_from_test_fold
    assert detailed.images == 40
    assert detailed.summary() == result
    only_two = evaluate_pairs_detailed(pairs_file, root, embed, folds=[2])
    assert only_two.pairs == 20 and only_two.images == 20 and only_two.threshold_from_test_fold
    assert evaluate_pairs(pairs_file, root, embed, [2])["pairs"] == 20
    with pytest.raises(ValueError, match="folds must be between 1 and 2"):
        evaluate_pairs(pairs_file, root, embed, [3])


def failure_layout(base: Path) -> tuple[Path, Path]:
    """A real photo with no detectable face, a good photo, a missing one and a truncated one."""
    root = base / "images"
    (root / "mindy_kaling").mkdir(parents=True)
    (root / "ben_afflek").mkdir(parents=True)
    good = sorted(p for p in (CELEBRITY / "val" / "mindy_kaling").glob("*.jpg"))[0]
    shutil.copy(NO_FACE_PHOTO, root / "mindy_kaling" / "mindy_kaling_0001.jpg")
    shutil.copy(good, root / "mindy_kaling" / "mindy_kaling_0002.jpg")  # 0003 is missing
    ben = sorted((CELEBRITY / "val" / "ben_afflek").glob("*.jpg"))
    shutil.copy(ben[0], root / "ben_afflek" / "ben_afflek_0001.jpg")
    (root / "ben_afflek" / "ben_afflek_0002.jpg").write_bytes(ben[1].read_bytes()[:300])  # truncated
    pairs = base / "pairs.txt"
    pairs.write_text("1 3\nmindy_kaling 1 2\nmindy_kaling 2 3\nben_afflek 1 2\n"
                     "mindy_kaling 2 ben_afflek 1\nmindy_kaling 3 ben_afflek 1\nmindy_kaling 1 ben_afflek 2\n")
    return pairs, root


def test_no_face_falls_back_to_the_central_box_and_unreadable_pairs_score_distance_2(cfg, detector, encoder,
                                                                                      tmp_path):
    assert detector.photo_faces(load_rgb(NO_FACE_PHOTO, cfg.photo.max_pixels)) == []  # the premise of this test
    pairs_file, root = failure_layout(tmp_path)
    embed = make_lfw_embedder(cfg, detector, encoder)
    paths = [root / "mindy_kaling" / f"mindy_kaling_{k:04d}.jpg" for k in (1, 2, 3)]
    os.mkfifo(root / "fifo.jpg")  # would block a reader forever
    embeddings, ok = embed(paths + [root / "ben_afflek" / "ben_afflek_0002.jpg", root / "fifo.jpg"])
    assert ok == [False, True, False, False, False]
    assert np.linalg.norm(embeddings[:2], axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)  # central box: embedded
    assert np.isnan(embeddings[2:]).all()

    r = evaluate_pairs_detailed(pairs_file, root, embed)
    assert r.pairs == 6 and r.images == 5
    assert r.failed_images == 3 and r.unreadable_images == 2 and r.unreadable_pairs == 4
    assert r.distances.tolist()[1:3] + r.distances.tolist()[4:] == [MISSING_DISTANCE] * 4
    assert r.distances[0] < MISSING_DISTANCE and r.distances[3] < MISSING_DISTANCE


class Refuse:
    """A detector or encoder that must not be used: everything is in the cache."""

    def __init__(self, encoder):
        self.weights_id = encoder.weights_id

    def __getattr__(self, name):
        raise AssertionError(f"{name} called although everything is cached")


class CountingEncoder:
    """The real encoder, counting the chips it is given."""

    def __init__(self, encoder):
        self.encoder, self.weights_id, self.chips = encoder, encoder.weights_id, 0

    def encode(self, chips):
        self.chips += len(chips)
        return self.encoder.encode(chips)


def test_cached_rerun_detects_and_encodes_nothing(cfg, detector, encoder, tmp_path):
    pairs_file, root = failure_layout(tmp_path)
    paths = sorted(root.rglob("*.jpg")) + [root / "mindy_kaling" / "mindy_kaling_0003.jpg"]
    cache = EmbeddingCache(tmp_path / "cache.sqlite", "k")
    first, first_ok = make_lfw_embedder(cfg, detector, encoder, cache)(paths)
    again, again_ok = make_lfw_embedder(cfg, Refuse(encoder), Refuse(encoder), cache)(paths)
    np.testing.assert_array_equal(again, first)  # NaN rows included
    assert again_ok == first_ok == [True, False, False, True, False]  # the central-box verdict is cached too

    other = EmbeddingCache(tmp_path / "cache.sqlite", "another-key")  # a different key shares nothing
    with pytest.raises(AssertionError, match="called although everything is cached"):
        make_lfw_embedder(cfg, Refuse(encoder), Refuse(encoder), other)(paths[:1])


def test_mirror_images_are_encoded_only_for_flip_averaging(cfg, detector, encoder, tmp_path):
    """Without flip the chips alone are encoded (the mirrors doubled FaceNet's work for nothing); with
    it, records cached without mirrors are made again, and flip averages each chip with its mirror's."""
    _, root = failure_layout(tmp_path)
    paths = sorted(root.rglob("*.jpg"))  # ben 1 (a face), ben 2 (truncated), mindy 1 (central box), mindy 2
    cache = EmbeddingCache(tmp_path / "cache.sqlite", "k")
    counting = CountingEncoder(encoder)
    records = make_lfw_records(cfg, detector, counting, cache)

    plain = records(paths)
    assert counting.chips == 3  # one chip per readable photo, no mirror image
    assert np.isnan(plain.flipped).all()
    with pytest.raises(RuntimeError, match="mirrored=True"):
        plain.embeddings(True)
    readable = ~np.isnan(plain.plain).any(axis=1)
    assert readable.tolist() == [True, False, True, True]

    mirrored = records(paths, mirrored=True)
    assert counting.chips == 3 + 2 * 3  # the cached records had no mirrors: chips and mirrors encoded
    np.testing.assert_allclose(mirrored.plain, plain.plain, atol=1e-5)  # NaN rows included
    assert mirrored.ok == plain.ok and not np.isnan(mirrored.flipped[readable]).any()
    [face] = detector.photo_faces(load_rgb(paths[0], cfg.photo.max_pixels))
    np.testing.assert_allclose(mirrored.flipped[0], encoder.encode(face.chip[None, :, ::-1])[0], atol=1e-5)
    averaged = mirrored.embeddings(True)[readable]
    expected = mirrored.plain[readable] + mirrored.flipped[readable]
    np.testing.assert_allclose(averaged, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert (np.linalg.norm(averaged - plain.plain[readable], axis=1) > 1e-3).all()

    # both halves are cached now: flip or not, a rerun detects and encodes nothing
    embedded, ok = make_lfw_embedder(cfg, Refuse(encoder), Refuse(encoder), cache, flip=True)(paths)
    np.testing.assert_array_equal(embedded, mirrored.embeddings(True))
    assert ok == mirrored.ok
    np.testing.assert_array_equal(make_lfw_embedder(cfg, Refuse(encoder), Refuse(encoder), cache)(paths)[0],
                                  mirrored.plain)


def test_read_pairs_rejects_malformed_files(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("1 1\nA 1 2\nA x B 2\n")
    with pytest.raises(ValueError, match="line 3: image number 'x'"):
        read_pairs(f, tmp_path)
    f.write_text("1 1\nA 1 B 2\nA 1 2\n")
    with pytest.raises(ValueError, match=r"line 2: expected `name i j` \(same person\) in fold 1"):
        read_pairs(f, tmp_path)
    f.write_text("2 1\nA 1 2\nA 1 B 2\n")
    with pytest.raises(ValueError, match="header says 2 folds"):
        read_pairs(f, tmp_path)
    f.write_text("2 1\nA 1 2\nA 1 B 2\nC 3 4\nC 1 D 12\n")
    pairs, folds = read_pairs(f, tmp_path)
    assert folds == 2 and [(p.fold, p.same) for p in pairs] == [(1, True), (1, False), (2, True), (2, False)]
    assert pairs[3].second == tmp_path / "D" / "D_0012.jpg"


LFW = SHARED_DATA / "lfw"


@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"LFW not present at {LFW} (pairs.txt)")
def test_lfw_fold_1(cfg, detector, encoder, tmp_path):
    """Half of LFW's fold 1 (300 real pairs, about half a minute on 2 cores), split into two folds of 75 same
    and 75 different pairs, each scored at the threshold tuned on the other (the protocol, not tuned on
    itself): FaceNet should get well over 95% of them right. The whole of LFW: `door-access eval`."""
    lines = (LFW / "pairs.txt").read_text().splitlines()
    same, different = lines[1:301], lines[301:601]  # fold 1
    half = tmp_path / "pairs.txt"
    half.write_text("\n".join(["2 75", *same[:75], *different[:75], *same[75:150], *different[75:150]]) + "\n")
    searchers = [detector, FaceDetector(cfg.detection, cfg.path("weights"))]  # two photos searched at once
    embed = make_lfw_embedder(cfg, searchers, encoder, EmbeddingCache(tmp_path / "lfw.sqlite", "test"))
    result = evaluate_pairs(half, LFW / "images_deepfunneled", embed, None, None)
    assert result["pairs"] == 300
    assert result["accuracy"] >= 0.95
    assert result["failed_images"] <= 3
    assert result["tar_at_far"]["0.01"] >= 0.9


# --- the commands -----------------------------------------------------------------------------------------------------


def test_calibrate_and_eval_commands(lfw_like, shared_encoder, tmp_path, capsys):
    from door_access.cli import main

    pairs_file, root = lfw_like
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n")

    code = main(["calibrate", "--config", str(config), "--images", str(root), "--plot", str(tmp_path / "c.png"),
                 "--target-far", "0.01", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["people"] == 5 and result["photos"] == 40
    assert 0.5 < result["suggested_threshold"] < 1.5
    assert_png(tmp_path / "c.png")

    code = main(["eval", "--config", str(config), "--pairs", str(pairs_file), "--root", str(root), "--folds", "1",
                 "--plot", str(tmp_path / "roc.png"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and set(result) == set(SUMMARY_TYPES) and result["pairs"] == 20
    assert_png(tmp_path / "roc.png")

    assert main(["eval", "--config", str(config), "--pairs", str(pairs_file), "--root", str(root), "--folds", "x"]) == 2
    assert "--folds" in capsys.readouterr().err
    assert main(["calibrate", "--config", str(config), "--images", str(root), "--target-far", "2"]) == 2


def _mirror_halves(cache: Path) -> np.ndarray:
    """The mirrored-chip embeddings of every record in an eval cache."""
    with closing(sqlite3.connect(cache)) as db:
        blobs = [row[0] for row in db.execute("SELECT embedding FROM embeddings WHERE embedding IS NOT NULL")]
    return np.stack([np.frombuffer(b, np.float32) for b in blobs])[:, EMBEDDING_SIZE:2 * EMBEDDING_SIZE]


def test_eval_open_set_command_encodes_mirrors_for_flip_1_only(lfw_like, shared_encoder, tmp_path, capsys):
    from door_access.cli import main

    _, people = lfw_like
    root = tmp_path / "open_set"  # 3 people with 2 photos (enrolled from one, probed with the other), 2 strangers
    for k, person in enumerate(sorted(p.name for p in people.iterdir())):
        (root / person).mkdir(parents=True)
        for photo in sorted((people / person).glob("*.jpg"))[:2 if k < 3 else 1]:
            shutil.copy(photo, root / person / photo.name)
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n")
    command = ["eval", "--config", str(config), "--open-set", str(root), "--people", "2", "--seeds", "1", "--json"]

    results = {}
    for flip in ("0", "1"):
        assert main(command + ["--flip", flip]) == 0
        results[flip] = json.loads(capsys.readouterr().out)
        [cache] = tmp_path.rglob("eval.sqlite")
        halves = _mirror_halves(cache)
        assert len(halves) == 7  # 3 enrolled, 2 probes (--people 2), 2 strangers
        # --flip 0 encodes no mirror image; --flip 1 makes the records again with them
        assert np.isnan(halves).all() if flip == "0" else not np.isnan(halves).any()
    assert results["0"]["flip"] is False and results["1"]["flip"] is True
    for result in results.values():
        [s] = result["slices"]
        assert s["refused_enrollments"] == 0 and s["enrollment_photos"] == 2
        assert s["at_zero_strangers"]["recognised"] == 2 and s["at_zero_strangers"]["wrong_person"] == 0
        assert result["gallery_growth"]["3"] == {"enrolled": 3, "strangers": 2, "accepted": 0,
                                                 "far_per_stranger": 0.0}


# --- the door's own rule: 1:K scores and the open set (issue 8, seam 4) --------------------------------------------


def _unit(*rows):
    e = np.array(rows, np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _mean(*rows):
    m = np.sum(rows, axis=0)
    return m / np.linalg.norm(m)


def test_door_scores_use_each_persons_mean_and_the_best_other_person():
    """A per-pair FAR counts each impostor pair alone; the door lets a stranger in when ANYONE is close. As
    the door matches, a person is the normalised mean of their photos: a photo's genuine score is its
    distance to the mean of its person's other photos, its impostor score the closest other person's mean."""
    from door_access.tools.evaluation import door_scores

    e = _unit([1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.2, 1], [0.1, 1, 0.05])
    genuine, impostor = door_scores(["a", "a", "a", "c", "b"], e)
    a = _mean(*e[:3])
    assert genuine == pytest.approx([np.linalg.norm(e[0] - _mean(e[1], e[2])),
                                     np.linalg.norm(e[1] - _mean(e[0], e[2])),
                                     np.linalg.norm(e[2] - _mean(e[0], e[1]))])
    assert impostor[4] == pytest.approx(min(np.linalg.norm(e[4] - a), np.linalg.norm(e[4] - e[3])))
    assert impostor[3] == pytest.approx(min(np.linalg.norm(e[3] - a), np.linalg.norm(e[3] - e[4])))
    assert len(genuine) == 3 and len(impostor) == 5  # c and b have one photo: no genuine score


def test_open_set_counts_follow_the_door_rule():
    from door_access.tools.evaluation import best_two, open_set_counts, zero_stranger_threshold

    gallery = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    probes = _unit([1, 0.2, 0], [0.1, 1, 0], [0.6, 0.6, 0])  # a, b, and a face halfway between a and b
    strangers = _unit([0.2, 0.2, 1], [1, 1, 1])
    best, d1, d2 = best_two(all_distances(probes, gallery))
    _, s1, s2 = best_two(all_distances(strangers, gallery))
    owner = np.array([0, 1, 1])  # the third is b, looking as much like a
    counts = open_set_counts(owner, best, d1, d2, s1, s2, threshold=0.9, margin=0.0)
    assert counts == {"threshold": 0.9, "recognised": 2, "wrong_person": 1, "strangers_accepted": 1}
    # a margin between the best and the second person refuses the tie instead of guessing
    counts = open_set_counts(owner, best, d1, d2, s1, s2, threshold=0.9, margin=0.1)
    assert counts == {"threshold": 0.9, "recognised": 2, "wrong_person": 0, "strangers_accepted": 1}
    zero = zero_stranger_threshold(s1, s2, 0.0)
    assert zero < s1.min() and open_set_counts(owner, best, d1, d2, s1, s2, zero, 0.0)["strangers_accepted"] == 0


@pytest.mark.skipif(not (SHARED_DATA / "lfw" / "images_deepfunneled").is_dir(), reason="../shared/data/lfw is absent")
def test_draw_slice_is_seeded_and_not_alphabetical():
    from door_access.tools.evaluation import draw_slice, lfw_people

    people = lfw_people(SHARED_DATA / "lfw" / "images_deepfunneled")
    a, b, c = draw_slice(people, 30, 1), draw_slice(people, 30, 1), draw_slice(people, 30, 2)
    assert a == b and a.enrolled != c.enrolled
    assert a.enrolled != sorted(a.enrolled)
    assert all(len(people[p]) >= 2 for p in a.enrolled) and len(set(a.enrolled)) == 30
    assert all(len(e) == 1 and len(p) == 1 and e[0] != p[0] and e[0].parent == p[0].parent
               for e, p in zip(a.enroll_photos, a.probe_photos))
    assert not {s[0].parent.name for s in a.strangers} & set(a.enrolled)
    assert all(len(s) == 1 and len(people[s[0].parent.name]) == 1 for s in a.strangers)


@pytest.mark.skipif(not (SHARED_DATA / "lfw" / "images_deepfunneled").is_dir(), reason="../shared/data/lfw is absent")
def test_draw_slice_enrolls_k_photos_and_fuses_m_for_probes_and_strangers():
    from door_access.tools.evaluation import draw_slice, lfw_people

    people = lfw_people(SHARED_DATA / "lfw" / "images_deepfunneled")
    sl = draw_slice(people, 40, 3, enroll=3, frames=4)
    assert sl == draw_slice(people, 40, 3, enroll=3, frames=4)
    assert all(len(people[p]) >= 4 for p in sl.enrolled)
    for person, enrolled, probe in zip(sl.enrolled, sl.enroll_photos, sl.probe_photos):
        assert len(enrolled) == 3 and 1 <= len(probe) <= 4 and not set(enrolled) & set(probe)
        assert {p.parent.name for p in enrolled + probe} == {person}
    # strangers with several photos, enrolled nowhere, each one person
    assert len(sl.strangers) == 40 and not {s[0].parent.name for s in sl.strangers} & set(sl.enrolled)
    assert all(2 <= len(people[s[0].parent.name]) and len({p.parent for p in s}) == 1 for s in sl.strangers)
    assert max(len(s) for s in sl.strangers) == 4
    # one photo each, the default, draws the slice the open set always drew
    assert draw_slice(people, 40, 3) == draw_slice(people, 40, 3, enroll=1, frames=1)


@pytest.mark.model
@pytest.mark.skipif(not (SHARED_DATA / "lfw" / "images_deepfunneled").is_dir(), reason="../shared/data/lfw is absent")
def test_open_set_on_a_small_lfw_slice(cfg, detector, encoder, tmp_path):
    from door_access.tools.evaluation import evaluate_open_set

    records = make_lfw_records(cfg, detector, encoder, EmbeddingCache(tmp_path / "lfw.sqlite", "test"))
    root = SHARED_DATA / "lfw" / "images_deepfunneled"
    result = evaluate_open_set(records, root, 12, [5], threshold=0.9, gallery_sizes=(5, 12))
    [s] = result["slices"]
    a, z = s["at_threshold"], s["at_zero_strangers"]
    assert a["recognised"] + a["wrong_person"] <= 12 - 0 and a["recognised"] >= 8
    assert z["strangers_accepted"] == 0 and z["threshold"] >= 0.5
    assert result["gallery_growth"]["5"]["strangers"] == 12
    assert result["gallery_growth"]["5"]["accepted"] <= result["gallery_growth"]["12"]["accepted"]

    # three photos a person, probes of three photos fused: the door's own use
    many = evaluate_open_set(records, root, 8, [5], threshold=0.9, margin=0.15, gallery_sizes=(4, 8), enroll=3,
                             frames=3, voting=(3, 5))
    [m] = many["slices"]
    assert many["enroll"] == 3 and many["probe_frames"] == 3 and m["enrollment_photos"] >= 20
    assert 2 <= m["probe_photos_fused"] <= 3 and 1 <= m["stranger_photos_fused"] <= 3
    assert m["at_threshold"]["recognised"] >= 7 and m["at_threshold"]["wrong_person"] == 0
    # the decider's rule: votes and the fused embedding agreeing never admits more than the votes alone
    for key in ("recognised", "wrong_person", "strangers_accepted"):
        assert m["door"][key] <= m["votes"][key]
    growth = many["gallery_growth"]
    assert growth["4"]["enrolled"] == 4 and growth["4"]["accepted"] <= growth["8"]["accepted"]


def test_eval_open_set_usage_errors(tmp_path, capsys):
    from door_access.cli import main

    assert main(["eval", "--open-set", str(tmp_path), "--enroll", "0"]) == 2
    assert "--enroll and --probe-frames must be at least 1" in capsys.readouterr().err
    assert main(["eval", "--open-set", str(tmp_path / "missing")]) == 2
    assert "--open-set" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "--pairs and --root, or --open-set" in capsys.readouterr().err
    assert main(["eval", "--open-set", str(tmp_path), "--seeds", "a,b"]) == 2
