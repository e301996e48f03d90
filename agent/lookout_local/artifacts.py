"""Datasets and models every host can read: in fleet mode their files are kept in PostgreSQL too.

With SQLite (one host) the folder under ``--state-dir`` is the truth and these functions do nothing.

With PostgreSQL, workers on other hosts need what one worker wrote: training reads the dataset an ingestion
wrote, inference reads the model a training wrote. So:

- ``publish`` stores every file of the folder under a new version, in the caller's transaction (the one that
  records the job or the model SUCCESS), and marks the folder with that version (``.version``): readers see
  the old set or the new one, never half;
- ``fetch`` returns a folder holding the published version: the resource's own folder when its marker is that
  version (the host that wrote it), else ``<folder>@<version>``, downloaded once into a temporary folder and
  renamed into place, never changed after (two processes on one host may fetch at once: the first rename wins);
- ``forget`` deletes the rows and every local copy (DeleteDataset, DeleteModel).

Memory: a file is never held whole. It is a manifest row in ``lookout_artifacts`` (size, SHA-256, chunk
count) plus ``CHUNK_BYTES`` chunks in ``lookout_artifact_chunks``; publishing reads and inserts one chunk at a
time, fetching reads them through a server-side cursor one at a time, so either side holds a few chunks
(tens of MB) whatever the size (a dataset is the ingested history, up to GBs; a model a few hundred kB).
Chunks are plain rows rather than PostgreSQL large objects: they belong to the publishing transaction, go with
a ``DELETE`` and cannot be orphaned (large objects outlive the rows naming them unless unlinked).

Integrity: a download reads the manifest and the chunks in one REPEATABLE READ snapshot (a version published
meanwhile cannot mix in), checks every file's chunk sequence, size and SHA-256, and fsyncs every file and
folder before the rename that makes ``<folder>@<version>`` exist. A download cut anywhere (a mismatch, the
database gone, the process killed) leaves at most a hidden ``.<name>@<version>.<pid>.<random>`` folder, never
taken as a copy: it is removed by the failing process, or by the next fetch on the host once its process is
gone (one host's ``--state-dir`` belongs to that host).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from agent.core.atomic import fsync_dir, write_atomic

log = logging.getLogger(__name__)

MARKER = ".version"
CHUNK_BYTES = 4 * 1024 * 1024
STALE_UNKNOWN_SECS = 3600  # a temporary folder naming no process (older layout): removed after this long


class ArtifactError(Exception):
    """A download that cannot give a complete, verified copy (corrupt or missing chunks)."""


class VersionReplaced(ArtifactError):
    """The version being fetched was replaced (or deleted) between reading its name and its files."""


def _shared(ctx) -> bool:
    return getattr(ctx.state, "is_postgres", False)


def _files(folder: Path) -> list[Path]:
    """The files to publish: hidden names (the marker, temporaries, a staging folder left by a killed
    ingestion) are not part of a dataset or model."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def publish(ctx, kind: str, name: str, folder: Path, *, chunk_bytes: int = CHUNK_BYTES) -> str | None:
    """Store ``folder``'s files as the new version of (kind, name), ``chunk_bytes`` at a time; returns the
    version (None with SQLite)."""
    if not _shared(ctx):
        return None
    version = uuid.uuid4().hex
    state = ctx.state
    with state.transaction():
        _delete_rows(state, kind, name)
        for path in _files(folder):
            rel = path.relative_to(folder).as_posix()
            digest, size, seq = hashlib.sha256(), 0, 0
            with open(path, "rb") as fh:
                while block := fh.read(chunk_bytes):
                    digest.update(block)
                    size += len(block)
                    # %b: bytea sent in binary (text format would double it in hex)
                    state._query("INSERT INTO lookout_artifact_chunks (kind, name, version, path, seq, data) "
                                 "VALUES (%s,%s,%s,%s,%s,%b)", (kind, name, version, rel, seq, block))
                    seq += 1
            state._query("INSERT INTO lookout_artifacts (kind, name, version, path, size, sha256, chunks) "
                         "VALUES (%s,%s,%s,%s,%s,%s,%s)", (kind, name, version, rel, size, digest.hexdigest(), seq))
    write_atomic(folder / MARKER, version.encode())
    _remove_copies(folder, keep=None)
    return version


def fetch(ctx, kind: str, name: str, folder: Path) -> Path:
    """A local folder with the published files of (kind, name); ``folder`` itself when it has them (or with
    SQLite, or when nothing was published: a state folder from before fleet mode stores). Raises
    ArtifactError (a copy failing its checks), OSError, or psycopg's errors; nothing is left that a later
    call would take as a copy. A version replaced during the download is fetched again (at most 3 times)."""
    if not _shared(ctx):
        return folder
    attempts = 3
    while True:
        try:
            return _fetch(ctx, kind, name, folder)
        except VersionReplaced:
            attempts -= 1
            if not attempts:
                raise


def _fetch(ctx, kind: str, name: str, folder: Path) -> Path:
    """One attempt of ``fetch`` (PostgreSQL)."""
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_downloads(folder)
    tmp = folder.with_name(f".{folder.name}@{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        _download(ctx.state, kind, name, version, tmp)
        try:
            os.rename(tmp, copy)
        except OSError:
            if not copy.is_dir():  # not another process's rename that won: a real failure
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_copies(folder, keep=version)  # what an older version left here
    return copy


def _download(state, kind: str, name: str, version: str, tmp: Path) -> None:
    """Write ``version``'s files under ``tmp`` (created), verified and fsynced; one chunk in memory at a time."""
    tmp.mkdir()
    folders = {tmp}
    with state.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        manifest = conn.execute("SELECT path, size, sha256, chunks FROM lookout_artifacts "
                                "WHERE kind=%s AND name=%s AND version=%s", (kind, name, version)).fetchall()
        if not manifest:
            raise VersionReplaced(f"{kind} {name!r}: version {version} was replaced or deleted during the download")
        for rel, size, sha256, chunks in manifest:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            folders.update(p for p in target.parents if p.is_relative_to(tmp))
            digest, written, seq = hashlib.sha256(), 0, 0
            with open(target, "wb") as out, conn.cursor(name=f"artifact_{uuid.uuid4().hex[:12]}") as cur:
                cur.itersize = 1  # one chunk per round trip: the memory bound
                cur.execute("SELECT seq, data FROM lookout_artifact_chunks WHERE kind=%s AND name=%s AND "
                            "version=%s AND path=%s ORDER BY seq", (kind, name, version, rel), binary=True)
                for got, data in cur:
                    if got != seq:
                        raise ArtifactError(f"{kind} {name!r} {rel}: chunk {seq} is missing")
                    digest.update(data)
                    written += len(data)
                    out.write(data)
                    seq += 1
                out.flush()
                os.fsync(out.fileno())
            if (seq, written, digest.hexdigest()) != (chunks, size, sha256):
                raise ArtifactError(f"{kind} {name!r} {rel}: got {seq} chunks, {written} bytes, sha256 "
                                    f"{digest.hexdigest()}; published {chunks} chunks, {size} bytes, sha256 {sha256}")
    for path in folders:  # the entries are durable before the rename publishes the copy
        fsync_dir(path)


def forget(ctx, kind: str, name: str, folder: Path) -> None:
    """Delete (kind, name)'s published files and every local copy, ``folder`` included."""
    if _shared(ctx):
        with ctx.state.transaction():
            _delete_rows(ctx.state, kind, name)
    shutil.rmtree(folder, ignore_errors=True)
    _remove_copies(folder, keep=None)


def _delete_rows(state, kind: str, name: str) -> None:
    state._query("DELETE FROM lookout_artifact_chunks WHERE kind=%s AND name=%s", (kind, name))
    state._query("DELETE FROM lookout_artifacts WHERE kind=%s AND name=%s", (kind, name))


def _remove_copies(folder: Path, keep: str | None) -> None:
    """Remove the fetched copies ``<folder>@<version>`` (older versions, once a newer one is published)."""
    if not folder.parent.is_dir():
        return
    for other in folder.parent.glob(f"{folder.name}@*"):
        if keep is None or other.name != f"{folder.name}@{keep}":
            shutil.rmtree(other, ignore_errors=True)


def _remove_abandoned_downloads(folder: Path) -> None:
    """Remove the temporary folders of downloads whose process is gone (killed in the middle); a download
    running in another process of this host is left alone."""
    for tmp in folder.parent.glob(f".{folder.name}@*"):
        parts = tmp.name.rsplit("@", 1)[-1].split(".")  # version, pid, random
        if len(parts) == 3 and parts[1].isdigit():
            if _alive(int(parts[1])):
                continue
        else:
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime < STALE_UNKNOWN_SECS:
                    continue
        log.info("removing %s, the download of a process that is gone", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
