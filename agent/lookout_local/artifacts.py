"""Datasets and models every host can read: in fleet mode their files are kept in PostgreSQL too.

With SQLite (one host) the folder under ``--state-dir`` is the truth and these functions do nothing.

With PostgreSQL, workers on other hosts need what one worker wrote: training reads the dataset an ingestion
wrote, inference reads the model a training wrote. So:

- ``publish`` stores every file of the folder in ``lookout_artifacts`` under a new version, in the caller's
  transaction (the one that records the job or the model SUCCESS), and marks the folder with that version
  (``.version``): readers see the old set or the new one, never half;
- ``fetch`` returns a folder holding the published version: the resource's own folder when its marker is that
  version (the host that wrote it), else ``<folder>@<version>``, downloaded once into a temporary folder and
  renamed into place, never changed after (two processes on one host may fetch at once: the first rename wins);
- ``forget`` deletes the rows and every local copy (DeleteDataset, DeleteModel).

Sizes: a model is a few hundred kB; a dataset is the ingested history (one row per file, each one PostgreSQL
``bytea`` value, at most 1 GB), fetched only by the worker that trains on it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from agent.core.atomic import write_atomic

MARKER = ".version"


def _shared(ctx) -> bool:
    return getattr(ctx.state, "is_postgres", False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def publish(ctx, kind: str, name: str, folder: Path) -> str | None:
    """Store ``folder``'s files as the new version of (kind, name); returns the version (None with SQLite)."""
    if not _shared(ctx):
        return None
    version = uuid.uuid4().hex
    state = ctx.state
    with state.transaction():
        state._query("DELETE FROM lookout_artifacts WHERE kind=%s AND name=%s", (kind, name))
        for path in _files(folder):
            state._query("INSERT INTO lookout_artifacts (kind, name, version, path, data) VALUES (%s,%s,%s,%s,%s)",
                         (kind, name, version, path.relative_to(folder).as_posix(), path.read_bytes()))
    write_atomic(folder / MARKER, version.encode())
    _remove_copies(folder, keep=None)
    return version


def fetch(ctx, kind: str, name: str, folder: Path) -> Path:
    """A local folder with the published files of (kind, name); ``folder`` itself when it has them (or with
    SQLite, or when nothing was published: a state folder from before fleet mode stores)."""
    if not _shared(ctx):
        return folder
    rows = ctx.state._query("SELECT version FROM lookout_artifacts WHERE kind=%s AND name=%s LIMIT 1", (kind, name))
    if not rows:
        return folder
    version = rows[0][0]
    try:
        if (folder / MARKER).read_text() == version:
            return folder
    except OSError:
        pass
    copy = folder.with_name(f"{folder.name}@{version}")
    if copy.is_dir():
        return copy
    files = ctx.state._query("SELECT path, data FROM lookout_artifacts WHERE kind=%s AND name=%s AND version=%s",
                             (kind, name, version))
    tmp = folder.with_name(f".{folder.name}@{version}.{uuid.uuid4().hex[:8]}")
    try:
        for rel, data in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, bytes(data))
        try:
            os.rename(tmp, copy)
        except OSError:
            if not copy.is_dir():  # not another process's rename that won: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_copies(folder, keep=version)  # what an older version left here
    return copy


def forget(ctx, kind: str, name: str, folder: Path) -> None:
    """Delete (kind, name)'s published files and every local copy, ``folder`` included."""
    if _shared(ctx):
        ctx.state._query("DELETE FROM lookout_artifacts WHERE kind=%s AND name=%s", (kind, name))
    shutil.rmtree(folder, ignore_errors=True)
    _remove_copies(folder, keep=None)


def _remove_copies(folder: Path, keep: str | None) -> None:
    """Remove the fetched copies ``<folder>@<version>`` (older versions, once a newer one is published)."""
    if not folder.parent.is_dir():
        return
    for other in folder.parent.glob(f"{folder.name}@*"):
        if keep is None or other.name != f"{folder.name}@{keep}":
            shutil.rmtree(other, ignore_errors=True)
