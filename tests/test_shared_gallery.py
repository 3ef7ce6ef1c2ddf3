"""Several doors on one shared images folder: each keeps its own embedding cache, and a photo
dropped into the folder is enrolled by every door while they run (two real door processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from conftest import FR_IMAGES, REPO, wait_for


def blank_clip(path, seconds: float, fps: float = 5.0):
    """An empty corridor: cheap to detect on, long enough to outlast the test (killed before its end)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    frame = np.full((120, 160, 3), 90, np.uint8)
    for _ in range(int(seconds * fps)):
        writer.write(frame)
    writer.release()
    return path


class Door:
    def __init__(self, root, door_id: str, images, clip):
        folder = root / door_id
        folder.mkdir()
        self.cache = folder / "cache"
        (folder / "config.yaml").write_text(
            f"paths:\n  images: {images}\n  weights: {REPO / 'weights'}\n  cache: cache\n"
            f"door:\n  id: {door_id}\npipeline:\n  gallery_poll_s: 0.5\ntts:\n  enabled: false\n"
            f"liveness:\n  enabled: false\naccess_log:\n  snapshots_dir: null\n")
        self.events: list[dict] = []
        self.ready = threading.Event()
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "door_access", "run", "--config", str(folder / "config.yaml"), "--source",
             str(clip), "--realtime", "--headless", "--events-json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_events(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_log(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            if " ready: " in line:
                self.ready.set()

    def galleries(self) -> list[str]:
        return [e["detail"] for e in self.events if e["event"] == "gallery"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.mark.model
def test_a_photo_added_to_a_shared_folder_is_enrolled_on_both_doors(tmp_path):
    shared = tmp_path / "share" / "images"
    (shared / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", shared / "obama" / "1.jpg")
    clip = blank_clip(tmp_path / "corridor.mp4", seconds=600)
    doors = [Door(tmp_path, "north", shared, clip), Door(tmp_path, "south", shared, clip)]
    try:
        for door in doors:
            assert wait_for(lambda d=door: d.ready.is_set() or d.proc.poll() is not None, 300), door.stderr[-20:]
            assert door.ready.is_set(), "".join(door.stderr[-20:])
        shutil.copy(FR_IMAGES / "biden.jpg", shared / "biden.jpg")  # e.g. from the front desk's PC
        for door in doors:
            assert wait_for(lambda d=door: any(g.startswith("2 people, 2 photos") for g in d.galleries()), 120), \
                (door.galleries(), "".join(door.stderr[-20:]))
    finally:
        codes = [door.stop() for door in doors]
    assert codes == [0, 0], [d.stderr[-10:] for d in doors]
    for door in doors:  # each door its own cache: no SQLite file shared over the network
        assert (door.cache / "embeddings.sqlite").is_file()
