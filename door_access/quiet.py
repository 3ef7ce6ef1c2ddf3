"""What the app writes on stderr besides its own log lines: libraries kept quiet, and a progress
bar for long commands while stderr is a terminal.

TensorFlow, absl and OpenCV report only errors unless --verbose. Their start-up chatter (oneDNN
notices, CUDA probing, backend probing for a missing camera) would bury the app's own lines.
Environment variables must be set before the libraries load; TensorFlow's native absl logging
ignores them before it is initialised, so its import is also run with the process's stderr (fd 2)
pointed at /dev/null. On a machine without a GPU, TensorFlow's first use still logs its failed
GPU probe as an ERROR (`failed call to cuInit`, which reads as a fault); there its C++ log level
is raised to FATAL (CUDA_VISIBLE_DEVICES does not stop the probe: measured with TF 2.21).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_quiet = False
GPU_DEVICES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")  # NVIDIA, WSL, ROCm


def tf_log_level() -> str:
    """TF_CPP_MIN_LOG_LEVEL for a quiet start: hide INFO and WARNING; also ERROR where no GPU
    device exists, as TensorFlow's only error there is its GPU probe failing."""
    return "2" if any(glob.glob(pattern) for pattern in GPU_DEVICES) else "3"


def quiet_libraries(verbose: bool) -> None:
    global _quiet
    _quiet = not verbose
    # C++ INFO, WARNING and a GPU probe that cannot succeed hidden; everything with --verbose
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tf_log_level() if not verbose else "0")
    if not verbose:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")  # probing backends logs "errors" for a missing camera
        os.environ.setdefault("GLOG_minloglevel", "2")
    for name in ("tensorflow", "absl", "keras", "h5py", "PIL", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR if not verbose else logging.NOTSET)
    cv_logging = getattr(getattr(sys.modules.get("cv2"), "utils", None), "logging", None)
    if cv_logging is not None:  # already imported (tests, or a caller that imported cv2 first)
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT if not verbose else cv_logging.LOG_LEVEL_WARNING)


@contextmanager
def native_stderr_silenced():
    """Native libraries' writes to fd 2 go to /dev/null inside (unless --verbose); Python exceptions still rise."""
    if not _quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def progress_bar(what: str, total: float | None, unit: str = "it"):
    """A tqdm bar (`.update(n)`) on stderr while it is a terminal; a silent one otherwise (tests, CI,
    pipes, the journal). Log lines written meanwhile go above the bar instead of through it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(desc=what, total=total, unit=unit, file=sys.stderr, disable=None, leave=False,
              dynamic_ncols=True) as bar:
        if bar.disable:
            yield bar
            return
        with logging_redirect_tqdm():
            yield bar


def progress(items: Iterable[T], what: str, unit: str = "it") -> Iterator[T]:
    """`items` one by one, counted on a `progress_bar`."""
    total = len(items) if hasattr(items, "__len__") else None
    with progress_bar(what, total, unit) as bar:
        for item in items:
            yield item
            bar.update()
