"""How well the embeddings tell people apart: threshold calibration on the gallery, and LFW-style accuracy.

Both measures reduce to two sets of L2 distances, genuine (same person) and impostor (two
different people), summarised by one `Roc`. The app accepts a face when its distance is
`<= recognition.threshold`, and every figure here uses that same rule.

Operating points are read off the impostor distances without interpolation: at a target FAR
`f` with `n` impostor pairs, at most `k = floor(f * n)` impostors may be accepted, so the
threshold is the largest one under the (k+1)-th smallest impostor distance. With 1,000
impostor pairs, FAR 0.1% allows 1 of them; with fewer than 1/f pairs it allows none, and the
figure is the TAR at FAR 0, a lower bound on the TAR at FAR f. The achieved FAR never
exceeds the target (ties at the boundary make it smaller).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dlib
import numpy as np

from door_access.config import Config
from door_access.core import EMBEDDING_SIZE
from door_access.faces.detection import FaceDetector
from door_access.faces.facenet import FaceEncoder
from door_access.faces.photos import PhotoError, load_rgb
from door_access.files import sha256_file
from door_access.quiet import progress_bar
from door_access.recognition.gallery import EmbeddingCache, Gallery, chip_settings
from door_access.recognition.recognizer import Recognizer

log = logging.getLogger(__name__)

REPORT_FARS = (0.01, 0.001)  # the FARs that TAR is reported at
MISSING_DISTANCE = 2.0  # distance given to a pair with an unreadable image: the largest between unit vectors
LFW_BATCH = 64
CENTRAL_BOX = 110 / 250  # LFW crops are 250 px with the face around the central 110 px
EmbedFn = Callable[[list[Path]], tuple[np.ndarray, list[bool]]]


def photo_detectors(cfg: Config) -> list[FaceDetector]:
    """One detector per photo `make_lfw_records` searches at once: one per core, at most 4."""
    return [FaceDetector(cfg.detection, cfg.path("weights")) for _ in range(max(1, min(4, os.cpu_count() or 1)))]


def far_key(far: float) -> str:
    """The dict key a FAR is reported under: 0.01 -> "0.01"."""
    return f"{far:g}"


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # accept when distance <= threshold
    tar: float  # genuine pairs accepted
    far: float  # impostor pairs accepted
    accepted_impostors: int


@dataclass(frozen=True)
class Roc:
    """Genuine and impostor distances, sorted, with the TAR/FAR/EER maths shared by all evaluations."""

    genuine: np.ndarray
    impostor: np.ndarray

    @classmethod
    def from_distances(cls, genuine: np.ndarray, impostor: np.ndarray) -> Roc:
        genuine = np.sort(np.asarray(genuine, np.float64).ravel())
        impostor = np.sort(np.asarray(impostor, np.float64).ravel())
        if genuine.size == 0 or impostor.size == 0:
            raise ValueError("a ROC needs at least one genuine and one impostor distance")
        return cls(genuine, impostor)

    def at_threshold(self, threshold: float) -> OperatingPoint:
        g = int(np.searchsorted(self.genuine, threshold, side="right"))
        i = int(np.searchsorted(self.impostor, threshold, side="right"))
        return OperatingPoint(float(threshold), g / self.genuine.size, i / self.impostor.size, i)

    def at_far(self, target_far: float) -> OperatingPoint:
        """The largest threshold accepting at most floor(target_far * impostors) impostor pairs (see module doc)."""
        allowed = math.floor(target_far * self.impostor.size + 1e-9)  # 1e-9: 0.29 * 100 is 28.999...
        if allowed >= self.impostor.size:
            return OperatingPoint(math.inf, 1.0, 1.0, self.impostor.size)
        boundary = self.impostor[allowed]  # the first impostor that must stay rejected
        g = int(np.searchsorted(self.genuine, boundary, side="left"))
        i = int(np.searchsorted(self.impostor, boundary, side="left"))
        return OperatingPoint(float(np.nextafter(boundary, -np.inf)), g / self.genuine.size,
                              i / self.impostor.size, i)

    def tar_at_far(self, fars: Sequence[float] = REPORT_FARS) -> dict[str, float]:
        return {far_key(f): self.at_far(f).tar for f in fars}

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, tar, far) at every distinct distance, starting from 'accept nothing'."""
        thresholds = np.unique(np.concatenate([self.genuine, self.impostor]))
        thresholds = np.concatenate([[np.nextafter(thresholds[0], -np.inf)], thresholds])
        tar = np.searchsorted(self.genuine, thresholds, side="right") / self.genuine.size
        far = np.searchsorted(self.impostor, thresholds, side="right") / self.impostor.size
        return thresholds, tar, far

    def eer(self) -> tuple[float, float]:
        """(equal error rate, its threshold).

        FAR - FRR rises from -1 (accept nothing) to +1 (accept all) over the curve's points;
        where it changes sign between two points, both rates and the threshold are
        interpolated linearly between them.
        """
        thresholds, tar, far = self.curve()
        diff = far - (1.0 - tar)
        i = int(np.argmax(diff >= 0))  # the first point is 'accept nothing' (diff -1), the last accepts all (+1)
        alpha = -diff[i - 1] / (diff[i] - diff[i - 1])
        rate = far[i - 1] + alpha * (far[i] - far[i - 1])
        return float(rate), float(thresholds[i - 1] + alpha * (thresholds[i] - thresholds[i - 1]))


def _centroids(names: Sequence[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each photo's person index, each person's summed embeddings, their photo counts), people sorted."""
    people = sorted(set(names))
    index = {p: i for i, p in enumerate(people)}
    owner = np.array([index[n] for n in names], np.intp)
    sums = np.zeros((len(people), embeddings.shape[1]), np.float64)
    np.add.at(sums, owner, embeddings)
    return owner, sums, np.bincount(owner, minlength=len(people))


def _distance_to(e: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """L2 distances from unit rows `e` to the normalised rows of `sums`."""
    unit = sums / np.maximum(np.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)
    return np.sqrt(np.clip(2.0 - 2.0 * e @ unit.T, 0.0, None))


def door_scores(names: Sequence[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) scores with the door's 1:K rule, leaving one identity out, one of each per photo.

    The door compares a face with every enrolled person's mean embedding (`Recognizer`) and takes
    the best, so a photo's genuine score is its distance to the mean of the same person's other
    photos (people with 2+ photos), and its impostor score, as a stranger to everyone else, the
    distance to the closest other person. A per-pair rate would understate how often a stranger
    gets in: the stranger's chance grows with the gallery.
    """
    e = np.asarray(embeddings, np.float64)
    owner, sums, counts = _centroids(names, e)
    d = _distance_to(e, sums)
    d[np.arange(len(e)), owner] = np.inf
    impostor = d.min(axis=1) if d.shape[1] > 1 else np.full(len(e), np.inf)
    rest = sums[owner] - e  # the same person without this photo
    genuine = np.sqrt(np.clip(2.0 - 2.0 * np.sum(e * rest, axis=1)
                              / np.maximum(np.linalg.norm(rest, axis=1), 1e-12), 0.0, None))
    genuine = genuine[counts[owner] >= 2]
    return genuine, impostor[np.isfinite(impostor)]


def far_by_gallery_size(names: Sequence[str], embeddings: np.ndarray, threshold: float,
                        sizes: Sequence[int] = (10, 100, 1000), draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Per-stranger FAR at `threshold` when the gallery holds `size` people: each photo, as a stranger, against
    `draws` random galleries of `size` other people (sizes the gallery cannot reach are left out)."""
    e = np.asarray(embeddings, np.float64)
    owner, sums, _ = _centroids(names, e)
    people = sums.shape[0]
    per_person = _distance_to(e, sums)  # each photo to each person's mean embedding, as the door matches
    rng = np.random.default_rng(seed)
    out = {}
    for size in sizes:
        if size >= people:
            continue
        accepted = []
        for _ in range(draws):
            for i in range(len(e)):
                others = np.delete(np.arange(people), owner[i])
                pick = rng.choice(others, size, replace=False)
                accepted.append(per_person[i, pick].min() <= threshold)
        out[str(size)] = float(np.mean(accepted))
    return out


def calibrate(gallery: Gallery, target_far: float, plot_path: Path, current_threshold: float | None = None) -> dict:
    """Suggest `recognition.threshold` from the enrolled photos, so the choice rests on data, not a guess.

    Scores follow the door's rule (`door_scores`): per photo, the mean of the same person's
    other photos (genuine) and the closest other person (impostor: that photo as a stranger
    facing the rest of the gallery). The suggestion is the largest threshold (rounded
    down to 0.001, ready for config.yaml) whose per-stranger FAR is <= `target_far`. Writes a
    PNG with the two distance histograms and the ROC. Raises ValueError when the gallery
    cannot support it.

    Returns: people, people_with_pairs (2+ photos), photos, genuine_pairs, impostor_pairs (the
    number of genuine and impostor scores: one per photo),
    target_far, suggested_threshold, suggested_tar, suggested_far, current_threshold,
    current_tar, current_far (None without a current threshold), tar_at_far {"0.01", "0.001"}
    (unrounded operating points), eer, eer_threshold, far_resolution (1 / impostor_pairs:
    the FAR of one accepted impostor) and plot (the PNG's path).
    """
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target FAR must be between 0 and 1 (exclusive), got {target_far}")
    people = gallery.people()
    genuine, impostor = door_scores(gallery.names, gallery.embeddings)
    if genuine.size < 2:
        raise ValueError(
            f"calibration needs at least 2 photos of people with same-person photo pairs, found {genuine.size}: give "
            "some people 2 or more "
            "photos (images/<name>/*.jpg)")
    if impostor.size == 0:
        raise ValueError("calibration needs photos of at least 2 different people, found "
                         f"{len(people)} person(s)")
    roc = Roc.from_distances(genuine, impostor)
    best = roc.at_far(target_far)
    suggested = max(0.0, math.floor(best.threshold * 1000) / 1000)
    point = roc.at_threshold(suggested)
    if point.far > target_far and suggested > 0:  # floor landed exactly on the boundary impostor
        suggested = round(suggested - 0.001, 3)
        point = roc.at_threshold(suggested)
    current = roc.at_threshold(current_threshold) if current_threshold is not None else None
    eer, eer_threshold = roc.eer()
    lines = {f"suggested {suggested:.3f}": suggested}
    if current_threshold is not None:
        lines[f"current {current_threshold:.3f}"] = current_threshold
    plot_roc(roc, Path(plot_path), lines, f"Gallery calibration: {len(people)} people, {len(gallery.names)} photos")
    log.info("calibration: %d genuine and %d impostor pairs; threshold %.3f gives TAR %.4f at FAR %.5f",
             genuine.size, impostor.size, suggested, point.tar, point.far)
    return {
        "people": len(people),
        "people_with_pairs": sum(1 for n in people.values() if n >= 2),
        "photos": len(gallery.names),
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "target_far": target_far,
        "suggested_threshold": suggested,
        "suggested_tar": point.tar,
        "suggested_far": point.far,
        "current_threshold": current_threshold,
        "current_tar": current.tar if current is not None else None,
        "current_far": current.far if current is not None else None,
        "tar_at_far": roc.tar_at_far(),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "far_resolution": 1.0 / impostor.size,
        "far_per_stranger_by_gallery": far_by_gallery_size(gallery.names, gallery.embeddings, suggested),
        "plot": str(plot_path),
    }


def plot_roc(roc: Roc, path: Path, thresholds: dict[str, float], title: str) -> None:
    """PNG: genuine/impostor histograms with threshold lines, and TAR against log-scale FAR."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    hist, curve = fig.subplots(1, 2)
    top = max(roc.genuine[-1], roc.impostor[-1])
    bins = np.linspace(0.0, top * 1.02 + 1e-9, 60)
    hist.hist(roc.genuine, bins, density=True, alpha=0.6, color="tab:green", label=f"genuine ({roc.genuine.size})")
    hist.hist(roc.impostor, bins, density=True, alpha=0.6, color="tab:red", label=f"impostor ({roc.impostor.size})")
    colors = ["black", "tab:purple", "tab:orange", "tab:brown"]
    for (label, t), color in zip(thresholds.items(), colors):
        hist.axvline(t, color=color, linestyle="--", label=f"threshold {label}")
    hist.set_xlabel("L2 distance between embeddings")
    hist.set_ylabel("density")
    hist.legend(fontsize="small")

    _, tar, far = roc.curve()
    floor = 0.5 / roc.impostor.size  # FAR 0 cannot sit on a log axis: draw it half a step below the first impostor
    curve.step(np.maximum(far, floor), tar, where="post", color="tab:blue")
    marked = [0.9, tar[far > 0].min(initial=1.0)]
    for (label, t), color in zip(thresholds.items(), colors):
        p = roc.at_threshold(t)
        marked.append(p.tar)
        curve.plot(max(p.far, floor), p.tar, "o", color=color, label=f"{label}: TAR {p.tar:.3f}, FAR {p.far:.4f}")
    eer, _ = roc.eer()
    curve.plot(max(eer, floor), 1 - eer, "x", color="grey", label=f"EER {eer:.2%}")
    curve.set_xscale("log")
    curve.set_xlim(floor * 0.8, 1.0)
    curve.set_ylim(max(0.0, min(marked) - 0.02), 1.005)
    curve.set_xlabel(f"FAR (impostor pairs accepted; one pair = {1 / roc.impostor.size:.1e})")
    curve.set_ylabel("TAR (genuine pairs accepted)")
    curve.set_title("ROC")
    curve.grid(True, which="both", alpha=0.3)
    curve.legend(fontsize="small", loc="lower right")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# --- LFW-style pair evaluation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    first: Path
    second: Path
    same: bool
    fold: int  # 1-based


def read_pairs(pairs_file: Path, root: Path) -> tuple[list[Pair], int]:
    """(pairs, number of folds) from an LFW `pairs.txt`: header `folds n` (or just `n`: one fold), then per
    fold n lines `name i j` (same person) and n lines `name1 i name2 j` (different people)."""
    lines = [(no, line.split()) for no, line in enumerate(Path(pairs_file).read_text().splitlines(), 1)]
    lines = [(no, tokens) for no, tokens in lines if tokens]
    if not lines:
        raise ValueError(f"{pairs_file}: empty pairs file")
    header = lines[0][1]
    try:
        folds, per_half = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    except ValueError:
        folds, per_half = 0, 0
    if len(header) > 2 or folds < 1 or per_half < 1:
        raise ValueError(f"{pairs_file} line 1: expected a header `folds pairs_per_half`, got {' '.join(header)!r}")
    body = lines[1:]
    if len(body) != 2 * folds * per_half:
        raise ValueError(f"{pairs_file}: header says {folds} folds x 2 x {per_half} pairs = {2 * folds * per_half} "
                         f"lines, found {len(body)}")

    def image(name: str, index: str, no: int) -> Path:
        if not index.isdigit():
            raise ValueError(f"{pairs_file} line {no}: image number {index!r} is not a number")
        return Path(root) / name / f"{name}_{int(index):04d}.jpg"

    pairs = []
    for k, (no, t) in enumerate(body):
        fold, same = k // (2 * per_half) + 1, k % (2 * per_half) < per_half
        if same and len(t) == 3:
            pairs.append(Pair(image(t[0], t[1], no), image(t[0], t[2], no), True, fold))
        elif not same and len(t) == 4:
            pairs.append(Pair(image(t[0], t[1], no), image(t[2], t[3], no), False, fold))
        else:
            expected = "`name i j` (same person)" if same else "`name1 i name2 j` (different people)"
            raise ValueError(f"{pairs_file} line {no}: expected {expected} in fold {fold}, got {' '.join(t)!r}")
    return pairs, folds


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the most pairs right (same and <= it, or different and above it): a gap midpoint."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    # accept the first i pairs, i = 0..n: right = same ones among them + different ones among the rest
    right = np.concatenate([[0], np.cumsum(s)]) + (np.count_nonzero(~s) - np.concatenate([[0], np.cumsum(~s)]))
    possible = np.concatenate([[True], d[1:] > d[:-1], [True]])  # no threshold splits equal distances
    i = int(np.argmax(np.where(possible, right, -1)))
    if i == 0:
        return float(np.nextafter(d[0], -np.inf))
    if i == d.size:
        return float(d[-1])
    return float((d[i - 1] + d[i]) / 2)


def cross_validate(distances: np.ndarray, same: np.ndarray, fold_of: np.ndarray) -> tuple[list[float], list[float]]:
    """(accuracy, threshold) per fold, in fold order: each fold scored at the threshold best on all the others,
    or on itself when it is the only one."""
    accuracies, thresholds = [], []
    folds = np.unique(fold_of)
    for f in folds:
        test = fold_of == f
        train = ~test if folds.size > 1 else test
        t = best_threshold(distances[train], same[train])
        thresholds.append(t)
        accuracies.append(float(np.mean((distances[test] <= t) == same[test])))
    return accuracies, thresholds


@dataclass
class PairsEvaluation:
    """Everything `evaluate_pairs_detailed` measured; `summary()` is the dict the CLI prints."""

    pairs: int
    accuracy: float
    accuracy_std: float  # population std over folds
    tar_at_far: dict[str, float]
    eer: float
    eer_threshold: float
    threshold: float  # mean of the per-fold thresholds
    failed_images: int  # no face found (aligned on the central box) or unreadable
    unreadable_images: int  # subset of failed_images: no embedding at all
    unreadable_pairs: int  # pairs given MISSING_DISTANCE because of an unreadable image
    images: int
    folds: list[int]
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold_from_test_fold: bool  # one fold only: its threshold was tuned on the very pairs it is scored on
    distances: np.ndarray = field(repr=False)
    same: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {"pairs": self.pairs, "accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
                "tar_at_far": dict(self.tar_at_far), "eer": self.eer, "threshold": self.threshold,
                "failed_images": self.failed_images}


def evaluate_pairs(pairs_file: Path, root: Path, embed: EmbedFn, folds: list[int] | None = None,
                   plot_path: Path | None = None) -> dict:
    """LFW accuracy: exactly pairs, accuracy, accuracy_std, tar_at_far, eer, threshold, failed_images.

    See `evaluate_pairs_detailed` for the protocol and for the per-fold figures.
    """
    return evaluate_pairs_detailed(pairs_file, root, embed, folds, plot_path).summary()


def evaluate_pairs_detailed(pairs_file: Path, root: Path, embed: EmbedFn, folds: list[int] | None = None,
                            plot_path: Path | None = None) -> PairsEvaluation:
    """The standard LFW protocol on the selected folds (1-based; default all).

    Each fold is scored at the threshold that is best on the other selected folds, so no fold
    is scored with a threshold tuned on itself; with a single fold there is nothing else to
    tune on, it is tuned on itself (optimistic) and `threshold_from_test_fold` says so.
    Each image is embedded once. A pair with an unreadable image gets distance 2.0 (the
    maximum): it stays in the count, as the protocol scores all pairs, and is a false
    reject when same-person. TAR at FAR and EER are over all evaluated pairs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LFW images folder {root} does not exist")
    all_pairs, n_folds = read_pairs(pairs_file, root)
    selected = sorted(set(folds)) if folds else list(range(1, n_folds + 1))
    if not selected or any(not 1 <= f <= n_folds for f in selected):
        raise ValueError(f"folds must be between 1 and {n_folds} ({pairs_file} has {n_folds}), got {folds}")
    pairs = [p for p in all_pairs if p.fold in selected]

    images = list(dict.fromkeys(path for p in pairs for path in (p.first, p.second)))
    index = {path: i for i, path in enumerate(images)}
    log.info("LFW: %d pairs in fold(s) %s, %d images", len(pairs), selected, len(images))
    embeddings, ok = embed(images)
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.shape != (len(images), EMBEDDING_SIZE) or len(ok) != len(images):
        raise ValueError(f"embed returned {embeddings.shape} embeddings and {len(ok)} flags for {len(images)} images")
    unreadable = np.isnan(embeddings).any(axis=1)

    first = np.array([index[p.first] for p in pairs])
    second = np.array([index[p.second] for p in pairs])
    same = np.array([p.same for p in pairs])
    fold_of = np.array([p.fold for p in pairs])
    missing = unreadable[first] | unreadable[second]
    distances = np.linalg.norm(embeddings[first].astype(np.float64) - embeddings[second], axis=1)
    distances = np.where(missing, MISSING_DISTANCE, distances)

    accuracies, thresholds = cross_validate(distances, same, fold_of)
    if len(selected) == 1:
        log.warning("only fold %d selected: its threshold is tuned on its own pairs, so the accuracy is optimistic",
                    selected[0])

    roc = Roc.from_distances(distances[same], distances[~same])
    eer, eer_threshold = roc.eer()
    result = PairsEvaluation(
        pairs=len(pairs), accuracy=float(np.mean(accuracies)), accuracy_std=float(np.std(accuracies)),
        tar_at_far=roc.tar_at_far(), eer=eer, eer_threshold=eer_threshold, threshold=float(np.mean(thresholds)),
        failed_images=sum(1 for flag in ok if not flag), unreadable_images=int(unreadable.sum()),
        unreadable_pairs=int(missing.sum()), images=len(images), folds=selected, fold_accuracies=accuracies,
        fold_thresholds=thresholds, threshold_from_test_fold=len(selected) == 1, distances=distances, same=same)
    if result.unreadable_pairs:
        log.warning("LFW: %d unreadable image(s); their %d pair(s) were scored at distance %.1f",
                    result.unreadable_images, result.unreadable_pairs, MISSING_DISTANCE)
    if plot_path is not None:
        plot_roc(roc, Path(plot_path), {f"{result.threshold:.3f} (mean of folds)": result.threshold},
                 f"{Path(pairs_file).name}: {len(pairs)} pairs, accuracy {result.accuracy:.2%} "
                 f"± {result.accuracy_std:.2%}")
    return result


RECORD_SIZE = 2 * EMBEDDING_SIZE + 2  # plain embedding, mirrored-chip embedding (NaN: not encoded), faces, dominance
SOLE_FACE = 1e6  # the dominance of the only face in a photo


@dataclass
class PhotoRecords:
    """What an LFW-style photo gives, per photo: the face nearest the centre, embedded as is and, when
    asked for, mirrored.

    `faces` is how many faces were detected (0: aligned on the central box instead) and
    `dominance` the area of the centre face over the largest other face (SOLE_FACE when alone),
    so the enrollment rules (refuse two faces, or take a dominant one) are judged without
    detecting again. Unreadable photos have NaN rows and ok False.
    """

    plain: np.ndarray  # (N, 128)
    flipped: np.ndarray  # (N, 128): the horizontally mirrored chip (NaN unless records were asked to mirror)
    faces: np.ndarray  # (N,) int
    dominance: np.ndarray  # (N,) float
    ok: list[bool]  # a face was detected and the photo was readable

    def embeddings(self, flip: bool) -> np.ndarray:
        """Unit embeddings: the plain ones, or the normalised mean of plain and mirrored (flip averaging)."""
        if not flip:
            return self.plain
        if np.isnan(self.flipped[~np.isnan(self.plain).any(axis=1)]).any():
            raise RuntimeError("flip averaging needs records made with mirrored=True")
        mean = self.plain + self.flipped
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def make_lfw_records(cfg: Config, detector: FaceDetector | Sequence[FaceDetector], encoder: FaceEncoder,
                     cache: EmbeddingCache | None = None,
                     batch_size: int = LFW_BATCH) -> Callable[..., PhotoRecords]:
    """A `records(paths, mirrored=False) -> PhotoRecords` for LFW-style crops centred on their subject.

    Per photo: the detected face closest to the image centre (others at the edges are
    bystanders); with no face found, the 5-point aligner on the central 44% box (110 px of
    LFW's 250), flagged not ok. The chips are encoded `batch_size` photos at a time, and their
    mirror images too only when `mirrored` (flip averaging; otherwise `flipped` is NaN: encoding
    them doubled FaceNet's work for nothing). With a cache, each photo's record is stored by file
    content under the cache's key plus this pipeline's settings, so a rerun detects and encodes
    nothing; a record cached without its mirror is made again when a mirrored one is asked for.
    Given several detectors, that many photos are searched at once (dlib releases the GIL; a
    detector is not thread-safe, so each thread takes its own): the search is most of the cost.
    """
    searchers: queue.SimpleQueue = queue.SimpleQueue()
    for d in detector if isinstance(detector, Sequence) else [detector]:
        searchers.put(d)
    pool = ThreadPoolExecutor(searchers.qsize(), thread_name_prefix="lfw-search") if searchers.qsize() > 1 else None
    plain = dataclasses.replace(cfg, detection=dataclasses.replace(cfg.detection, dominant_ratio=0.0))
    settings = f"{chip_settings(plain, encoder)}:c{CENTRAL_BOX:.3f}"  # records keep every face: no enrollment rule
    store_cache = EmbeddingCache(cache.path, f"{cache.key}|lfw-record:{settings}", RECORD_SIZE) if cache else None

    def chip(path: Path) -> tuple[np.ndarray, int, float] | PhotoError:
        """The chip of `path`'s subject, its face count and its dominance; or the reason it is unusable."""
        searcher = searchers.get()
        try:
            return _chip(searcher, path)
        except PhotoError as exc:
            return exc
        finally:
            searchers.put(searcher)

    def _chip(detector: FaceDetector, path: Path) -> tuple[np.ndarray, int, float]:
        rgb = load_rgb(path, cfg.photo.max_pixels)
        h, w = rgb.shape[:2]
        faces = detector.photo_faces(rgb)
        if faces:
            centres = np.array([[f.box.x + f.box.w / 2, f.box.y + f.box.h / 2] for f in faces])
            i = int(np.argmin(np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)))
            others = [f.box.w * f.box.h for j, f in enumerate(faces) if j != i]
            area = faces[i].box.w * faces[i].box.h
            return faces[i].chip, len(faces), area / max(others) if others and max(others) else SOLE_FACE
        side = CENTRAL_BOX * min(h, w)
        left, top = round((w - side) / 2), round((h - side) / 2)
        rect = dlib.rectangle(left, top, left + round(side) - 1, top + round(side) - 1)
        return detector.align(rgb, rect).chip, 0, SOLE_FACE

    def records(paths: list[Path], mirrored: bool = False) -> PhotoRecords:
        paths = [Path(p) for p in paths]
        out = np.full((len(paths), RECORD_SIZE), np.nan, np.float32)
        by_digest: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            try:
                if not stat.S_ISREG(path.stat().st_mode):  # reading a FIFO or a device would never end
                    log.warning("LFW image %s is not a regular file", path)
                    continue
                by_digest.setdefault(sha256_file(path), []).append(i)
            except OSError as exc:
                log.warning("LFW image %s cannot be read (%s)", path, exc.strerror or exc)
        known = store_cache.get(list(by_digest)) if store_cache else {}

        def store(sha: str, value: np.ndarray | str) -> None:
            if isinstance(value, np.ndarray):
                out[by_digest[sha]] = value

        todo = []
        for sha in by_digest:
            if sha in known and not (mirrored and isinstance(known[sha], np.ndarray)
                                     and np.isnan(known[sha][EMBEDDING_SIZE:2 * EMBEDDING_SIZE]).any()):
                store(sha, known[sha])
            else:
                todo.append(sha)
        log.info("LFW: %d images, %d from the cache, %d to detect and encode", len(paths), len(by_digest) - len(todo),
                 len(todo))
        with progress_bar("eval: detect and encode", len(todo), unit="photo") as bar:
            for start in range(0, len(todo), batch_size):
                chips, digests, info, rows = [], [], [], []
                shas = todo[start:start + batch_size]
                batch_paths = [paths[by_digest[sha][0]] for sha in shas]
                found = pool.map(chip, batch_paths) if pool else map(chip, batch_paths)
                for sha, path, result in zip(shas, batch_paths, found):
                    if isinstance(result, PhotoError):
                        log.warning("LFW image %s is unusable: %s", path, result)
                        rows.append((sha, None, str(result)))
                        continue
                    c, n, dominance = result
                    if not n:
                        log.info("LFW image %s: no face found, aligned on the central box", path)
                    chips.append(c)
                    digests.append(sha)
                    info.append((n, dominance))
                if chips:
                    batch = np.stack(chips)
                    emb = encoder.encode(np.concatenate([batch, batch[:, :, ::-1]]) if mirrored else batch)
                    unmirrored = np.full(EMBEDDING_SIZE, np.nan)
                    for k, (sha, (n, dominance)) in enumerate(zip(digests, info)):
                        mirror = emb[len(chips) + k] if mirrored else unmirrored
                        record = np.concatenate([emb[k], mirror, [n, dominance]]).astype(np.float32)
                        store(sha, record)
                        rows.append((sha, record, None))
                if store_cache is not None:
                    store_cache.put(rows)
                bar.update(len(shas))
                log.debug("LFW: encoded %d/%d", min(start + batch_size, len(todo)), len(todo))
        faces = np.nan_to_num(out[:, 2 * EMBEDDING_SIZE], nan=0.0).astype(int)
        return PhotoRecords(out[:, :EMBEDDING_SIZE], out[:, EMBEDDING_SIZE:2 * EMBEDDING_SIZE], faces,
                            out[:, 2 * EMBEDDING_SIZE + 1], [bool(f > 0) for f in faces])

    return records


def make_lfw_embedder(cfg: Config, detector: FaceDetector, encoder: FaceEncoder,
                      cache: EmbeddingCache | None = None, batch_size: int = LFW_BATCH, flip: bool = False) -> EmbedFn:
    """An `embed(paths) -> (embeddings, ok)` over `make_lfw_records` (see there); `flip` averages
    each chip's embedding with its mirror image's (and only then are mirror images encoded)."""
    records = make_lfw_records(cfg, detector, encoder, cache, batch_size)

    def embed(paths: list[Path]) -> tuple[np.ndarray, list[bool]]:
        r = records(paths, mirrored=flip)
        return r.embeddings(flip), r.ok

    return embed


# --- open-set identification: the door's own rule on an LFW-style folder ------------------------------------------

GALLERY_SIZES = (10, 100, 1000)  # the per-stranger FAR is reported as the gallery grows to these


@dataclass(frozen=True)
class OpenSetSlice:
    """One draw of the door-at-scale protocol: who is enrolled (from which photos), who probes, who is a stranger."""

    seed: int
    enrolled: list[str]  # people enrolled, in draw order (the first n are this slice's people)
    enroll_photos: list[list[Path]]  # K photos of each enrolled person
    probe_photos: list[list[Path]]  # up to M other photos of each of the first n enrolled people
    strangers: list[list[Path]]  # M = 1: one photo of a single-photo person; M > 1: up to M photos of a
    # person with 2+ photos who is enrolled nowhere in the slice


def lfw_people(root: Path) -> dict[str, list[Path]]:
    """Person -> sorted photos, from an LFW-style `root/<name>/*.jpg` folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LFW images folder {root} does not exist")
    people = {}
    for d in sorted(root.iterdir()):
        if d.is_dir():
            photos = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if photos:
                people[d.name] = photos
    return people


def draw_slice(people: dict[str, list[Path]], n: int, seed: int, gallery_max: int = 0,
               strangers: int = 0, enroll: int = 1, frames: int = 1) -> OpenSetSlice:
    """Seeded random slice: `max(n, gallery_max)` people with `enroll`+1 or more photos enrolled from `enroll`
    random photos each (the gallery may stop short of `gallery_max` when fewer people have that many), the
    first `n` of them probed with up to `frames` other random photos, and `max(n, strangers)` strangers
    (as many as there are, at least n): single-photo people with one photo each when `frames` is 1, else
    people with 2+ photos enrolled nowhere, with up to `frames` photos each. Enroll 1 and frames 1 draw the
    same slice as before these options existed."""
    rng = np.random.default_rng(seed)
    eligible = [p for p, photos in people.items() if len(photos) >= enroll + 1]
    k = max(n, min(gallery_max, len(eligible)))
    if len(eligible) < k:
        raise ValueError(f"the folder has {len(eligible)} people with {enroll + 1}+ photos; the slice needs {k}")
    enrolled = [eligible[i] for i in rng.permutation(len(eligible))[:k]]
    enroll_photos, probe = [], []
    for i, person in enumerate(enrolled):
        photos = people[person]
        picked = rng.choice(len(photos), min(len(photos), enroll + frames), replace=False)
        enroll_photos.append([photos[j] for j in picked[:enroll]])
        if i < n:
            probe.append([photos[j] for j in picked[enroll:]])
    taken = set(enrolled)
    pool = [p for p, photos in people.items() if p not in taken and (len(photos) == 1 if frames == 1
                                                                       else len(photos) >= 2)]
    s = max(n, min(strangers, len(pool)))
    if len(pool) < s:
        raise ValueError(f"the folder has {len(pool)} people to be strangers ("
                         f"{'one photo' if frames == 1 else '2+ photos'}, not enrolled); the slice needs {s}")
    stranger = []
    for i in rng.permutation(len(pool))[:s]:
        photos = people[pool[i]]
        stranger.append([photos[j] for j in sorted(rng.choice(len(photos), min(len(photos), frames),
                                                              replace=False))])
    return OpenSetSlice(seed, enrolled, enroll_photos, probe, stranger)


def best_two(per_person: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe, from its (probes, people) distances: (index of the closest person, its distance, the
    distance to the second closest)."""
    d = np.where(np.isnan(per_person), MISSING_DISTANCE, per_person).astype(np.float64)
    order = np.argsort(d, axis=1)[:, :2]
    rows = np.arange(len(d))
    second = d[rows, order[:, 1]] if d.shape[1] > 1 else np.full(len(d), np.inf)
    return order[:, 0], d[rows, order[:, 0]], second


def open_set_counts(owner: np.ndarray, best: np.ndarray, d1: np.ndarray, d2: np.ndarray, stranger_d1: np.ndarray,
                    stranger_d2: np.ndarray, threshold: float, margin: float) -> dict:
    """The door's rule (closest person, under the threshold, `margin` ahead of the second) applied to probes
    whose true gallery index is `owner` (-1: not enrolled) and to strangers."""
    accept = (d1 <= threshold) & (d2 - d1 >= margin)
    stranger_accept = (stranger_d1 <= threshold) & (stranger_d2 - stranger_d1 >= margin)
    return {"threshold": round(float(threshold), 4), "recognised": int(np.sum(accept & (best == owner))),
            "wrong_person": int(np.sum(accept & (best != owner))), "strangers_accepted": int(stranger_accept.sum())}


def zero_stranger_threshold(stranger_d1: np.ndarray, stranger_d2: np.ndarray, margin: float) -> float:
    """The largest threshold (to 0.001) that accepts no stranger under the margin rule."""
    passing = stranger_d1[(stranger_d2 - stranger_d1) >= margin]
    if passing.size == 0:
        return MISSING_DISTANCE
    return math.floor(float(np.nextafter(passing.min(), -np.inf)) * 1000) / 1000


def fuse(embeddings: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """One probe per group of consecutive rows (`groups`: rows per probe): the normalised mean of its unit
    embeddings, as the decider fuses a track's encodings. Unreadable rows (NaN) are left out; a group with
    none left is NaN."""
    out = np.full((len(groups), embeddings.shape[1]), np.nan, np.float64)
    start = 0
    for i, size in enumerate(groups):
        rows = embeddings[start:start + size]
        rows = rows[~np.isnan(rows).any(axis=1)]
        start += size
        if len(rows):
            total = rows.astype(np.float64).sum(axis=0)
            out[i] = total / max(float(np.linalg.norm(total)), 1e-12)
    return out


@dataclass
class _Gallery:
    """The minimal gallery a `Recognizer` is built from."""

    names: list[str]
    photos: list
    embeddings: np.ndarray


def _flat(groups: list[list[Path]]) -> tuple[list[Path], list[int]]:
    return [p for g in groups for p in g], [len(g) for g in groups]


def _votes(recognizer, photos: np.ndarray, sizes: Sequence[int], required: int, window: int) -> np.ndarray:
    """Per probe, the gallery index its last `window` photos name at least `required` times (each photo
    under the door's rule, as one vote), or -1."""
    per = recognizer.distances(np.nan_to_num(photos, nan=0.0))
    best, d1, d2 = best_two(per)
    named = np.where((d1 <= recognizer.threshold) & (d2 - d1 >= recognizer.margin), best, -1)
    named[np.isnan(photos).any(axis=1)] = -1
    out, start = np.full(len(sizes), -1), 0
    for i, size in enumerate(sizes):
        last = named[start:start + size][-window:]
        start += size
        values, counts = np.unique(last[last >= 0], return_counts=True)
        if len(values) and counts.max() >= required:
            out[i] = values[np.argmax(counts)]
    return out


def evaluate_open_set(records: Callable[..., PhotoRecords], root: Path, n: int, seeds: Sequence[int],
                      threshold: float, margin: float = 0.0, flip: bool = False, dominant_ratio: float = 0.0,
                      gallery_sizes: Sequence[int] = GALLERY_SIZES, enroll: int = 1, frames: int = 1,
                      voting: tuple[int, int] | None = None) -> dict:
    """Door-at-scale: per seeded slice, `n` people enrolled from `enroll` photos each, probed with `frames` other
    photos of theirs fused into one embedding (a stand-in for a track's encodings), and `n` strangers likewise,
    matched by the door's own `Recognizer` (its per-person rule, threshold and margin).

    An enrollment photo with more than one face is refused, as the gallery refuses it, unless
    `dominant_ratio` > 0 and the centre face is at least that many times the area of every other
    face; a person with no photo left stays out of the gallery and their probe can only be missed or named
    wrongly. Reported per slice at `threshold` and at the largest zero-stranger threshold; the
    first slice also reports the strangers accepted as the gallery grows to `gallery_sizes` (a size the
    folder cannot fill with people of `enroll`+1 photos is replaced by everyone it has). With `voting`
    (required, window) and `frames` >= required, a probe's photos also vote as a track's encodings do, and
    `door` counts the decider's rule: the votes and the fused embedding name the same person.
    """
    if enroll < 1 or frames < 1:
        raise ValueError("--enroll and --probe-frames must be at least 1")
    people = lfw_people(root)
    grow = max(gallery_sizes, default=0)
    out = {"people": n, "threshold": threshold, "margin": margin, "flip": flip, "dominant_ratio": dominant_ratio,
           "enroll": enroll, "probe_frames": frames, "slices": []}
    votes_on = voting is not None and frames >= voting[0]
    for k, seed in enumerate(seeds):
        sl = draw_slice(people, n, seed, grow if k == 0 else 0, grow if k == 0 else 0, enroll, frames)
        enroll_paths, _ = _flat(sl.enroll_photos)
        probe_paths, probe_sizes = _flat(sl.probe_photos)
        stranger_paths, stranger_sizes = _flat(sl.strangers)
        r_enroll, r_probe, r_stranger = (records(paths, mirrored=flip)
                                         for paths in (enroll_paths, probe_paths, stranger_paths))
        usable = ~np.isnan(r_enroll.plain).any(axis=1) & np.array(r_enroll.ok)
        dominant = r_enroll.dominance >= dominant_ratio if dominant_ratio > 0 else np.zeros(len(usable), bool)
        usable &= (r_enroll.faces == 1) | dominant
        enroll_e = r_enroll.embeddings(flip)
        person_of = np.repeat(np.arange(len(sl.enrolled)), [len(g) for g in sl.enroll_photos])
        probe_1, stranger_1 = r_probe.embeddings(flip), r_stranger.embeddings(flip)
        probes, strangers = fuse(probe_1, probe_sizes), fuse(stranger_1, stranger_sizes)

        def recognizer_of(size: int, usable=usable, person_of=person_of, enroll_e=enroll_e) -> Recognizer:
            """The first `size` enrolled people (their usable photos), named by their draw index."""
            rows = np.flatnonzero(usable & (person_of < size))
            names = [f"{person_of[r]:06d}" for r in rows]
            return Recognizer(_Gallery(names, list(rows), enroll_e[rows]), threshold, margin)

        recognizer = recognizer_of(n)
        index_of = {int(p): i for i, p in enumerate(recognizer.people)}
        owner = np.array([index_of.get(i, -1) for i in range(len(probes))])
        best, d1, d2 = best_two(recognizer.distances(np.nan_to_num(probes, nan=0.0)))
        sb, s1, s2 = best_two(recognizer.distances(np.nan_to_num(strangers[:n], nan=0.0)))
        zero = zero_stranger_threshold(s1, s2, margin)
        entry = {
            "seed": seed, "refused_enrollments": int(n - len(recognizer.people)),
            "enrollment_photos": int(np.sum(usable & (person_of < n))),
            "probe_photos_fused": round(float(np.mean(probe_sizes)), 2),
            "stranger_photos_fused": round(float(np.mean(stranger_sizes[:n])), 2),
            "at_threshold": open_set_counts(owner, best, d1, d2, s1, s2, threshold, margin),
            "at_zero_strangers": open_set_counts(owner, best, d1, d2, s1, s2, zero, margin),
        }
        if votes_on:
            required, window = voting
            n_stranger = sum(stranger_sizes[:n])
            fused = np.where((d1 <= threshold) & (d2 - d1 >= margin), best, -1)
            stranger_fused = np.where((s1 <= threshold) & (s2 - s1 >= margin), sb, -1)
            votes = _votes(recognizer, probe_1, probe_sizes, required, window)
            stranger_votes = _votes(recognizer, stranger_1[:n_stranger], stranger_sizes[:n], required, window)
            for key, named, stranger_named in (("votes", votes, stranger_votes),
                                               ("door", np.where(votes == fused, votes, -1),
                                                np.where(stranger_votes == stranger_fused, stranger_votes, -1))):
                entry[key] = {"recognised": int(np.sum((named >= 0) & (named == owner))),
                              "wrong_person": int(np.sum((named >= 0) & (named != owner))),
                              "strangers_accepted": int(np.sum(stranger_named >= 0))}
        out["slices"].append(entry)
        if k == 0 and gallery_sizes:
            growth = {}
            sizes = [s for s in gallery_sizes if s <= len(sl.enrolled)]
            if max(gallery_sizes) > len(sl.enrolled):  # everyone the folder has with enroll+1 photos
                sizes.append(len(sl.enrolled))
            for size in sizes:
                grown = recognizer_of(size)
                _, g1, g2 = best_two(grown.distances(np.nan_to_num(strangers, nan=0.0)))
                accepted = (g1 <= threshold) & (g2 - g1 >= margin)
                growth[str(size)] = {"enrolled": len(grown.people), "strangers": int(len(strangers)),
                                     "accepted": int(accepted.sum()), "far_per_stranger": float(accepted.mean())}
            out["gallery_growth"] = growth
        log.info("open set, seed %d: %s", seed, out["slices"][-1])
    totals = {key: sum(s["at_threshold"][key] for s in out["slices"])
              for key in ("recognised", "wrong_person", "strangers_accepted")}
    out["total_at_threshold"] = totals | {"probes": n * len(out["slices"])}
    return out
