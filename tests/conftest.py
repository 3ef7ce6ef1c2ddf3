"""Shared fixtures: the real models, loaded once per test session, and the package-shipped photos.

`door-access setup` (run by `make test`) puts the weights in weights/ and the photos in
.cache/testdata/; the tests use those, never stand-in arrays.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from door_access.config import Config, PathsConfig
from door_access.tools.assets import is_complete, testdata_dir

REPO = Path(__file__).resolve().parents[1]
TESTDATA = testdata_dir(REPO / ".cache")
CELEBRITY = TESTDATA / "celebrity"
FR_IMAGES = TESTDATA / "face_recognition"
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    if not is_complete(REPO / "weights", REPO / ".cache"):
        raise pytest.UsageError("models and test photos are missing: run `door-access setup` (or `make test`)")


# Tests that load the FaceNet or dlib models get the `model` marker (`pytest -m "not model"` runs the
# rest in seconds): those using a model fixture, and whole modules that run the app or its models.
MODEL_FIXTURES = {"detector", "encoder", "celebrity_gallery", "setup_dir", "lfw_like", "door_run",
                  "shared_encoder", "photo_attack_clip"}
MODEL_MODULES = {"test_cli", "test_door", "test_facenet", "test_faults", "test_liveness"}


# The modules that take longest on one worker (seconds of wall time under `make test`, 6 December 2026),
# slowest first: `make test` hands them out first (--no-loadscope-reorder), so that no long module starts
# last while the other workers have run out of work. The other modules follow in file order.
SLOW_FIRST = ["test_evaluation",  # 137 s
              "test_faults", "test_liveness_binding", "test_liveness_real", "test_enrollment", "test_stall",
              "test_door", "test_liveness", "test_speed", "test_privacy", "test_relock_first",  # 82-38 s
              "test_live_samples", "test_kiosk", "test_spoof", "test_actions", "test_attacks"]  # 29-21 s


def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or _module(item) in MODEL_MODULES:
            item.add_marker(pytest.mark.model)
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(SLOW_FIRST)))  # stable: each module's own order kept


def make_config(tmp_path: Path, **sections) -> Config:
    """Default config using the real weights, with its cache (and anything else given) in tmp_path."""
    cfg = Config(paths=PathsConfig(images=str(tmp_path / "images"), weights=str(REPO / "weights"),
                                   cache=str(tmp_path / "cache")), base_dir=REPO)
    return dataclasses.replace(cfg, **sections)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def cfg(session_dir) -> Config:
    return make_config(session_dir)


@pytest.fixture(scope="session")
def detector(cfg):
    from door_access.faces.detection import FaceDetector

    return FaceDetector(cfg.detection, cfg.path("weights"))


@pytest.fixture(scope="session")
def encoder(cfg):
    from door_access.faces.facenet import FaceEncoder

    return FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5", cfg.pipeline.encoder_threads)


@pytest.fixture
def shared_encoder(encoder, monkeypatch):
    """The app's FaceNet loader hands out the session's model for the real weights file, so a command
    run in this process (`main([...])`) skips a model load of several seconds; other files load as usual."""
    from door_access.faces import facenet

    load_file = facenet.FaceEncoder
    session_weights = (REPO / "weights" / "facenet_keras3.weights.h5").resolve()

    def load(weights_path, threads: int = 0):
        return encoder if Path(weights_path).resolve() == session_weights else load_file(weights_path, threads)

    monkeypatch.setattr(facenet, "FaceEncoder", load)  # the app imports it when it loads the model
    return encoder


@pytest.fixture
def door_run(shared_encoder, capsys):
    """`door-access run --headless --events-json` in this process, on the session's FaceNet model.

    The same CLI, config file, app and exit code as the subprocess, without a TensorFlow import and
    a model load (several seconds) per run; tests of signals, the window and exits stay subprocesses.
    Returns `run(config, source, *args) -> (exit code, events as dicts, stderr)`.
    """
    from door_access.cli import main

    def run(config: Path, source, *args: str) -> tuple[int, list[dict], str]:
        capsys.readouterr()
        code = main(["run", "--config", str(config), "--source", str(source), "--headless", "--events-json", *args])
        out, err = capsys.readouterr()
        return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err

    return run


@pytest.fixture(scope="session")
def photo_attack_clip(detector, tmp_path_factory) -> Path:
    """democlip's 6 s photo attack on obama2.jpg (a print held still, moved, tilted, relit)."""
    from door_access.tools.democlip import write_photo_attack

    return write_photo_attack(detector, FR_IMAGES / "obama2.jpg", tmp_path_factory.mktemp("attack") / "attack.mp4",
                              seconds=6.0)


def write_site(root: Path, config_yaml: str) -> Path:
    """An installation folder: images/obama/ (two package photos; a third, obama2.jpg, is left
    for clips) and a config.yaml using the real weights, with `config_yaml` appended."""
    (root / "images" / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", root / "images" / "obama" / "a.jpg")
    shutil.copy(FR_IMAGES / "obama3.jpg", root / "images" / "obama" / "b.jpg")
    (root / "config.yaml").write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n{config_yaml}")
    return root


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def copy_people(src: Path, dest: Path) -> Path:
    """Copy a `<person>/*.jpg` tree (e.g. the celebrity train split) as an images/ folder."""
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A folder of this whole run: shared by the pytest-xdist workers (each has its own basetemp in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def celebrity_gallery(cfg, detector, encoder, session_dir, run_dir):
    """The 5-celebrity train photos enrolled (93 photos, 5 people). The embedding cache is the run's,
    so the first worker to build the gallery encodes the photos and the others read them back."""
    from door_access.recognition.gallery import GalleryBuilder

    images = copy_people(CELEBRITY / "train", session_dir / "celebrity_images")
    shared = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, cache=str(run_dir / "celebrity-cache")))
    with open(run_dir / "celebrity.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker encodes at a time: the next finds the cache filled
        return GalleryBuilder(shared, detector, encoder).build(images)


class Datagrams:
    """A bound AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET, collecting what arrives."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def messages(self) -> list[str]:
        return [m for _, m in self.got]

    def close(self):
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()
