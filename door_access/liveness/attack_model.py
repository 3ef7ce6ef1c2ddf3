"""Learned presentation-attack scores: is this face a print or a screen?

Hand-set thresholds on brightness, detail and straight edges fitted the dev clips, not the
phenomenon (APCER 96-99% on held-out Replay-Attack clients). Two learned scores replace them,
each a per-frame probability that the face is an attack, combined over a track by `Evidence`:
- `GeneralModel`: a MiniFASNet-style network from the npm package
  `faceplugin-face-recognition-js@0.0.1` (MIT), fetched by `door-access setup`. It looks at
  the face and its surroundings (a 128x128 crop 2.7 times the face box, BGR, pixel values
  0-255, 3 logits of which index 0 is "live"; checked on real frames, see docs).
- `SiteModel`: colour-texture features (uniform LBP histograms of the face and its surroundings
  in HSV and YCbCr)
  and a logistic regression, fitted by `door-access learn-attacks` on recordings made at the
  door itself. It generalises poorly to other cameras but well to the camera it was fitted on,
  and a door's camera and scene never change.
Pure numpy/OpenCV (plus onnxruntime for the general model): no TensorFlow, no dlib.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from door_access.core import Box

log = logging.getLogger(__name__)

GENERAL_MODEL_FILE = "fr_liveness.onnx"
CROP_SCALE = 2.7  # the general model's crop: this many face boxes around the face's centre
CROP_SIDE = 128
TEXTURE_SIDE = 64  # the site model's face chip, so texture does not depend on distance
TEXTURE_GROW = 1.6  # ...taken from the face box grown this much: the face and its surroundings
SITE_FORMAT = 3  # 1: the face box alone; 2: no attack ceiling


def model_crop(bgr: np.ndarray, box: Box, scale: float = CROP_SCALE, side: int = CROP_SIDE) -> np.ndarray:
    """The face's surroundings as the general model was trained on them: a box `scale` times the
    face box around its centre, shifted (not cut) to stay inside the frame, shrunk when the frame
    is too small for it, resized to side x side (the package's own `alignLivenessImage`)."""
    h, w = bgr.shape[:2]
    bw, bh = max(box.w, 1), max(box.h, 1)
    scale = min((h - 1) / bh, (w - 1) / bw, scale)
    nw, nh = bw * scale, bh * scale
    cx, cy = box.x + bw / 2, box.y + bh / 2
    left, top = cx - nw / 2, cy - nh / 2
    left = min(max(left, 0.0), w - 1 - nw)
    top = min(max(top, 0.0), h - 1 - nh)
    x0, y0 = max(int(left), 0), max(int(top), 0)
    crop = bgr[y0:y0 + max(int(nh), 1), x0:x0 + max(int(nw), 1)]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)


class ModelMissing(FileNotFoundError):
    """A model the config asks for is not there; the message names the fix."""


class GeneralModel:
    """The shipped network: `attack_probability(frame, box)` is 1 - softmax(logits)[0]."""

    name = "general"

    def __init__(self, path: Path):
        path = Path(path)
        if not path.is_file():
            raise ModelMissing(f"presentation-attack model not found at {path}: run `door-access setup` "
                               f"(or set spoof.model: false to run without it, which lets photos and replays in)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # the detector processes keep the other cores busy
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def attack_probability(self, bgr: np.ndarray, box: Box) -> float:
        x = model_crop(bgr, box).transpose(2, 0, 1)[None].astype(np.float32)
        logits = self.session.run(None, {self.input: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        return float(1.0 - p[0] / p.sum())


# ---- the site model: colour texture + logistic regression --------------------------------------


def _uniform_lut() -> np.ndarray:
    """8-neighbour LBP codes -> 59 bins: the 58 codes with at most two 0/1 transitions, and the rest."""
    lut = np.full(256, 58, dtype=np.int64)
    k = 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            lut[code] = k
            k += 1
    return lut


_LUT = _uniform_lut()
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _lbp_histogram(channel: np.ndarray) -> np.ndarray:
    c = channel[1:-1, 1:-1].astype(np.int16)
    code = np.zeros(c.shape, dtype=np.int64)
    h, w = channel.shape
    for i, (dy, dx) in enumerate(_OFFSETS):
        n = channel[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx].astype(np.int16)
        code |= (n >= c).astype(np.int64) << i
    hist = np.bincount(_LUT[code].ravel(), minlength=59).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def texture_features(bgr: np.ndarray, box: Box) -> np.ndarray:
    """Uniform LBP histograms of the face and its surroundings (the box grown TEXTURE_GROW times
    about its centre, cut at the frame's edges, at TEXTURE_SIDE px) in each channel of HSV and
    YCbCr: print and screen change the colour and micro-texture of skin, and of what is next to
    it, in ways a camera sees; 6 x 59 = 354 values."""
    h, w = bgr.shape[:2]
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    half_w, half_h = box.w * TEXTURE_GROW / 2, box.h * TEXTURE_GROW / 2
    x0, y0 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    x1, y1 = min(w, int(cx + half_w)), min(h, int(cy + half_h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError("face box outside the frame")
    face = cv2.resize(bgr[y0:y1, x0:x1], (TEXTURE_SIDE, TEXTURE_SIDE), interpolation=cv2.INTER_AREA)
    spaces = (cv2.cvtColor(face, cv2.COLOR_BGR2HSV), cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb))
    return np.concatenate([_lbp_histogram(s[:, :, i]) for s in spaces for i in range(3)])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 30) -> tuple[np.ndarray, float]:
    """Logistic regression by Newton's method with an L2 penalty, classes weighted to equal
    total weight (a site records more of one kind than the other). x: standardised features."""
    y = y.astype(np.float64)
    pos = max(y.sum(), 1.0)
    neg = max(len(y) - y.sum(), 1.0)
    sw = np.where(y > 0, 0.5 * len(y) / pos, 0.5 * len(y) / neg)
    a = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(a.shape[1])
    penalty = np.full(a.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -30, 30)))
        grad = a.T @ (sw * (p - y)) + penalty * beta
        hess = (a * (sw * p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-6:
            break
    return beta[:-1], float(beta[-1])


def attack_ceiling(attack_tracks: dict[str, np.ndarray], accepted: dict[str, int]) -> float:
    """The highest threshold at which each attack kind's tracks (kind -> their mean attack
    probabilities) have at most `accepted[kind]` tracks under it, i.e. still hold that APCER:
    for each kind the (accepted + 1)-th lowest score, the least of those over the kinds (1.0 when
    a kind may pass whole)."""
    ceiling = 1.0
    for kind, scores in attack_tracks.items():
        s = np.sort(np.asarray(scores, np.float64))
        if accepted.get(kind, 0) < len(s):
            ceiling = min(ceiling, float(s[accepted.get(kind, 0)]))
    return ceiling


def raised_threshold(threshold: float, ceiling: float, genuine_tracks: np.ndarray, fraction: float) -> float:
    """The threshold at which at most `fraction` of `genuine_tracks` (track-mean attack probabilities
    of live faces at this door) are refused, never lowered (people not yet sampled keep what they had)
    and never above `ceiling`: live samples move it, the attack recordings bound it, whatever the
    samples are."""
    scores = np.asarray(genuine_tracks, np.float64)
    if not len(scores):
        return threshold
    return min(max(float(np.quantile(scores, 1.0 - fraction)), threshold), max(ceiling, threshold))


@dataclass(frozen=True)
class SiteModel:
    """A linear model of this door's attacks: P(attack) = sigmoid(w . (f - mean) / std + b),
    the threshold learn-attacks chose for its track mean, and the `ceiling` no recalibration may
    pass: above it the admin's attack recordings would be let in more often than at their fit
    (`attack_ceiling`; equal to the threshold when unknown)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    name: str = "site"
    ceiling: float | None = None

    @property
    def limit(self) -> float:
        """The highest threshold this model may be given (its ceiling, never below its threshold)."""
        return self.threshold if self.ceiling is None else max(self.ceiling, self.threshold)

    def recalibrated(self, genuine_tracks: np.ndarray, fraction: float) -> SiteModel:
        """This model with its threshold raised (`raised_threshold`) for this door's live tracks."""
        return dataclasses.replace(self, threshold=raised_threshold(self.threshold, self.limit, genuine_tracks,
                                                                    fraction))

    @classmethod
    def fit(cls, features: np.ndarray, attack: np.ndarray, threshold: float = 0.5, l2: float = 1.0) -> SiteModel:
        mean = features.mean(axis=0)
        std = features.std(axis=0) + 1e-6
        w, b = fit_logistic((features - mean) / std, attack, l2)
        return cls(mean, std, w, b, threshold)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.std) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def attack_probability(self, bgr: np.ndarray, box: Box) -> float:
        return float(self.probabilities(texture_features(bgr, box)[None])[0])

    def save(self, path: Path) -> None:
        """An .npz of plain arrays (no pickle), readable by the door's user only (0600): it
        describes what the door takes for an attack."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=np.array(SITE_FORMAT), mean=self.mean, std=self.std, weights=self.weights,
                     bias=np.array(self.bias), threshold=np.array(self.threshold), ceiling=np.array(self.limit))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SiteModel:
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["format"]) not in (2, SITE_FORMAT):
                raise ValueError(f"{path}: site model format {int(z['format'])}, expected {SITE_FORMAT}: "
                                 f"run `door-access learn-attacks` again")
            ceiling = float(z["ceiling"]) if "ceiling" in z else None  # format 2: none, the threshold holds
            model = cls(z["mean"], z["std"], z["weights"], float(z["bias"]), float(z["threshold"]), ceiling=ceiling)
        if not (model.mean.shape == model.std.shape == model.weights.shape == (354,)):
            raise ValueError(f"{path}: not a site model of this version")
        return model


# ---- combining a track's frames -------------------------------------------------------------


class Evidence:
    """The rule the door applies to a track (and eval-liveness to a clip): the mean attack
    probability over its judged frames, once there are at least `min_frames` of them, at or
    above `threshold` denies. A mean, not a vote: one blurred frame neither denies a live
    person nor clears a replay."""

    def __init__(self, threshold: float, min_frames: int):
        self.threshold = threshold
        self.min_frames = min_frames
        self.total = 0.0
        self.count = 0

    def add(self, probability: float) -> None:
        self.total += probability
        self.count += 1

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def judged(self) -> bool:
        return self.count >= self.min_frames

    @property
    def attack(self) -> bool:
        return self.judged and self.total >= self.threshold * self.count
