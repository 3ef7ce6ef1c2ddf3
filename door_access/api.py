"""The door's recognition as plain verbs on photos, for scripts and integrations (docs/api.md).

No second implementation: photos go through the door's photo detector, alignment and FaceNet, a folder of
people through its `GalleryBuilder` and embedding cache, and answers come from its `Recognizer`, so a
script and the door agree. The CLI's `identify` and `verify` use the same `Door`. Importing this module
loads no model; a `Door` loads them on first use, once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from door_access.config import Config, load_config
from door_access.core import EMBEDDING_SIZE, Box

if TYPE_CHECKING:
    from door_access.faces.detection import Face, FaceDetector
    from door_access.faces.facenet import FaceEncoder
    from door_access.recognition.gallery import GalleryBuilder
    from door_access.recognition.recognizer import Recognizer

REPO = Path(__file__).resolve().parents[1]  # config=None: the defaults, with weights/ and .cache/ of this checkout

Image = str | Path | np.ndarray  # a photo file, or an RGB uint8 array (H, W, 3)

__all__ = ["Box", "Door", "load"]


def load(config: Config | str | Path | None = None) -> Door:
    """The door's models and settings: `config` is None (the defaults and this checkout's weights/),
    a config.yaml path, or a `Config`. Models load on first use."""
    if config is None:
        return Door(Config(base_dir=REPO))
    if isinstance(config, Config):
        return Door(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    return Door(load_config(path))


class Door:
    """The door's detector, aligner, FaceNet and matcher, behind five verbs (see the module's docstring)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._lock = threading.RLock()
        self._detector: FaceDetector | None = None
        self._encoder: FaceEncoder | None = None
        self._galleries: dict[Path, tuple[GalleryBuilder, Recognizer]] = {}

    # ---- the five verbs -----------------------------------------------------------------------

    def find_faces(self, image: Image) -> list[Box]:
        """The face boxes in a photo, in its pixels (the door's photo detection)."""
        with self._lock:
            return [f.box for f in self.detector.photo_faces(self.read(image))]

    def encode(self, image: Image, faces: list[Box] | None = None) -> np.ndarray:
        """(n, 128) float32 unit vectors, one per face: the boxes given (e.g. from `find_faces`), each aligned
        on its own landmarks, or every face the door finds in the photo when `faces` is None."""
        with self._lock:
            rgb = self.read(image)
            if faces is None:
                return self.faces(rgb)[1]
            for box in faces:
                if not isinstance(box, Box) or box.w <= 0 or box.h <= 0:
                    raise ValueError(f"faces must be non-empty Box(x, y, w, h), as find_faces gives; got {box!r}")
            return self._encode([self.detector.align_box(rgb, box).chip for box in faces])

    def verify(self, image_a: Image, image_b: Image) -> tuple[bool, float]:
        """(same person, distance) of the one face in each photo, by the door's 1:1 rule and threshold."""
        from door_access.recognition.gallery import Gallery
        from door_access.recognition.recognizer import Recognizer

        with self._lock:
            rgb_a, rgb_b = self.read(image_a), self.read(image_b)  # a bad file is named before any detection
            a = self._one_face(rgb_a, image_a, "image_a")
            b = self._one_face(rgb_b, image_b, "image_b")
        enrolled = Recognizer(Gallery(names=["b"], photos=[Path("b")], embeddings=b[None]),
                              self.cfg.recognition.threshold)
        distance, same = enrolled.verify(a, "b")
        return same, distance

    def identify(self, image: Image, images_dir: str | Path) -> tuple[str | None, float]:
        """(name, distance) of the one face in a photo among the people of `images_dir` (`images/<name>.jpg`
        or `images/<name>/*.jpg`, as the door enrolls them), by the door's 1:K rule: name is None when
        nobody is close enough, or two people are too close to tell; distance is to the closest person."""
        with self._lock:
            rgb = self.read(image)
            recognizer = self.recognizer(images_dir)
            [match] = recognizer.identify(self._one_face(rgb, image, "image")[None])
        return match.name, match.distance

    # ---- the pieces the verbs (and the CLI) share ----------------------------------------------

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from door_access.faces.detection import FaceDetector

            self._detector = FaceDetector(self.cfg.detection, self.cfg.path("weights"))
        return self._detector

    @property
    def encoder(self) -> FaceEncoder:
        if self._encoder is None:
            from door_access.faces import facenet

            self._encoder = facenet.FaceEncoder(self.cfg.path("weights") / "facenet_keras3.weights.h5")
        return self._encoder

    def read(self, image: Image) -> np.ndarray:
        """A photo as an RGB uint8 array: a file decoded as the door reads enrollment photos (EXIF turned,
        `photo.max_pixels`), or an array checked and used as it is."""
        from door_access.faces.photos import PhotoError, load_rgb

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(f"an image array must be RGB uint8 of shape (H, W, 3); got {image.dtype} "
                                 f"{image.shape}")
            return np.ascontiguousarray(image)
        if not isinstance(image, (str, Path)):
            raise TypeError(f"an image is a file path or an RGB uint8 array, not {type(image).__name__}")
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"{path}: file not found")
        try:
            return load_rgb(path, self.cfg.photo.max_pixels)
        except PhotoError as exc:
            raise PhotoError(f"{path}: {exc}") from None

    def faces(self, image: Image) -> tuple[list[Face], np.ndarray]:
        """Every face the door finds in a photo (box, aligned chip, landmarks) and their embeddings."""
        with self._lock:
            found = self.detector.photo_faces(self.read(image))
            return found, self._encode([f.chip for f in found])

    def recognizer(self, images_dir: str | Path) -> Recognizer:
        """The door's matcher over the people in `images_dir`: built once (photos the cache lacks are encoded),
        then brought up to date with the photos added, changed or removed since, as the running door does."""
        from door_access.recognition.gallery import GalleryBuilder, apply_update
        from door_access.recognition.recognizer import Recognizer

        folder = Path(images_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"images folder {folder} does not exist")
        key = folder.resolve()
        with self._lock:
            if key not in self._galleries:
                builder = GalleryBuilder(self.cfg, self.detector, self.encoder)
                gallery = builder.build(folder)
                r = self.cfg.recognition
                self._galleries[key] = builder, Recognizer(gallery, r.threshold, r.margin)
                return self._galleries[key][1]
            builder, recognizer = self._galleries[key]
            change = builder.update(folder)
            if change:
                apply_update(recognizer, change)
            return recognizer

    def _encode(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return self.encoder.encode(np.stack(chips))

    def _one_face(self, rgb: np.ndarray, image: Image, label: str) -> np.ndarray:
        """The embedding of the one face in `rgb` (read from `image`); ValueError naming the photo (its path, or
        `label` for an array) when it shows none or several."""
        found, embeddings = self.faces(rgb)
        if len(found) != 1:
            name = str(image) if isinstance(image, (str, Path)) else label
            what = "no face" if not found else f"{len(found)} faces"
            raise ValueError(f"{name}: {what} found; one face is needed")
        return embeddings[0]
