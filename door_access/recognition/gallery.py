"""The enrolled people: `images/<name>.<ext>` and `images/<name>/*.<ext>`, turned into embeddings.

Embeddings are cached in SQLite keyed by the photo's content hash and the encoder's
identity, so a restart re-encodes only new or changed photos. A photo that cannot be used
is listed with its reason (and that verdict is cached too); it never stops the others.
The cache holds face templates: it is created 0600 in a 0700 folder, and the rows of photos
no longer in the folder are deleted (overwritten) at each build and at each poll that sees a
photo go, so removing a person's photos removes their templates too.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from door_access.config import Config
from door_access.core import EMBEDDING_SIZE
from door_access.faces.photos import PhotoError, is_photo, load_rgb
from door_access.files import PRIVATE_FILE, private_dir, private_file, sha256_file
from door_access.recognition.enroll_prompt import name_problem
from door_access.recognition.recognizer import Recognizer

if TYPE_CHECKING:  # the models are handed in: scanning the folder and the cache (`forget`) loads neither
    from door_access.faces.detection import FaceDetector
    from door_access.faces.facenet import FaceEncoder

log = logging.getLogger(__name__)

ENCODE_BATCH = 32
_SQL_VARS = 900  # keys per SELECT: under SQLite's oldest limit on bound variables (999)


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
    """(name, photo) pairs found in `images_dir`, and the entries that are not photos or whose name
    cannot be a person's (`name_problem`: skipped with the reason, so the door keeps running)."""
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
        problem = name_problem(name) or _photo_problem(photo)
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
    """SQLite table: (photo sha256, encoder key) -> embedding, or the reason the photo was unusable.

    Only a cache: a file that is corrupt, not SQLite, or laid out by something else is moved aside
    (`embeddings.sqlite.bad-<time>`) with one warning and rebuilt, so the photos are simply
    re-encoded; it never stops the app. A failure later on is a cache miss (get) or a lost
    entry (put), with one warning.
    """

    COLUMNS = ["sha256", "encoder", "embedding", "reason"]

    def __init__(self, path: Path, encoder_key: str, width: int = EMBEDDING_SIZE):
        private_dir(path.parent)
        self.width = width  # float32 values per stored row: a row of another length is damaged
        self.path = path
        self.key = encoder_key
        self._warned = False
        try:
            self._create()
        except sqlite3.DatabaseError as exc:  # not a database, corrupt, or someone else's table
            aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("embedding cache %s is unusable (%s); moved aside to %s and rebuilt: photos are re-encoded",
                        path, exc, aside.name)
            self._warned = True
            for suffix in ("", "-wal", "-shm", "-journal"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + suffix))
                    os.chmod(aside.with_name(aside.name + suffix), PRIVATE_FILE)  # templates, maybe from an old 0644
            self._create()

    def _create(self) -> None:
        private_file(self.path)  # 0600 before SQLite opens it: its -journal gets the same mode
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (sha256 TEXT, encoder TEXT, embedding BLOB, reason TEXT,"
                " PRIMARY KEY (sha256, encoder))"
            )
            columns = [row[1] for row in db.execute("PRAGMA table_info(embeddings)")]
            if columns != self.COLUMNS:
                raise sqlite3.DatabaseError(f"foreign layout: columns {columns}")
            db.execute("SELECT count(*) FROM embeddings").fetchone()  # reads the pages: finds most corruption

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            log.warning("embedding cache %s: cannot %s (%s); photos are re-encoded", self.path, what, exc)
            self._warned = True

    def get(self, digests: list[str]) -> dict[str, np.ndarray | str]:
        """The cached outcome of each of `digests` that has one, read by key (not the whole table)."""
        out: dict[str, np.ndarray | str] = {}
        wanted = list(dict.fromkeys(digests))
        try:
            with closing(self._connect()) as db:
                for start in range(0, len(wanted), _SQL_VARS):
                    chunk = wanted[start:start + _SQL_VARS]
                    marks = ",".join("?" * len(chunk))
                    for sha, blob, reason in db.execute(
                        f"SELECT sha256, embedding, reason FROM embeddings WHERE encoder = ? AND sha256 IN ({marks})",
                        (self.key, *chunk),
                    ):
                        if blob is not None and len(blob) != self.width * 4:
                            continue  # a damaged entry: encode the photo again
                        out[sha] = np.frombuffer(blob, np.float32).copy() if blob is not None else reason
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return {}
        return out

    def put(self, rows: list[tuple[str, np.ndarray | None, str | None]]) -> None:
        try:
            with closing(self._connect()) as db, db:
                db.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                    [(sha, self.key, None if e is None else np.asarray(e, np.float32).tobytes(), reason)
                     for sha, e, reason in rows],
                )
        except sqlite3.Error as exc:
            self._failed("write", exc)

    def prune(self, keep: set[str]) -> int:
        """Delete every row (of any encoder) whose photo hash is not in `keep`; how many were deleted."""
        try:
            return prune_cache(self.path, keep)
        except sqlite3.Error as exc:
            self._failed("prune", exc)
            return 0


def prune_cache(path: Path, keep: set[str]) -> int:
    """The embedding cache at `path` without the rows whose photo hash is not in `keep`: overwritten on disk
    (secure_delete), not just unlinked from the table. Raises sqlite3.Error."""
    with closing(sqlite3.connect(path, timeout=10)) as db, db:
        db.execute("PRAGMA secure_delete=ON")
        gone = [(sha,) for (sha,) in db.execute("SELECT DISTINCT sha256 FROM embeddings") if sha not in keep]
        db.executemany("DELETE FROM embeddings WHERE sha256 = ?", gone)
        return db.total_changes


@dataclass
class GalleryChange:
    """What changed in the images folder since the builder last looked: applied to a Recognizer in place."""

    added: list[tuple[str, Path, np.ndarray]] = field(default_factory=list)  # (name, photo, embedding)
    removed: list[Path] = field(default_factory=list)  # photos gone, or replaced (then also in `added`)
    skipped: list[SkippedPhoto] = field(default_factory=list)  # new photos that cannot be used
    skipped_total: int = 0  # every entry of the folder that is not enrolled, as `Gallery.skipped` would list

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.skipped)


def apply_update(recognizer: Recognizer, update: Gallery | GalleryChange) -> int:
    """Hand a watcher's update to the matcher: a change is spliced in, a whole gallery replaces it.
    Returns how many folder entries are not enrolled (for the `gallery` event)."""
    if isinstance(update, GalleryChange):
        recognizer.apply(update.removed, update.added)
        log.info("gallery: %d photos added, %d removed", len(update.added), len(update.removed))
        return update.skipped_total
    recognizer.replace_all(update)
    return len(update.skipped)


class GalleryBuilder:
    """Builds a `Gallery` from the images folder, encoding only what the cache lacks.

    It remembers each photo's (name, size, mtime) from its last look, so `update()` hashes and
    encodes only the photos added or changed since: with a whole site enrolled, one new photo
    costs its own encoding plus one stat per photo, not a pass over every file.
    """

    def __init__(self, cfg: Config, detector: FaceDetector, encoder: FaceEncoder):
        self.cfg = cfg
        self.detector = detector
        self.encoder = encoder
        self.cache = EmbeddingCache(cfg.path("cache") / "embeddings.sqlite", chip_settings(cfg, encoder))
        self._seen: dict[Path, tuple[str, int, int]] = {}  # photo -> (name, size, mtime_ns) at the last look
        self._digests: dict[Path, str] = {}  # photo -> content hash, of the photos in the folder at the last look
        self._unusable: set[Path] = set()  # photos among those that were refused (no face, unreadable...)
        self._refused: set[Path] = set()  # entries the scan refused (not a photo, an unsafe name), already logged
        self._lock = threading.Lock()  # the watcher's update() and a remote reload's build() take turns

    def update(self, images_dir: Path) -> GalleryChange:
        """The photos added, replaced or removed since the last `build()`/`update()`."""
        with self._lock:
            return self._update(images_dir)

    def _update(self, images_dir: Path) -> GalleryChange:
        found, not_photos = scan_images(images_dir)
        for s in not_photos:  # dropped in while the door runs: named once, like at a build
            if s.path not in self._refused:
                log.warning("skipped photo %r: %s", str(s.path), s.reason)
        self._refused = {s.path for s in not_photos}
        now = {}
        for name, photo in found:
            try:
                st = photo.stat()
            except OSError:
                continue  # gone between the listing and the stat: the next poll sees it
            now[photo] = (name, st.st_size, st.st_mtime_ns)
        change = GalleryChange(removed=[p for p, v in self._seen.items() if now.get(p) != v])
        for photo in change.removed:
            self._digests.pop(photo, None)
        fresh = [(v[0], p) for p, v in now.items() if self._seen.get(p) != v]
        self._unusable = {p for p in self._unusable if p in now and self._seen.get(p) == now[p]}
        if fresh:
            gallery = self._assemble(fresh, [])
            change.added = list(zip(gallery.names, gallery.photos, gallery.embeddings))
            change.skipped = gallery.skipped
            self._unusable |= {s.path for s in gallery.skipped}
        self._seen = now
        change.skipped_total = len(not_photos) + len(self._unusable) + len(found) - len(now)
        if change.removed:
            self._prune()
        return change

    def build(self, images_dir: Path) -> Gallery:
        with self._lock:
            return self._build(images_dir)

    def _build(self, images_dir: Path) -> Gallery:
        found, skipped = scan_images(images_dir)
        self._refused = {s.path for s in skipped}
        self._seen, self._digests = {}, {}
        for name, photo in found:
            try:
                st = photo.stat()
                self._seen[photo] = (name, st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        gallery = self._assemble(found, skipped)
        enrolled = set(gallery.photos)
        self._unusable = {p for p in self._seen if p not in enrolled}
        log.info("gallery: %d people, %d photos (%d encoded now), %d skipped",
                 len(gallery.people()), len(gallery.names), gallery.encoded, len(gallery.skipped))
        self._prune()
        return gallery

    def _prune(self) -> None:
        """Drop the cached templates of photos that left the folder (a photo that failed to hash keeps none)."""
        dropped = self.cache.prune(set(self._digests.values()))
        if dropped:
            log.info("embedding cache: %d entr%s of photos no longer in the folder deleted", dropped,
                     "y" if dropped == 1 else "ies")

    def _assemble(self, found: list[tuple[str, Path]], skipped: list[SkippedPhoto]) -> Gallery:
        """Hash, look up in the cache, encode what it lacks: a Gallery of exactly `found`."""
        digests = {}
        for _, photo in found:
            try:
                digests[photo] = self._digests[photo] = sha256_file(photo)
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
    filesystem; only the photos added or changed are hashed and encoded, and the change is applied
    to the matcher in place (a whole site is not rebuilt for one photo).
    The folder's signature is taken before each update and kept only once the update (and the
    swap) succeeded: a photo dropped in during a build is seen at the next poll, and a reload
    that failed is tried again at the next poll.
    """

    def __init__(self, builder: GalleryBuilder, images_dir: Path, poll_s: float,
                 on_change: Callable[[Gallery | GalleryChange], None] = lambda update: None):
        self.builder = builder
        self.images_dir = images_dir
        self.poll_s = poll_s
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple | None = None  # of the folder as the current gallery was built from it
        self._failing = False
        self._full = False  # the next poll rebuilds the whole gallery instead of applying a change

    def load(self) -> Gallery:
        """The first build (raises if it fails); its signature is the one taken before it started."""
        signature = folder_signature(self.images_dir)
        gallery = self.builder.build(self.images_dir)
        self._signature = signature
        return gallery

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gallery-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def reload(self) -> None:
        """Ask for a full rebuild at the next poll (a remote `reload_gallery`), done on the watcher's thread."""
        self._full = True

    def poll(self) -> bool:
        """One check: hand over what changed in the folder; True when something was handed over."""
        try:
            signature = folder_signature(self.images_dir)
            if signature == self._signature and not self._full:
                return False
            log.info("images folder changed: reloading the gallery")
            if self._full:
                self.on_change(self.builder.build(self.images_dir))
            else:
                self.on_change(self.builder.update(self.images_dir))  # incremental: only what changed
        except Exception as exc:  # a bad moment (folder renamed mid-scan...) must not end hot enroll
            if not self._failing:
                log.warning("gallery reload failed (%s: %s); keeping the previous gallery, retrying at the next poll",
                            type(exc).__name__, exc, exc_info=True)
                self._failing = True
            self._full = True  # the builder may have moved past what the matcher holds: rebuild whole next time
            return False
        self._signature = signature  # only now: a failed reload is retried, a change during the build is seen
        self._failing = self._full = False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()
