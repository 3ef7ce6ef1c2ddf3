"""Presentation-attack measures (ISO/IEC 30107-3), the site's own model and `learn-attacks`.

The site-model tests use real Replay-Attack frames from ../shared/data/pad (research licence:
read there, never copied); they are skipped with a reason when it is absent.
"""

from __future__ import annotations

import csv
import json
import logging
import stat

import cv2
import numpy as np
import pytest

from door_access.core import Box
from door_access.liveness.attack_model import SiteModel, model_crop, texture_features
from door_access.tools.liveness_eval import pad_measures

from conftest import REPO, SHARED_DATA

PAD = SHARED_DATA / "pad" / "replay_attack_train"
needs_pad = pytest.mark.skipif(not (PAD / "truth.csv").is_file(), reason="../shared/data/pad is not present")


def _clip(subkind, judged, attack_frames, clip_attack, no_face=0, too_small=0, judged_clip=True):
    """A clip as eval_frames reports it (only the fields the measures read)."""
    return {"type": "frames", "subkind": subkind, "judged_frames": judged, "attack_frames": attack_frames,
            "no_face": no_face, "too_small": too_small, "clip_judged": judged_clip, "clip_attack": clip_attack,
            "cue_attack_frames": {"m": attack_frames}, "deny_cues": {"m": 1.0} if clip_attack else {}}


def test_apcer_and_bpcer_per_frame_and_per_clip():
    clips = [
        _clip("genuine", 6, 0, False), _clip("genuine", 6, 1, False), _clip("genuine", 4, 3, True, no_face=2),
        _clip("genuine", 1, 0, False, too_small=5, judged_clip=False),  # too small: counted apart
        _clip("attack_print", 6, 6, True), _clip("attack_print", 6, 2, False),
        _clip("attack_screen_video", 6, 5, True), _clip("attack_screen_video", 6, 6, True),
        _clip("attack_screen_video", 6, 0, False), _clip("attack_screen_video", 6, 4, True),
    ]
    m = pad_measures(clips, {"m": 0.5})["kinds"]
    assert list(m) == ["genuine", "attack_print", "attack_screen_video"]
    g = m["genuine"]
    assert g["measure"] == "BPCER" and g["frame_rate"] == round(4 / 17, 4) and g["clip_rate"] == round(1 / 3, 4)
    assert (g["frames_no_face"], g["frames_too_small"], g["clips_judged"], g["clips_not_judged"]) == (2, 5, 3, 1)
    p = m["attack_print"]
    assert p["measure"] == "APCER" and p["frame_rate"] == round(4 / 12, 4) and p["clip_rate"] == 0.5
    v = m["attack_screen_video"]
    assert v["frame_rate"] == round(9 / 24, 4) and v["clip_rate"] == 0.25
    assert v["by_cue"]["m"] == {"frame_rate": v["frame_rate"], "clip_rate": v["clip_rate"]}


def test_the_general_models_crop_stays_inside_the_frame_and_keeps_its_size():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[100:140, 280:320] = 255  # the face at the right edge: the crop shifts left, it is not cut
    crop = model_crop(frame, Box(280, 100, 40, 40))
    assert crop.shape == (128, 128, 3)
    # a 108 px square (2.7 x 40) shifted to x 211-319: the face fills its right third, rows 34-74 of 108
    assert crop[50:80, -35:].min() == 255 and crop[:, :70].max() == 0


def _pad_rows(clients: set[str], per_kind: int = 1) -> list[dict]:
    rows, seen = [], {}
    with (PAD / "truth.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            key = (r["client"], r["subkind"])
            if r["client"] in clients and seen.get(key, 0) < (2 if r["subkind"] == "genuine" else per_kind):
                seen[key] = seen.get(key, 0) + 1
                rows.append(dict(r, file=str(PAD / r["file"])))  # absolute: the shared data stays where it is
    return rows


def _write_truth(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "truth.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@needs_pad
def test_the_site_model_is_saved_private_and_read_back_the_same(tmp_path, detector):
    rows = _pad_rows({"client001", "client002"})
    feats, attack = [], []
    for r in rows:
        for p in sorted((PAD / r["file"]).glob("*.jpg"))[:3]:
            bgr = cv2.imread(str(p))
            [rect, *_] = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) or [None]
            if rect is not None:
                feats.append(texture_features(bgr, Box(rect.left(), rect.top(), rect.width(), rect.height())))
                attack.append(r["kind"] != "genuine")
    model = SiteModel.fit(np.array(feats), np.array(attack), threshold=0.42)
    path = tmp_path / "site" / "model.npz"
    model.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = SiteModel.load(path)
    assert back.threshold == 0.42
    assert np.allclose(back.probabilities(np.array(feats)), model.probabilities(np.array(feats)))
    fitted = model.probabilities(np.array(feats)) >= 0.5
    assert (fitted == np.array(attack)).mean() > 0.9  # it learned its own frames
    np.savez(path, format=np.array(99), mean=model.mean)
    with pytest.raises(ValueError, match="learn-attacks"):
        SiteModel.load(path)


@needs_pad
@pytest.mark.model
def test_learn_attacks_on_a_small_folder_then_eval_liveness_uses_it(tmp_path, capsys, caplog):
    """Three clients' genuine, print and screen clips (real Replay-Attack frames): learn-attacks
    cross-validates with people kept apart, prints APCER/BPCER and writes the model (0600) where
    spoof.site_model points; eval-liveness on a fourth client then denies with it instead of the
    general model, at 1.5 times its threshold. The graded policy (a CONFIRM cue taken as seen on
    frames): the client's two live clips pass without a challenge (site model confident, shipped
    model agreeing), and no attack does. Its log says what goes wrong, not one INFO line per clip (a
    progress bar counts clips on a terminal)."""
    from door_access.cli import main

    rows = _pad_rows({"client001", "client002", "client004"})
    train = _write_truth(tmp_path / "train", rows)
    test = _write_truth(tmp_path / "test", _pad_rows({"client108"}))
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: {tmp_path / 'cache'}\n")
    caplog.set_level(logging.DEBUG, logger="door_access")
    assert main(["learn-attacks", str(train), "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    per_clip = [r for r in caplog.records if any(row["file"] in r.getMessage() for row in rows)]
    assert not [r.getMessage() for r in per_clip if r.levelno == logging.INFO]
    assert sum(r.levelno == logging.DEBUG for r in per_clip) == len(rows)  # still there with --verbose
    model = tmp_path / "cache" / "site_attack_model.npz"
    assert report["model"] == str(model) and stat.S_IMODE(model.stat().st_mode) == 0o600
    cv = report["cross_validated"]
    assert cv["kept_apart"] == 3 and cv["genuine"]["measure"] == "BPCER"
    assert {"attack_print", "attack_screen_photo", "attack_screen_video"} <= set(cv)
    assert 0.0 < report["threshold"] <= 1.0 and report["frames"] >= 60

    assert main(["eval-liveness", str(test), "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    thresholds = result["pad"]["thresholds"]
    t = report["threshold"]
    assert thresholds == {"presentation attack (site model)": pytest.approx(min(1.5 * t, (1 + t) / 2), abs=1e-4)}
    genuine = result["pad"]["kinds"]["genuine"]
    assert genuine["clips_judged"] + genuine["clips_not_judged"] == 2
    assert set(genuine["by_cue"]) == {"presentation attack (site model)"}  # only the site model denies
    policy = {c["file"].rsplit("/", 1)[-1]: c["policy"] for c in result["clips"]}
    assert [b for f, b in policy.items() if f.startswith("real")] == ["pass", "pass"], result["clips"]
    assert "pass" not in [b for f, b in policy.items() if f.startswith("attack")], result["clips"]
    assert genuine["policy"]["pass"] == {"clips": 2, "rate": 1.0}
    assert all(m["policy"]["pass"]["clips"] == 0 for k, m in result["pad"]["kinds"].items() if k != "genuine")


@needs_pad
@pytest.mark.model
def test_a_fresh_door_asks_live_faces_and_denies_outright_only_what_they_never_score(tmp_path, capsys):
    """No site model: eval-liveness reports each frame folder's graded policy beside APCER/BPCER. A live
    client the shipped model scores 0.82 (denied "presentation attack" at the old threshold 0.5) is asked,
    with one step more; a live client it scores 0.005 is asked too (a fresh door lets no one in on the
    scores alone); a print it scores 0.99 is denied outright."""
    from door_access.cli import main

    want = {"real__real__client016_session01_webcam_authenticate_adverse_2/": "challenge",
            "real__real__client108_session01_webcam_authenticate_adverse_1/": "challenge",
            "attack__fixed__attack_print_client008_session01_highdef_photo_adverse/": "deny"}
    with (PAD / "truth.csv").open(newline="") as f:
        rows = [dict(r, file=str(PAD / r["file"])) for r in csv.DictReader(f) if r["file"] in want]
    folder = _write_truth(tmp_path / "fresh", rows)
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: {tmp_path / 'cache'}\n")
    assert main(["eval-liveness", str(folder), "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    got = {c["file"].rsplit("/", 1)[-1] + "/": c["policy"] for c in result["clips"]}
    assert got == want, result["clips"]
    kinds = result["pad"]["kinds"]
    assert kinds["genuine"]["clip_rate"] == 0.0  # BPCER: no live face denied outright
    assert kinds["genuine"]["policy"] == {"pass": {"clips": 0, "rate": 0.0}, "challenge": {"clips": 2, "rate": 1.0},
                                          "deny": {"clips": 0, "rate": 0.0}}
    assert kinds["attack_print"]["policy"]["deny"] == {"clips": 1, "rate": 1.0}
    assert result["totals"]["genuine"]["policy"]["challenge"]["clips"] == 2
    assert main(["eval-liveness", str(folder), "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "policy challenge" in text and "policy: pass 0.0% (0), challenge 100.0% (2), deny 0.0% (0)" in text
