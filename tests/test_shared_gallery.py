"""Several doors on one shared images folder: each keeps its own embedding cache, and a photo
dropped into the folder is enrolled by every door while they run (two doors running at once in this
process, each wired by the app as `run` wires it, on the session's model)."""

from __future__ import annotations

import dataclasses
import shutil

import cv2
import numpy as np

from door_access.config import AccessLogConfig, DoorConfig, LivenessConfig, PipelineConfig, TtsConfig

from conftest import FR_IMAGES, make_config, wait_for


def blank_clip(path, seconds: float, fps: float = 5.0):
    """An empty corridor: cheap to detect on, long enough to outlast the test (stopped before its end)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    frame = np.full((120, 160, 3), 90, np.uint8)
    for _ in range(int(seconds * fps)):
        writer.write(frame)
    writer.release()
    return path


def door(root, door_id: str, images, clip, encoder):
    """A door on the shared `images` with its own folder (cache, log), playing `clip` in real time."""
    from door_access.app import build_pipeline
    from door_access.runner import open_capture

    folder = root / door_id
    cfg = make_config(folder, door=DoorConfig(id=door_id), tts=TtsConfig(enabled=False),
                      liveness=LivenessConfig(enabled=False), pipeline=PipelineConfig(gallery_poll_s=0.5),
                      access_log=AccessLogConfig(path=str(folder / "log.sqlite"), snapshots_dir=None))
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, images=str(images)))
    events = []
    pipeline = build_pipeline(cfg, images, open_capture(cfg, str(clip), realtime=True), events.append,
                              encoder=encoder)
    return pipeline, events, folder / "cache"


def galleries(events) -> list[str]:
    return [e.detail for e in events if e.event == "gallery"]


def test_a_photo_added_to_a_shared_folder_is_enrolled_on_both_doors(tmp_path, encoder):
    shared = tmp_path / "share" / "images"
    (shared / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", shared / "obama" / "1.jpg")
    clip = blank_clip(tmp_path / "corridor.mp4", seconds=600)
    doors = [door(tmp_path, "north", shared, clip, encoder), door(tmp_path, "south", shared, clip, encoder)]
    for pipeline, _, _ in doors:
        pipeline.start()
    try:
        for pipeline, _, _ in doors:
            assert pipeline.recognizer.people == ["obama"] and pipeline.recognizer.photo_count == 1
        shutil.copy(FR_IMAGES / "biden.jpg", shared / "biden.jpg")  # e.g. from the front desk's PC
        for pipeline, events, _ in doors:
            assert wait_for(lambda e=events: any(g.startswith("2 people, 2 photos") for g in galleries(e)), 120), \
                galleries(events)
            assert pipeline.failure is None
    finally:
        for pipeline, _, _ in doors:
            pipeline.stop()
    for _, _, cache in doors:  # each door its own cache: no SQLite file shared over the network
        assert (cache / "embeddings.sqlite").is_file()
