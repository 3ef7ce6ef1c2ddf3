"""Speed measurements that print numbers: `door-access bench ...`. Medians of repeated runs."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import numpy as np

from door_access.config import Config
from door_access.tools.assets import testdata_dir

BATCH_SIZES = (1, 8, 32)


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_encoder(cfg: Config, photo: Path | None, repeats: int) -> dict:
    """Faces/s of the encoder at several batch sizes, and per-stage ms for one photo."""
    from door_access.faces.detection import FaceDetector
    from door_access.faces.facenet import FaceEncoder
    from door_access.faces.photos import load_rgb

    photo = photo or testdata_dir(cfg.path("cache")) / "face_recognition" / "obama.jpg"
    detector = FaceDetector(cfg.detection, cfg.path("weights"))
    encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5", cfg.pipeline.encoder_threads)

    rgb = load_rgb(photo, cfg.photo.max_pixels)
    rects = detector.detect(rgb)
    if not rects:
        raise ValueError(f"{photo}: no face found by the live detector; pick another --photo")
    chip = detector.align(rgb, rects[0]).chip[None]
    encoder.encode(chip)  # build the graph before timing
    stage_ms = {
        "decode": _median_s(lambda: load_rgb(photo, cfg.photo.max_pixels), repeats) * 1e3,
        "detect": _median_s(lambda: detector.detect(rgb), repeats) * 1e3,
        "align": _median_s(lambda: detector.align(rgb, rects[0]), repeats) * 1e3,
        "encode": _median_s(lambda: encoder.encode(chip), repeats) * 1e3,
    }
    faces_per_s = {}
    for batch in BATCH_SIZES:
        chips = np.repeat(chip, batch, axis=0)
        encoder.encode(chips)
        faces_per_s[str(batch)] = round(batch / _median_s(lambda c=chips: encoder.encode(c), repeats), 2)
    return {"faces_per_s": faces_per_s, "stage_ms": {k: round(v, 2) for k, v in stage_ms.items()}}


def bench_pipeline(cfg: Config, images_dir: Path, source: str, realtime: bool = True,
                   seen_cache: dict | None = None) -> dict:
    """Play `source` through the whole app (headless, no hooks, speech to WAV files in a scratch
    folder) and report throughput, drops, decision latency, CPU and memory.

    `realtime`: at the file's own frame rate, dropping frames like a camera (the 95%-of-source
    target); otherwise every frame as fast as the pipeline takes them (throughput, comparable
    with the peer's loop). Latency needs to know when each enrolled person first appears: every
    frame of the file is detected and identified offline (once per file with `seen_cache`), and
    each unlock is measured from the start of its person's current appearance (a run of frames in
    which they are identified): in wall time when played in real time, in video time (the frame
    that unlocked) when played flat out, where the wall clock measures the machine, not a wait.
    """
    import dataclasses
    import resource
    import tempfile

    from door_access.app import build_pipeline
    from door_access.core import UNLOCK
    from door_access.runner import open_capture

    events, unlock_frames = [], []
    with tempfile.TemporaryDirectory(prefix="door-bench-") as tmp:
        cfg = dataclasses.replace(
            cfg,
            door=dataclasses.replace(cfg.door, unlock_command=(), relock_command=(), webhook_url=None),
            tts=dataclasses.replace(cfg.tts, wav_dir=str(Path(tmp) / "wav")),
            access_log=dataclasses.replace(cfg.access_log, path=str(Path(tmp) / "log.sqlite"), snapshots_dir=None),
        )
        pipeline = build_pipeline(cfg, images_dir, open_capture(cfg, source, realtime=realtime), events.append)
        pipeline.observers.append(lambda item, decisions: unlock_frames.extend(
            (d.name, item.frame.index) for d in decisions if d.event == UNLOCK))
        pipeline.start()  # warms the encoder up before the clock starts
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        helpers0 = pipeline.detected.processes_cpu_s()
        try:
            pipeline.wait()
        finally:
            ended = time.monotonic()
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            helpers_s = pipeline.detected.processes_cpu_s() - helpers0
            pipeline.stop()
        wall = ended - pipeline.capture.started_at
        if pipeline.failure:
            raise RuntimeError(f"stage {pipeline.failure[0]} failed: {pipeline.failure[1]}")
        capture, stats = pipeline.capture, pipeline.stats
        fps, started = capture.fps, capture.started_at
        cache = seen_cache if seen_cache is not None else {}
        if source not in cache:
            cache[source] = _appearances(pipeline, source, cfg.pipeline.track_timeout_s * fps)
        appearances = cache[source]

    latencies = []
    if realtime:
        for e in events:
            if e.event != UNLOCK:
                continue
            frame_index = max((s for s in appearances.get(e.name, []) if started + s / fps <= pipeline.t0 + e.t),
                              default=None)
            if frame_index is not None:
                latencies.append(pipeline.t0 + e.t - (started + frame_index / fps))
    else:
        for name, index in unlock_frames:
            frame_index = max((s for s in appearances.get(name, []) if s <= index), default=None)
            if frame_index is not None:
                latencies.append((index - frame_index) / fps)
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime) + helpers_s
    return {
        "mode": "realtime" if realtime else "throughput",
        "source_fps": round(fps, 2),
        "frames_in": capture.frames_in,
        "frames_processed": stats.processed,
        "frames_dropped": capture.dropped,
        "faces_encoded": stats.encoded,
        "processed_fps": round(stats.processed / wall, 2),
        "latency_clock": "wall" if realtime else "video",
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "cpu_percent": round(100.0 * cpu_s / wall, 1),  # 100 = one core, detector processes included
        "cpu_ms_per_frame": round(1000.0 * cpu_s / max(1, stats.processed), 1),  # hardly changed by a busy machine
        "peak_rss_mb": round(usage1.ru_maxrss / 1024.0, 1),
        "unlocks": [e.name for e in events if e.event == UNLOCK],
        "liveness_wait_s": [float(m.group(1)) for e in events if e.event == UNLOCK
                            for m in [re.match(r"live after ([0-9.]+) s", e.detail)] if m],
        "appearances": {name: len(starts) for name, starts in appearances.items()},
    }


def _appearances(pipeline, source: str, max_gap_frames: float) -> dict[str, list[int]]:
    """Per enrolled person, the first frame of each run of frames in which they are identified
    (with the stopped pipeline's own detector, encoder and recognizer)."""
    import cv2

    detector, encoder, recognizer = pipeline.detector, pipeline.encoder, pipeline.recognizer
    cap = cv2.VideoCapture(source)
    seen: dict[str, list[int]] = {}
    last: dict[str, int] = {}
    index = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        faces = detector.faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if faces:
            for match in recognizer.identify(encoder.encode(np.stack([f.chip for f in faces]))):
                if match.name is None:
                    continue
                if index - last.get(match.name, -10**9) > max_gap_frames:
                    seen.setdefault(match.name, []).append(index)
                last[match.name] = index
        index += 1
    cap.release()
    return seen


def bench_gallery(people: int, repeats: int = 20, seed: int = 0) -> dict:
    """Matcher speed for a site of `people` (one synthetic unit embedding each; speed only, no model):
    building it, identifying one probe, and enrolling one more photo live (not counting its encoding)."""
    from types import SimpleNamespace

    from door_access.core import EMBEDDING_SIZE
    from door_access.recognition.recognizer import Recognizer

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((people, EMBEDDING_SIZE), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    names = [f"person{i:07d}" for i in rng.permutation(people)]  # unsorted, like a folder listing
    # what Recognizer reads of a Gallery, without importing the models (gallery.py loads TensorFlow)
    gallery = SimpleNamespace(names=names, photos=[Path(f"/site/{n}/1.jpg") for n in names], embeddings=emb)
    build_s = _median_s(lambda: Recognizer(gallery, 0.9), max(1, min(repeats, 5)))
    recognizer = Recognizer(gallery, 0.9)
    probe = emb[people // 2] + 0.05 * rng.standard_normal(EMBEDDING_SIZE, dtype=np.float32)
    probe /= np.linalg.norm(probe)
    recognizer.identify(probe)
    identify_s = _median_s(lambda: recognizer.identify(probe), repeats)
    extra = rng.standard_normal((repeats, EMBEDDING_SIZE), dtype=np.float32)
    adds = iter(range(repeats))
    add_s = _median_s(lambda: (lambda i: recognizer.add(f"newcomer{i:03d}", Path(f"/site/new/{i}.jpg"),
                                                       extra[i]))(next(adds)), repeats)
    return {"people": people, "build_s": float(f"{build_s:.3g}"), "identify_ms": float(f"{identify_s * 1e3:.3g}"),
            "add_one_s": float(f"{add_s:.3g}"), "matrix_mb": round(recognizer.matrix_bytes / 2**20, 1)}
DEFAULT_SIZES = ("640x360", "1280x720", "1920x1080")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"640x360,1280x720" -> [(640, 360), (1280, 720)]; ValueError naming the bad part."""
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]{2,5})x([0-9]{2,5})\s*", part)
        if not m:
            raise ValueError(f"bad size {part!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
        sizes.append((int(m.group(1)), int(m.group(2))))
    return sizes


def scaled_clip(source: str, size: tuple[int, int], folder: Path) -> str:
    """`source` resized to `size` (OpenCV, mp4v) at its own frame rate, in `folder`; the source itself
    when it already has that size."""
    import cv2

    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise ValueError(f"cannot open video {source}")
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if (w, h) == tuple(size):
        cap.release()
        return source
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    out = folder / f"clip-{size[0]}x{size[1]}.mp4"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, tuple(size))
    interpolation = cv2.INTER_CUBIC if size[0] > w else cv2.INTER_AREA
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, tuple(size), interpolation=interpolation))
    cap.release()
    writer.release()
    return str(out)


def bench_peer(cfg: Config, images_dir: Path, source: str) -> dict:
    """The `face_recognition` library's video loop on `source`, as in its examples: for each frame,
    face_locations (HOG), face_encodings and compare_faces against the enrolled photos, one frame
    after another, as fast as it goes. Equal detection sensitivity: each frame is shrunk to
    `detection.max_side` as ours is (the same `shrink`) and HOG runs with our `detection.upsample`.

    Its rate is an upper bound on what it would process from a live camera (it never waits for
    a frame), so the ratio to ours is, if anything, in its favour.
    """
    import cv2

    try:
        import face_recognition
    except ImportError:
        return {"skipped": "face_recognition is not installed: make setup-bench "
                           "(pip install --no-deps --require-hashes -r requirements/bench.txt)"}
    from door_access.faces.detection import shrink, shrink_factor
    from door_access.faces.photos import load_rgb
    from door_access.recognition.gallery import scan_images

    known, names = [], []
    for name, photo in scan_images(images_dir)[0]:
        found = face_recognition.face_encodings(load_rgb(photo, cfg.photo.max_pixels))
        if found:
            known.append(found[0])
            names.append(name)
    cap = cv2.VideoCapture(source)
    frames = faces = 0
    usage0, started = _cpu_s(), time.monotonic()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rgb = shrink(rgb, shrink_factor(rgb.shape, cfg.detection.max_side))
        locations = face_recognition.face_locations(rgb, cfg.detection.upsample, "hog")
        for encoding in face_recognition.face_encodings(rgb, locations):
            face_recognition.compare_faces(known, encoding, tolerance=0.6)
        frames += 1
        faces += len(locations)
    wall = time.monotonic() - started
    cpu = _cpu_s() - usage0
    cap.release()
    return {"frames": frames, "faces": faces, "fps": round(frames / wall, 2), "cpu_percent": round(100 * cpu / wall, 1),
            "cpu_ms_per_frame": round(1000.0 * cpu / max(1, frames), 1), "enrolled": len(names)}


def _cpu_s() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def bench_sizes(cfg: Config, images_dir: Path, source: str, sizes: list[tuple[int, int]], peer: bool,
                rounds: int = 1) -> dict:
    """Per size, `source` scaled to it and run three ways: through the whole app at the file's own
    rate (`realtime`: the 95%-of-source target), through the whole app as fast as it goes
    (`throughput`), and the `face_recognition` library's loop, also as fast as it goes (`peer`);
    `ratio` compares the two flat-out rates. With the machine it ran on.

    With `rounds` > 1 the two flat-out runs alternate that many times and the median run of each is
    reported (all rates under `runs`): a shared machine's speed drifts by a fifth between minutes,
    and alternating puts the drift on both sides of the ratio.
    """
    import os
    import platform
    import tempfile

    import cv2

    d = cfg.detection
    out = {"machine": {"cpus": os.cpu_count(), "load_avg_before": [round(v, 2) for v in os.getloadavg()],
                       "python": platform.python_version(), "opencv": cv2.__version__,
                       "max_side": d.max_side, "workers": d.workers, "upsample": d.upsample, "rounds": rounds},
           "sizes": {}}
    seen: dict = {}
    with tempfile.TemporaryDirectory(prefix="door-bench-clips-") as tmp:
        for size in sizes:
            clip = scaled_clip(source, size, Path(tmp))
            row = {"realtime": bench_pipeline(cfg, images_dir, clip, True, seen)}
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(bench_pipeline(cfg, images_dir, clip, False, seen))
                if peer:
                    theirs.append(bench_peer(cfg, images_dir, clip))
            row["throughput"] = _median_run(ours, "processed_fps")
            row["target_fps"] = round(0.95 * row["realtime"]["source_fps"], 2)
            row["runs"] = {"ours": [r["processed_fps"] for r in ours]}
            if theirs and theirs[0].get("fps"):
                fast, slow = row["throughput"], _median_run(theirs, "fps")
                row["peer"], row["runs"]["peer"] = slow, [r["fps"] for r in theirs]
                row["ratio"] = round(fast["processed_fps"] / slow["fps"], 2)
                # CPU per frame, theirs over ours: the FPS ratio on one core each
                row["cpu_ratio"] = round(slow["cpu_ms_per_frame"] / max(1e-6, fast["cpu_ms_per_frame"]), 2)
            elif theirs:
                row["peer"] = theirs[0]  # skipped, with the reason
            out["sizes"][f"{size[0]}x{size[1]}"] = row
    out["machine"]["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower of the middle two for an even count)."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def sizes_table(result: dict) -> str:
    """`bench_sizes`' result as a text table, one line per size."""
    m = result["machine"]
    rounds = m.get("rounds", 1)
    lines = [f"{m['cpus']} CPUs, load {m['load_avg_before']} -> {m.get('load_avg_after')}, "
             f"max_side {m['max_side']}, upsample {m['upsample']}"
             + (f"; flat out: the median of {rounds} alternating runs each" if rounds > 1 else ""),
             f"{'size':>9} | {'realtime FPS':>12} {'dropped':>7} {'latency':>7} | {'flat-out FPS':>12} "
             f"{'CPU/frame':>9} | {'peer FPS':>8} {'CPU/frame':>9} | {'ratio':>5} {'CPU ratio':>9}"]
    for size, row in result["sizes"].items():
        rt, fast, peer = row["realtime"], row["throughput"], row.get("peer", {})
        lat = f"{rt['latency_p50_s']:.2f} s" if rt["latency_p50_s"] is not None else "-"
        lines.append(f"{size:>9} | {rt['processed_fps']:>12.1f} {rt['frames_dropped']:>7} {lat:>7} | "
                     f"{fast['processed_fps']:>12.1f} {fast['cpu_ms_per_frame']:>6.1f} ms | "
                     f"{peer.get('fps', float('nan')):>8.1f} {peer.get('cpu_ms_per_frame', float('nan')):>6.1f} ms | "
                     f"{row.get('ratio', float('nan')):>4.1f}x {row.get('cpu_ratio', float('nan')):>8.1f}x")
    return "\n".join(lines)
