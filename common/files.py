"""Writing results: one JSON writer for every results and summary file edgebind produces (standard library and numpy only)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "json_default", "private_dir", "private_file", "write_json"]


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a unique temporary file beside ``path``, fsync, rename: readers (and other writers) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (``atomic_write``)."""
    return atomic_write(path, json.dumps(obj, indent=2, default=json_default).encode())


def json_default(o: Any) -> Any:
    """numpy scalars and arrays as numbers and lists, dataclasses as dicts, anything else (paths, ...) as its text."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def private_dir(path: str | Path) -> Path:
    """``path`` as a directory; the folders this creates are 0700 (only the owner reads a node's or coordinator's data)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    return path


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (a database file SQLite then opens; its -wal and -shm files follow its mode)."""
    path = Path(path)
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    return path


def write_secret(path: str | Path, data: bytes) -> Path:
    """Write a new file readable by its owner alone (0600, in a 0700 folder); an existing file is never overwritten."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path
