"""Quiet start-up: TensorFlow, absl and OpenCV report only errors unless --verbose.

Their start-up chatter (oneDNN notices, CUDA probing, backend probing for a missing camera)
would bury the app's own lines. Environment variables must be set before the libraries load;
TensorFlow's native absl logging ignores them before it is initialised, so its import is also
run with the process's stderr (fd 2) pointed at /dev/null.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

_quiet = False


def quiet_libraries(verbose: bool) -> None:
    global _quiet
    _quiet = not verbose
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING (oneDNN, CUDA probing)
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
