"""Speed work: the webcam format request, detection at detection.max_side, detector processes
handing frames on in order, and the benchmark's own helpers. Nothing here asserts a time."""

import queue
import shutil
import sys
import threading

import cv2
import dlib
import numpy as np
import pytest

from door_access.bench import parse_sizes, scaled_clip, sizes_table
from door_access.capture import Capture, request_format
from door_access.config import DetectionConfig
from door_access.detection import FaceDetector
from door_access.parallel_detection import DetectedFrames

from conftest import REPO, SHARED_DATA

CLIP = SHARED_DATA / "face_recognition_examples" / "short_hamilton_clip.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"shared real data not found at {CLIP}")


class RecordingCapture:
    """Stands in for a webcam's cv2.VideoCapture: remembers what was set, reports it back."""

    def __init__(self):
        self.props = {}

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self.props.get(prop, 0.0)


def test_webcam_is_asked_for_size_rate_and_mjpg():
    cap = RecordingCapture()
    got = request_format(cap, 1280, 720, 30.0)
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 1280 and cap.props[cv2.CAP_PROP_FRAME_HEIGHT] == 720
    assert cap.props[cv2.CAP_PROP_FPS] == 30.0
    assert cap.props[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter_fourcc(*"MJPG")
    assert got == "1280x720 at 30 FPS"


def test_zero_leaves_the_webcam_default():
    cap = RecordingCapture()
    request_format(cap, 0, 0, 0.0)
    assert cap.props == {}


def test_sizes_are_parsed_and_bad_ones_named():
    assert parse_sizes("640x360, 1280x720") == [(640, 360), (1280, 720)]
    with pytest.raises(ValueError, match="'720p'"):
        parse_sizes("1280x720,720p")


def test_the_sizes_table_shows_both_modes_and_the_ratio_per_size():
    run = {"processed_fps": 29.9, "frames_dropped": 1, "latency_p50_s": 0.42, "cpu_ms_per_frame": 12.3}
    result = {"machine": {"cpus": 2, "load_avg_before": [1.0], "load_avg_after": [2.0], "max_side": 640,
                          "upsample": 0},
              "sizes": {"640x360": {"realtime": run, "throughput": {**run, "processed_fps": 101.0},
                                    "peer": {"fps": 16.3, "cpu_ms_per_frame": 60.2}, "ratio": 6.2, "cpu_ratio": 4.9},
                        "1920x1080": {"realtime": {**run, "latency_p50_s": None}, "throughput": run}}}
    lines = sizes_table(result).splitlines()
    assert len(lines) == 4
    assert "29.9" in lines[2] and "101.0" in lines[2] and "16.3" in lines[2] and "6.2x" in lines[2]
    assert lines[3].split("|")[0].strip() == "1920x1080" and "nan" in lines[3]  # no peer: no ratio


def clip_frames(n: int, size=None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        assert ok
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) if size else frame)
    cap.release()
    return frames


def edges(r: dlib.rectangle) -> np.ndarray:
    return np.array([r.left(), r.top(), r.right(), r.bottom()], float)


@pytest.mark.model
@needs_clip
def test_a_1080p_frame_is_detected_at_max_side_and_boxes_come_back_in_its_pixels():
    weights = REPO / "weights"
    at_640 = FaceDetector(DetectionConfig(max_side=640), weights)
    frames = clip_frames(275)[::25]
    found = 0
    for frame in frames:
        small = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # the clip is 640x360
        big = cv2.resize(small, (1920, 1080), interpolation=cv2.INTER_CUBIC)
        assert at_640.video_scale(big.shape) == 3.0
        a, b = at_640.detect(small), at_640.detect(big)
        assert len(a) == len(b)
        for ra, rb in zip(sorted(a, key=lambda r: r.left()), sorted(b, key=lambda r: r.left())):
            assert np.abs(edges(ra) * 3 - edges(rb)).max() <= 12  # the same face, in 1080p pixels
        found += len(a)
    assert found > 0


@pytest.mark.model
@needs_clip
def test_two_detector_processes_hand_frames_on_in_order_with_the_same_faces():
    detector = FaceDetector(DetectionConfig(workers=2), REPO / "weights")
    capture = Capture(str(CLIP), realtime=False, lost_after_s=3.0, reconnect_min_s=0.5, reconnect_max_s=1.0)
    stop = threading.Event()
    detected = DetectedFrames(capture.frames, detector, 2, stop)
    detected.start_processes()
    procs = list(detected._procs)
    assert len(procs) == 2
    lanes = [threading.Thread(target=lane, daemon=True) for lane in detected.lanes()]
    for lane in lanes:
        lane.start()
    capture.start(lambda exc: None)
    out = []
    try:
        while True:
            try:
                item = detected.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:  # END: the file is over
                break
            out.append(item)
    finally:
        stop.set()
        capture.stop(1.0)
        for lane in lanes:
            lane.join(1.0)
        detected.close()
    total = int(cv2.VideoCapture(str(CLIP)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert [frame.index for frame, _, _ in out] == list(range(total))  # every frame of the file, in order
    in_thread = FaceDetector(DetectionConfig(), REPO / "weights")
    for frame, rgb, rects in out[::20]:
        assert [edges(r).tolist() for r in rects] == [edges(r).tolist() for r in in_thread.detect(rgb)]
    assert sum(len(r) for _, _, r in out) > 0
    assert not any(p.is_alive() for p in procs)  # closed with the pipeline


@pytest.mark.model
@needs_clip
def test_a_detector_process_that_dies_fails_its_lane_with_a_reason():
    detector = FaceDetector(DetectionConfig(workers=2), REPO / "weights")
    capture = Capture(str(CLIP), realtime=False, lost_after_s=3.0, reconnect_min_s=0.5, reconnect_max_s=1.0)
    stop = threading.Event()
    detected = DetectedFrames(capture.frames, detector, 2, stop)
    detected.start_processes()
    victim = detected._procs[0]
    victim.kill()  # the process this test started
    victim.join(5.0)
    capture.start(lambda exc: None)
    try:
        with pytest.raises(RuntimeError, match="detector process 0 died"):
            detected.lanes()[0]()
    finally:
        stop.set()
        capture.stop(1.0)
        detected.close()


@needs_clip
def test_clip_is_scaled_at_its_own_rate(tmp_path):
    out = scaled_clip(str(CLIP), (320, 180), tmp_path)
    src, dst = cv2.VideoCapture(str(CLIP)), cv2.VideoCapture(out)
    assert (dst.get(cv2.CAP_PROP_FRAME_WIDTH), dst.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 180)
    assert abs(dst.get(cv2.CAP_PROP_FPS) - src.get(cv2.CAP_PROP_FPS)) < 0.01
    assert dst.get(cv2.CAP_PROP_FRAME_COUNT) == src.get(cv2.CAP_PROP_FRAME_COUNT)
    assert scaled_clip(str(CLIP), (640, 360), tmp_path) == str(CLIP)  # already that size: no copy


@pytest.mark.model
@needs_clip
def test_the_peer_loop_runs_on_the_clip_or_says_how_to_install_it(tmp_path, monkeypatch):
    from door_access.bench import bench_peer

    from conftest import make_config

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SHARED_DATA / "face_recognition_examples" / "lin-manuel-miranda.png", images / "lin.png")
    clip = str(CLIP)  # at 640x360: smaller, its faces are under HOG's 80 px
    cfg = make_config(tmp_path)
    pytest.importorskip("face_recognition", reason="the peer is in the 'bench' extra")
    result = bench_peer(cfg, images, clip)
    assert result["frames"] == int(cv2.VideoCapture(clip).get(cv2.CAP_PROP_FRAME_COUNT))
    assert result["enrolled"] == 1 and result["faces"] > 0 and result["fps"] > 0
    monkeypatch.setitem(sys.modules, "face_recognition", None)  # as if not installed
    assert "pip install --no-deps face_recognition" in bench_peer(cfg, images, clip)["skipped"]
