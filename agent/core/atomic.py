"""Atomic file replacement: after a crash or power cut a file holds its old content or its new one, never half.

Every state file the agent keeps (progress, clock anchor, alarm state, results cursor, discovery cache, pinned
OPC-UA certificates, outbox and folder-store objects) is written through :func:`write_atomic`, so all of them
have the same durability:

1. the bytes go to a temporary file beside the target (same folder, hence same file system, so the rename is
   atomic), named ``.<name>.tmp`` so listings that skip dot files never see it;
2. the temporary file is fsynced (the data is on disk before it gets the name);
3. it is renamed over the target (``os.replace``: atomic on POSIX);
4. the folder is fsynced (the rename itself is on disk: without it a power cut can bring the old name back).

On any failure (ENOSPC, EIO, a read-only remount) the temporary file is removed and the OSError propagates;
the target is untouched, so a failed write never destroys durable data.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    """fsync a folder, making the entries created, renamed or removed in it durable. Raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes, *, tmp_dir: Path | None = None,
                 prepare: Callable[[Path], None] | None = None) -> None:
    """Replace ``path`` with ``data`` durably (see the module docstring). Raises OSError; the old file stays.

    ``tmp_dir`` puts the temporary file in another folder of the same file system (the outbox keeps its
    partial files out of the window folders); ``prepare(tmp)`` runs after the fsync and before the rename
    (file mode, ownership). The target's folder must exist.
    """
    path = Path(path)
    tmp = (tmp_dir if tmp_dir is not None else path.parent) / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if prepare is not None:
            prepare(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: drop the partial copy; the old file is intact
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def replace_with(path: Path | str, write: Callable[[Path], None]) -> None:
    """Like :func:`write_atomic`, for a library that writes files itself (``frame.to_parquet(tmp)``):
    ``write(tmp)`` fills the temporary file, which is then fsynced, renamed over ``path`` and the folder
    fsynced. Raises what ``write`` raises or OSError; the old file stays and the temporary is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path | str, doc: Any, **dumps: Any) -> None:
    """:func:`write_atomic` of ``json.dumps(doc, **dumps)`` (UTF-8). Raises OSError, TypeError (not JSON)."""
    write_atomic(path, json.dumps(doc, **dumps).encode())
