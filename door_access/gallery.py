"""The enrolled people: `images/<name>.<ext>` and `images/<name>/*.<ext>`, turned into embeddings.

Embeddings are cached in SQLite keyed by the photo's content hash and the encoder's
identity, so a restart re-encodes only new or changed photos. A photo that cannot be used
is listed with its reason (and that verdict is cached too); it never stops the others.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config
from .detection import FaceDetector
from .core import EMBEDDING_SIZE
from .facenet import FaceEncoder
from .files import sha256_file
from .photos import PhotoError, is_photo, load_rgb

log = logging.getLogger(__name__)

ENCODE_BATCH = 32


@dataclass(frozen=True)
class SkippedPhoto:
    path: Path
    reason: str


@dataclass
class Gallery:
    """One row per usable photo: `embeddings[i]` is a photo of `names[i]`."""

    names: list[str] = field(default_factory=list)
    photos: list[Path] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_SIZE), np.float32))
    skipped: list[SkippedPhoto] = field(default_factory=list)
    encoded: int = 0  # photos run through the model in this load (the rest came from the cache)

    def people(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.names:
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))


def scan_images(images_dir: Path) -> tuple[list[tuple[str, Path]], list[SkippedPhoto]]:
    """(name, photo) pairs found in `images_dir`, and the entries that are not photos."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist")
    found, skipped = [], []
    candidates = []
    for entry in sorted(images_dir.iterdir()):
        if entry.is_dir():
            candidates += [(entry.name, photo) for photo in sorted(entry.iterdir())]
        else:
            candidates.append((entry.stem, entry))
    for name, photo in candidates:
        if photo.name.startswith(".") or name.startswith("."):
            continue
        problem = _photo_problem(photo)
        if problem:
            skipped.append(SkippedPhoto(photo, problem))
        else:
            found.append((name, photo))
    return found, skipped


def _photo_problem(path: Path) -> str | None:
    """Why `path` cannot be an enrollment photo before it is even read, or None."""
    if not is_photo(path):
        return "not a photo (expected .jpg, .jpeg, .png, .bmp or .webp)"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):  # reading a FIFO or a device would never end
        return "not a regular file"
    return None


def chip_settings(cfg: Config, encoder: FaceEncoder) -> str:
    """What a photo's embedding depends on besides its bytes: the model and the photo-detection settings."""
    d = cfg.detection
    return (f"{encoder.weights_id}:m{d.margin}:s{d.photo_max_side}:u{d.photo_upsample}:{d.model}:f{d.min_face}"
            f":p{cfg.photo.max_pixels}" + (f":d{d.dominant_ratio}" if d.dominant_ratio else ""))


class EmbeddingCache:
    """SQLite table: (photo sha256, encoder key) -> embedding, or the reason the photo was unusable."""

    def __init__(self, path: Path, encoder_key: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.key = encoder_key
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (sha256 TEXT, encoder TEXT, embedding BLOB, reason TEXT,"
                " PRIMARY KEY (sha256, encoder))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def get(self, digests: list[str]) -> dict[str, np.ndarray | str]:
        out: dict[str, np.ndarray | str] = {}
        with self._connect() as db:
            for sha, blob, reason in db.execute(
                "SELECT sha256, embedding, reason FROM embeddings WHERE encoder = ?", (self.key,)
            ):
                out[sha] = np.frombuffer(blob, np.float32).copy() if blob is not None else reason
        wanted = set(digests)
        return {k: v for k, v in out.items() if k in wanted}

    def put(self, rows: list[tuple[str, np.ndarray | None, str | None]]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [(sha, self.key, None if e is None else np.asarray(e, np.float32).tobytes(), reason)
                 for sha, e, reason in rows],
            )


class GalleryBuilder:
    """Builds a `Gallery` from the images folder, encoding only what the cache lacks."""

    def __init__(self, cfg: Config, detector: FaceDetector, encoder: FaceEncoder):
        self.cfg = cfg
        self.detector = detector
        self.encoder = encoder
        self.cache = EmbeddingCache(cfg.path("cache") / "embeddings.sqlite", chip_settings(cfg, encoder))

    def build(self, images_dir: Path) -> Gallery:
        found, skipped = scan_images(images_dir)
        digests = {}
        for _, photo in found:
            try:
                digests[photo] = sha256_file(photo)
            except OSError as exc:
                skipped.append(SkippedPhoto(photo, f"cannot read file ({exc.strerror or exc})"))
        known = self.cache.get(list(digests.values()))
        todo = {p: d for p, d in digests.items() if d not in known}
        fresh = self._encode(todo)
        known.update(fresh)

        gallery = Gallery(skipped=skipped, encoded=len(todo))
        rows = []
        for name, photo in found:
            value = known.get(digests.get(photo))
            if value is None:
                continue
            if isinstance(value, str):
                gallery.skipped.append(SkippedPhoto(photo, value))
            else:
                gallery.names.append(name)
                gallery.photos.append(photo)
                rows.append(value)
        if rows:
            gallery.embeddings = np.stack(rows).astype(np.float32)
        gallery.skipped.sort(key=lambda s: str(s.path))
        for s in gallery.skipped:
            log.warning("skipped photo %r: %s", str(s.path), s.reason)
        log.info("gallery: %d people, %d photos (%d encoded now), %d skipped",
                 len(gallery.people()), len(gallery.names), len(todo), len(gallery.skipped))
        return gallery

    def _encode(self, todo: dict[Path, str]) -> dict[str, np.ndarray | str]:
        """Detect and encode photos not in the cache; store each outcome in it."""
        results: dict[str, np.ndarray | str] = {}
        chips, chip_digests = [], []
        for photo, sha in todo.items():
            if sha in results:  # the same file under two names
                continue
            try:
                chips.append(self.face_chip(photo))
                chip_digests.append(sha)
            except PhotoError as exc:
                results[sha] = str(exc)
        rows = [(sha, None, reason) for sha, reason in results.items()]
        for start in range(0, len(chips), ENCODE_BATCH):
            emb = self.encoder.encode(np.stack(chips[start:start + ENCODE_BATCH]))
            for sha, e in zip(chip_digests[start:start + ENCODE_BATCH], emb):
                results[sha] = e
                rows.append((sha, e, None))
        self.cache.put(rows)
        return results

    def face_chip(self, photo: Path) -> np.ndarray:
        """The one aligned face chip of an enrollment photo, or `PhotoError` saying why not."""
        rgb = load_rgb(photo, self.cfg.photo.max_pixels)
        faces = self.detector.photo_faces(rgb)
        if not faces:
            raise PhotoError("no face found")
        if len(faces) > 1:
            faces = self._dominant(photo, faces)
        box = faces[0].box
        if min(box.w, box.h) < self.cfg.detection.min_face:
            limit = self.cfg.detection.min_face
            raise PhotoError(f"face too small ({box.w}x{box.h} px; detection.min_face is {limit})")
        return faces[0].chip

    def _dominant(self, photo: Path, faces: list) -> list:
        """The one face of a photo with bystanders: the largest, if `detection.dominant_ratio` allows it."""
        ratio = self.cfg.detection.dominant_ratio
        faces = sorted(faces, key=lambda f: f.box.w * f.box.h, reverse=True)
        main, second = faces[0].box, faces[1].box
        if ratio <= 0 or main.w * main.h < ratio * second.w * second.h:
            raise PhotoError(f"{len(faces)} faces found; an enrollment photo must show exactly one person")
        log.warning("photo %r: %d faces found; enrolling the largest (%dx%d px, %.1fx the next)", str(photo),
                    len(faces), main.w, main.h, main.w * main.h / max(1, second.w * second.h))
        return faces[:1]



def folder_signature(images_dir: Path) -> tuple:
    """What changes when a photo is added, removed, replaced or edited: names, sizes, mtimes."""
    found, skipped = scan_images(images_dir)
    sig = []
    for _, p in found + [(None, s.path) for s in skipped]:
        try:
            st = p.stat()
            sig.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((str(p), -1, -1))
    return tuple(sorted(sig))


class GalleryWatcher:
    """Polls the images folder and rebuilds the gallery when it changes (hot enroll).

    Polling the folder's listing every few seconds costs a few stat calls and works on every
    filesystem; the rebuild itself reuses the embedding cache, so only new photos are encoded.
    """

    def __init__(self, builder: GalleryBuilder, images_dir: Path, poll_s: float,
                 on_change: Callable[[Gallery], None]):
        self.builder = builder
        self.images_dir = images_dir
        self.poll_s = poll_s
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature = folder_signature(images_dir)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gallery-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                signature = folder_signature(self.images_dir)
                if signature == self._signature:
                    continue
                self._signature = signature
                log.info("images folder changed: reloading the gallery")
                self.on_change(self.builder.build(self.images_dir))
            except Exception:  # a bad moment (folder renamed mid-scan...) must not end hot enroll
                log.exception("gallery reload failed; keeping the previous gallery")
