"""Enrolling a person: photos that are worth keeping, taken from a camera sweep, files or snapshots.

A photo is kept only when its one face is large enough, sharp (variance of the Laplacian of
the face), has its eyes open (eye aspect ratio on dlib's 68 landmarks) and, in a camera sweep,
shows the pose asked for (straight, left, right, up, down: head turn measured from the
landmarks, relative to the person's own straight pose). Before anything is written, the new
faces are matched against everyone else enrolled: a face within the threshold of another
person is a collision that the caller must accept. Photos are written atomically (a hidden
temporary file renamed into place), so the gallery watcher never reads half a photo.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from door_access.config import Config, EnrollConfig
from door_access.faces.crop import grown_crop
from door_access.faces.geometry import eye_centres
from door_access.files import PRIVATE_DIR, PRIVATE_FILE, private_dir
from door_access.recognition.enroll_prompt import EnrollError, EnrollPrompt, safe_name

if TYPE_CHECKING:  # dlib is imported where a model is used: the name and pose rules need none
    import dlib

    from door_access.faces.detection import FaceDetector

log = logging.getLogger(__name__)

POSES = ("straight", "left", "right", "up", "down")
CROP_GROW = 0.6  # saved photos: the face box grown by this much on each side (room for the photo detector)
SHARPNESS_WIDTH = 160  # px: the face is resized to this width before the Laplacian, so scores compare


@dataclass(frozen=True)
class Quality:
    """What the checks measured on one face, and the first check it failed ("" if none)."""

    problem: str
    face_px: int = 0
    sharpness: float = 0.0
    ear: float = 0.0
    yaw: float = 0.0  # see head_pose
    pitch: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problem


def head_pose(points: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) proxies from 68 landmarks: where the nose tip sits between the eyes and the mouth.

    yaw: the nose tip's offset from the eyes' midpoint along the eye line, in eye distances
    (0 facing the camera; ~0.5 at a clear turn). pitch: how far down the nose tip sits from the
    eye line towards the mouth, as a fraction of the eye-to-mouth distance (~0.6 facing the
    camera; smaller with the head tilted up, larger tilted down). Roll does not count.
    """
    left_eye, right_eye = eye_centres(points)
    mid = (left_eye + right_eye) / 2.0
    axis = right_eye - left_eye
    eye_distance = float(np.linalg.norm(axis)) or 1.0
    ux = axis / eye_distance
    uy = np.array([-ux[1], ux[0]])  # perpendicular to the eye line, pointing down the face
    nose = points[30] - mid
    mouth_drop = float((points[48:68].mean(axis=0) - mid) @ uy) or 1.0
    return float(nose @ ux / eye_distance), float(nose @ uy / mouth_drop)


def sharpness(rgb: np.ndarray, box) -> float:
    """Variance of the Laplacian of the face, at a fixed width: low means blurred (motion, focus)."""
    face = rgb[max(0, box.y):box.y + box.h, max(0, box.x):box.x + box.w]
    if face.size == 0:
        return 0.0
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (SHARPNESS_WIDTH, max(1, round(SHARPNESS_WIDTH * gray.shape[0] / gray.shape[1]))),
                      interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@dataclass
class Shot:
    """One face that passed the checks, ready to be encoded and written."""

    pose: str
    photo: np.ndarray  # RGB crop around the face (what is saved)
    chip: np.ndarray
    quality: Quality
    source: str = ""  # the file it came from, for messages


class Enroller:
    """Quality checks, the guided sweep, the collision check and the atomic writes."""

    def __init__(self, cfg: EnrollConfig, detector: FaceDetector, models_dir: Path):
        import dlib

        from door_access.faces.detection import load_dlib_model
        from door_access.liveness.cues import SHAPE_PREDICTOR_68

        self.cfg = cfg
        self.detector = detector
        self._predictor = load_dlib_model(dlib.shape_predictor, Path(models_dir) / SHAPE_PREDICTOR_68)

    # ---- checks ---------------------------------------------------------------------------

    def check(self, rgb: np.ndarray, rects: list | None = None) -> tuple[Quality, dlib.rectangle | None]:
        """The one face in `rgb` (video-frame detection unless `rects` is given) and its quality."""
        from door_access.liveness.cues import eye_aspect_ratio

        rects = self.detector.detect(rgb) if rects is None else rects
        if not rects:
            return Quality("no face"), None
        if len(rects) > 1:
            return Quality(f"{len(rects)} faces: one person at a time"), None
        rect = rects[0]
        box = self.detector.align(rgb, rect).box
        points = np.array([[p.x, p.y] for p in self._predictor(rgb, rect).parts()], np.float64)
        q = dict(face_px=box.w, sharpness=round(sharpness(rgb, box), 1), ear=round(eye_aspect_ratio(points), 3))
        yaw, pitch = head_pose(points)
        q.update(yaw=round(yaw, 3), pitch=round(pitch, 3))
        c = self.cfg
        if box.w < c.min_face_px:
            return Quality(f"face too small ({box.w} px, need {c.min_face_px}): come closer", **q), rect
        if q["sharpness"] < c.min_sharpness:
            return Quality(f"blurred (sharpness {q['sharpness']:.0f}, need {c.min_sharpness:g}): hold still", **q), rect
        if q["ear"] < c.min_eye_ratio:
            return Quality(f"eyes closed (eye ratio {q['ear']:.2f}, need {c.min_eye_ratio:g}): open your eyes",
                           **q), rect
        return Quality("", **q), rect

    def pose_reached(self, pose: str, q: Quality, straight: Quality | None) -> bool:
        """Is `q` the pose asked for? Turns are measured from the person's own straight pose.

        "left" is the person's left: the nose moves towards the right of the (unmirrored) image.
        """
        c = self.cfg
        if pose == "straight":
            return abs(q.yaw) <= c.straight_max_turn
        if straight is None:
            return False
        dx, dy = q.yaw - straight.yaw, q.pitch - straight.pitch
        return {"left": dx >= c.turn, "right": dx <= -c.turn,
                "up": dy <= -c.tilt, "down": dy >= c.tilt}[pose]

    def shot(self, rgb: np.ndarray, rect, q: Quality, pose: str, source: str = "") -> Shot:
        face = self.detector.align(rgb, rect)
        return Shot(pose, grown_crop(rgb, face.box, CROP_GROW), face.chip, q, source)

    # ---- the sweep ------------------------------------------------------------------------

    def sweep(self, frames: Iterable[np.ndarray], on_status: Callable[[str, np.ndarray, Quality | None], bool]
              | None = None, timeout_s: float | None = None) -> tuple[list[Shot], list[str]]:
        """Guide a sweep over `frames` (BGR): one shot per pose, in POSES order, each only when the
        checks pass and the pose is reached. Returns the shots and the poses not reached.

        `on_status(instruction, frame, quality)` is called for every frame (the window draws it);
        returning False ends the sweep. Poses after "straight" need the straight shot first.
        """
        shots: dict[str, Shot] = {}
        started = time.monotonic()
        for bgr in frames:
            todo = [p for p in POSES if p not in shots]
            if not todo:
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                break
            pose = todo[0]
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            q, rect = self.check(rgb)
            instruction = INSTRUCTIONS[pose]
            if rect is not None and q.ok:
                straight = shots["straight"].quality if "straight" in shots else None
                if self.pose_reached(pose, q, straight):
                    shots[pose] = self.shot(rgb, rect, q, pose)
                    log.info("enroll: %s taken (face %d px, sharpness %.0f, eye ratio %.2f)",
                             pose, q.face_px, q.sharpness, q.ear)
                    instruction = f"{pose}: taken"
            elif q.problem:
                instruction = f"{instruction} ({q.problem})"
            if on_status is not None and on_status(instruction, bgr, q) is False:
                break
        return list(shots.values()), [p for p in POSES if p not in shots]

    # ---- photos and frames ----------------------------------------------------------------

    def from_photo(self, rgb: np.ndarray, source: str) -> Shot:
        """A photo file's one face, checked like a camera frame (pose not asked); EnrollError if it fails."""
        from door_access.faces.detection import box_rect

        faces = self.detector.photo_faces(rgb)
        if len(faces) != 1:
            raise EnrollError(f"{source}: {'no face' if not faces else f'{len(faces)} faces'} found: "
                              "a photo must show exactly one face")
        face = faces[0]
        q, rect = self.check(rgb, [box_rect(face.box)])
        if not q.ok:
            raise EnrollError(f"{source}: {q.problem}")
        return Shot("photo", grown_crop(rgb, face.box, CROP_GROW), face.chip, q, source)

    def from_frame(self, rgb: np.ndarray, source: str = "camera") -> Shot:
        """The face in one video frame, checked (pose not asked); EnrollError if it fails."""
        q, rect = self.check(rgb)
        if not q.ok:
            raise EnrollError(f"{source}: {q.problem}" if source else q.problem)
        return self.shot(rgb, rect, q, "frame", source)


INSTRUCTIONS = {
    "straight": "Look straight at the camera",
    "left": "Turn your head slowly to your left",
    "right": "Turn your head slowly to your right",
    "up": "Tilt your head up",
    "down": "Tilt your head down",
}


@dataclass
class Collision:
    """Another enrolled person within the threshold of a new face."""

    person: str
    distance: float


def collisions(recognizer, name: str, embeddings: np.ndarray) -> list[Collision]:
    """Everyone but `name` whom any of the new faces matches (under the recognizer's threshold), closest first."""
    if not len(embeddings) or not recognizer.people:
        return []
    d = recognizer.distances(embeddings).min(axis=0)
    found = [Collision(p, float(v)) for p, v in zip(recognizer.people, d) if p != name and v <= recognizer.threshold]
    return sorted(found, key=lambda c: c.distance)


def photo_modes(images_dir: Path) -> tuple[int, int]:
    """(file mode, folder mode) for new enrollment photos: 0600 and 0700, for the user the door runs as;
    0640 and 0750 when the images folder is set up as a group's shared folder (setgid and group r-x, e.g.
    `chmod 2750`): several doors running as different users of that group. Never readable by others."""
    group_share = stat.S_ISGID | stat.S_IRGRP | stat.S_IXGRP
    shared = os.stat(images_dir).st_mode & group_share == group_share
    return (PRIVATE_FILE | stat.S_IRGRP, PRIVATE_DIR | stat.S_IRGRP | stat.S_IXGRP) if shared \
        else (PRIVATE_FILE, PRIVATE_DIR)


def write_photos(images_dir: Path, name: str, shots: list[Shot]) -> list[Path]:
    """Each shot as a JPEG in images/NAME/, written atomically (temp file, fsync, rename), private (photo_modes)."""
    folder = Path(images_dir) / safe_name(name)
    private_dir(Path(images_dir))
    file_mode, folder_mode = photo_modes(images_dir)
    try:
        folder.mkdir(mode=PRIVATE_DIR)
        os.chmod(folder, folder_mode)  # still empty: opening it to the group exposes nothing yet
    except FileExistsError:
        pass  # an existing person folder keeps its mode (`door-access check` reports one others can read)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = []
    for i, shot in enumerate(shots):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(shot.photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise EnrollError(f"cannot encode the {shot.pose} photo as JPEG")
        path = folder / f"enroll-{stamp}-{i:02d}-{shot.pose}.jpg"
        fd, tmp = tempfile.mkstemp(prefix=".enroll-", suffix=".part", dir=folder)  # hidden: the gallery skips it
        try:
            os.fchmod(fd, file_mode)  # mkstemp makes it 0600; group-read only in a group-shared folder
            with os.fdopen(fd, "wb") as f:
                f.write(data.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def snapshot_id_ok(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,18}", str(value)))


@dataclass
class EnrollResult:
    """What an enrollment did: the photos written, or why not (a collision to accept, a failed check)."""

    written: list[Path] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    problem: str = ""


def encode_shots(encoder, shots: list[Shot]) -> np.ndarray:
    return encoder.encode(np.stack([s.chip for s in shots])) if shots else np.zeros((0, 128), np.float32)


def enroll_from_frame(bgr: np.ndarray, name: str, enroller: Enroller, encoder, recognizer, images_dir: Path,
                      accept_collision: bool = False) -> EnrollResult:
    """The running kiosk's enroll key: the one face in `bgr` (a camera frame) into images/NAME/.

    Same checks as `door-access enroll` (no pose asked). When the face is within the threshold of
    another enrolled person, nothing is written and `collisions` names them: the window asks,
    and calls again with `accept_collision=True` if the operator agrees. The Enroller must be
    used by one thread only (dlib objects are not shared; see `KioskEnroller`); the gallery
    watcher picks the new photo up within `pipeline.gallery_poll_s`.
    """
    try:
        name = safe_name(name)
        shot = enroller.from_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "")
    except EnrollError as exc:
        return EnrollResult(problem=str(exc))
    found = collisions(recognizer, name, encode_shots(encoder, [shot]))
    if found and not accept_collision:
        return EnrollResult(collisions=found, problem=collision_message(name, found))
    return EnrollResult(written=write_photos(images_dir, name, [shot]), collisions=found)


def collision_message(name: str, found: list[Collision]) -> str:
    who = ", ".join(f"{c.person} (distance {c.distance:.3f})" for c in found)
    return f"the new face of {name} is within the threshold of {who}: they could be let in as each other"


class KioskEnroller:
    """The running window's enroll key: `EnrollPrompt` for the keys, the enrollment on a worker thread.

    The window hands over the newest frame and reads the outcome at a later tick, so drawing goes
    on and no pipeline stage waits; nothing here touches the door. The worker builds its own
    detector and Enroller (dlib objects are not shared between threads) as soon as it is made:
    loading the landmark model holds the GIL for most of a second, which at start-up stalls
    nothing, but later would freeze the window mid-typing and the pipeline's stages. The encoder
    and the recognizer are the pipeline's. A new photo reaches the door through the gallery
    watcher, like any photo dropped into images/.
    """

    def __init__(self, cfg: Config, encoder, recognizer, images_dir: Path, prompt: EnrollPrompt | None = None):
        self.cfg, self.encoder, self.recognizer, self.images_dir = cfg, encoder, recognizer, Path(images_dir)
        self.prompt = prompt or EnrollPrompt(cfg.display.message_seconds)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kiosk-enroll")
        self._job: Future | None = None
        self._enroller: Enroller | None = None  # the worker's own, built on its thread (`_warm`)
        self._frame: np.ndarray | None = None  # the frame last checked: an accepted look-alike is enrolled from it
        self._pool.submit(self._warm)

    def key(self, code: int, now: float, frame: np.ndarray | None) -> bool:
        """One key from the window (see `EnrollPrompt.key`); `frame`: the newest camera frame (BGR), if any."""
        handled = self.prompt.key(code, now)
        request = self.prompt.take()
        if request is not None:
            if not request.accept_collision:
                self._frame = None if frame is None else frame.copy()
            self._job = self._pool.submit(self._enroll, self._frame, request.name, request.accept_collision)
        return handled

    def line(self, now: float) -> tuple[str, str] | None:
        """The status line while enrolling (`EnrollPrompt.line`), with the worker's outcome once it is in."""
        if self._job is not None and self._job.done():
            job, self._job = self._job, None
            try:
                result = job.result()
            except Exception as exc:  # a full disk, an unreadable model: said on screen, the door goes on
                log.error("kiosk enroll failed: %s", exc, exc_info=exc)
                result = EnrollResult(problem=f"enrollment failed: {exc}")
            self.prompt.finished(now, bool(result.written), result.problem, [c.person for c in result.collisions])
        return self.prompt.line(now)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _warm(self) -> None:
        try:
            self._ready()
        except Exception as exc:  # said again, on screen, when the key is used
            log.warning("the enroll key cannot work: %s", exc)

    def _ready(self) -> Enroller:
        if self._enroller is None:
            from door_access.faces.detection import FaceDetector

            weights = self.cfg.path("weights")
            self._enroller = Enroller(self.cfg.enroll, FaceDetector(self.cfg.detection, weights), weights)
        return self._enroller

    def _enroll(self, bgr: np.ndarray | None, name: str, accept_collision: bool) -> EnrollResult:
        if bgr is None:
            return EnrollResult(problem="no picture from the camera yet")
        result = enroll_from_frame(bgr, name, self._ready(), self.encoder, self.recognizer, self.images_dir,
                                   accept_collision)
        if result.written and result.collisions:
            log.warning("kiosk enroll: %s written, accepted at the window: %s", result.written[0],
                        collision_message(name, result.collisions))
        elif result.written:
            log.info("kiosk enroll: %s written", result.written[0])
        else:
            log.info("kiosk enroll: %s not enrolled: %s", name, result.problem)
        return result


def video_frames(source: str, camera_cfg) -> Iterable[np.ndarray]:
    """BGR frames from a webcam index (asked for camera.width/height/fps), a file or a URL."""
    from door_access.faces.capture import SourceError, parse_source, request_format

    src = parse_source(source)
    cap = cv2.VideoCapture(src)
    if isinstance(src, int) and cap.isOpened():
        request_format(cap, camera_cfg.width, camera_cfg.height, camera_cfg.fps)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"no camera at index {src}: plug one in, or use --source FILE_OR_URL"
                          if isinstance(src, int) else f"cannot open video source '{src}'")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


class SweepWindow:
    """A plain OpenCV window for the sweep: the mirrored camera image and the instruction.
    (The kiosk's own window is display.py's; this one only lives while `enroll` runs.)"""

    TITLE = "door-access enroll"

    def __init__(self):
        cv2.namedWindow(self.TITLE, cv2.WINDOW_NORMAL | cv2.WINDOW_GUI_NORMAL)

    def __call__(self, instruction: str, bgr: np.ndarray, quality: Quality | None) -> bool:
        view = cv2.flip(bgr, 1)
        scale = max(0.6, view.shape[1] / 900)
        color = (0, 200, 0) if instruction.endswith("taken") else (255, 255, 255)
        cv2.rectangle(view, (0, 0), (view.shape[1], int(48 * scale)), (0, 0, 0), -1)
        cv2.putText(view, instruction, (10, int(34 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 2, cv2.LINE_AA)
        cv2.imshow(self.TITLE, view)
        return cv2.waitKey(1) & 0xFF not in (27, ord("q"))

    def close(self) -> None:
        cv2.destroyWindow(self.TITLE)
