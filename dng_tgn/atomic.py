"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A process killed mid-write therefore leaves either the previous file or the new one, never a truncated file.
Builders, checkpoints, stream and encoder files all write through here; ``kill_point`` hooks let the
fault-injection tests kill a process exactly between writing and committing.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch

from .faults import kill_point

__all__ = ["atomic_write_bytes", "atomic_torch_save", "atomic_write_json"]


_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
        kill_point(f"write/{path.name}")  # fault-injection tests: killed with the file written but not committed
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    kill_point(f"wrote/{path.name}")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())
