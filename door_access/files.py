"""Small file helpers shared by setup, the encoder, the gallery, the access log and `forget`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# What the door writes that holds a face or a template is for the user the door runs as only.
PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def private_dir(path: Path) -> Path:
    """`path` as a folder: created 0700 (its missing parents too) when missing; an existing one is left as it is."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.parent.exists():
        private_dir(path.parent)
    try:
        path.mkdir(mode=PRIVATE_DIR)  # the umask can only narrow 0700
    except FileExistsError:
        pass
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and 0600 unless it exists (never truncated). SQLite gives a database's -wal,
    -shm and -journal files the database file's own mode, so creating it here makes those private too."""
    private_dir(Path(path).parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return Path(path)
    os.close(fd)
    return Path(path)


def write_private(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write `data` to `path`, created with `mode` before any byte is in it (an umask cannot widen it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # an existing file would keep its old mode through O_CREAT
        f.write(data)

