"""The one atomic writer: every file kaggle-tli writes goes through a temp file, fsync and `os.replace`.

A process killed at any moment (SIGKILL included) leaves the previous complete file or the new complete file,
never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = 0o644, locked: bool = False) -> Path:
    """Write `data` to `path` so that readers (and a crash) see the old file or the new one, never a mix.

    mode: the file's permissions (None: leave the temp file's). A run folder is meant to be shared, so 0644.
    locked: the caller holds a lock on `path` (the ledger does), so one fixed temp name `<name>.tmp` is safe: a
        writer killed mid-write leaves that one file, which the next write replaces, instead of a new stray each time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if locked:
        tmp = str(path.with_name(path.name + ".tmp"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename inside it is durable (silently skipped where folders cannot be fsynced)."""
    # the rename itself must reach the disk, or a power cut can bring the old name back
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) do not fsync directories
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`atomic_write_bytes` for an indented JSON document."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")
