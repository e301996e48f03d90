"""Durable raw readings: segments of records on local disk, one or more per (window, agent run).

Records (agent.pipeline.columns): appends are whole records (one per flush and window, not one write per reading), each
carries its length and a CRC so a torn last record after a crash is detected and skipped while every earlier
one is kept, and a window's segments load straight into the resampler as numpy columns. A window's data lives
in its own files, so acknowledging a written window is an unlink, not a compaction. Segments of the previous
format (Arrow IPC streams, ``.arrows``) left by an older version are still read (pyarrow is imported then only).

Contract:
- ``append(batch)`` is the hot path: it only extends an in-memory list (O(1) per reading, no I/O).
- ``flush()`` writes everything appended since the last flush and fsyncs it; the service calls it at least
  every ``fsync_interval_ms``. What was flushed survives kill -9 and power loss; what was not is at most one
  interval of readings.
- ``read(end)`` returns every flushed reading of the window (start, end] as ``Columns`` (sensor names, ts
  float64 Unix seconds, value float64), in append order. ``open_window(end)`` gives the same readings group by
  group (agent.pipeline.windowread): the window closer's way, so a close holds one group of sensors at a time.
- Groups (``set_groups``, agent.pipeline.groups): each flush writes one record per window and group of sensors
  (readings of sensors in no group in a record of their own), all records of one flush of a window in one
  write and one fsync, so a window can be read back group by group. The record format is unchanged (each record
  names its sensors); a file written with other groups, or none, is read the same way, only less efficiently.
  Before a window is used, a first pass over all its segments validates every record (CRC, torn tail) and
  keeps only where each one is; the bodies are read again group by group.
- ``flush(keep_upto=end)`` is the flush between two groups of a long window close (the closer's
  ``between_groups``): readings of the window being read stay in memory, as columns, until the next flush.
- ``ack(end)`` deletes the window's segments: call it only after the window's CSVs are durable in the outbox.
- Readings of a window already acknowledged (``closed_upto``) are late: counted in ``late`` and dropped.
- Segment names: ``<window end>-<run id>-<seq>.l4es``; a restart opens new segments, never appends to
  old ones (nothing may follow a torn tail).
- A failed write never destroys what is durable: the segment is cut back to its last good record and
  never written again; the window's readings stay in memory ("held", counted against the disk budget, see
  ``held_bytes``) and the next flush writes them to a NEW segment. ``read`` concatenates all segments of a
  window, so nothing is lost and nothing is written twice. Disk errors go to a ``DiskHealth`` (one WARNING
  per episode, one INFO at recovery, a ``disk`` data-health event).
- A segment that cannot be read (EIO, EACCES, a directory where a segment should be: any OSError) is not a
  torn tail: ``read`` raises ``SegmentUnreadable`` and the segment is kept as it is. The error is counted
  (``read_errors``, by errno name) and logged once per segment (WARNING; DEBUG while it lasts, INFO when it
  reads again); the caller retries later (the window closer with backoff). Only a verified torn tail (short
  record, bad magic, bad CRC) is skipped, and only that tail: nothing is acknowledged or deleted because a
  read failed.
- Validity-end markers (value NaN, see agent.core.model.validity_end) travel like readings; they are never counted
  as late readings.
- ``mark_alive(ts)`` records the clock time of the agent's last sign of life (no fsync: a power cut may lose
  the last second, which only ends held values earlier); ``previous_alive`` is what the previous run left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from agent.core.errors import StateError, TransitionLog
from agent.core.model import Reading
from agent.pipeline.columns import Columns, GroupCut, encode, open_segment, read_file, scan_records
from agent.pipeline.diskhealth import DiskHealth
from agent.pipeline.windowread import FileSegment, MemorySegment, WindowReadings

log = logging.getLogger("l4e.spool")

SUFFIX = ".l4es"
LEGACY_SUFFIX = ".arrows"  # Arrow IPC streams written by earlier versions: read, never written
ALIVE_FILE = "alive"


class SegmentUnreadable(Exception):
    """A spool segment could not be read (an OSError, not a torn tail): the window must not be written or
    acknowledged now; retry later. ``path`` is the segment, ``error`` the OSError."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"spool segment {path.name} cannot be read: {error}")
        self.path = path
        self.error = error


class _Segment:
    """One IPC stream file, appended to with unbuffered writes so the last good length is always known.

    ``append`` writes whole messages (the schema first, for a new file) and fsyncs. If any step fails, the
    file is cut back to its last good length (best effort; a leftover partial message is a torn tail the
    reader skips), a file that never held a record is removed, and the segment must not be used again:
    the next write of the window goes to a NEW segment file, so a failure never touches what is durable.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.size = 0  # bytes known good (written and fsynced)

    def append(self, payload: bytes) -> None:
        created = self.fd is None
        if created:
            # O_EXCL: never reuse (let alone truncate) a file that is already there
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                n = os.write(self.fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
            os.fsync(self.fd)
            if created:
                _fsync_dir(self.path.parent)
        except OSError:
            self.abandon()
            raise
        self.size += len(payload)

    def abandon(self) -> None:
        """Stop using this file after a failed write: cut the partial message, drop an empty file."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.size)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
        if self.size == 0:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """See the module docstring. ``append`` may be called from the event loop while everything else runs in
    one other thread (agent.core.offloop.DiskWorker): the append buffer is handed over under a lock; the
    read-only summaries (``buffered``, ``held_bytes``, ``bytes_on_disk``) may be called from either."""

    def __init__(self, directory: Path, frequency_secs: int, disk: DiskHealth | None = None) -> None:
        self.dir = Path(directory)
        self.frequency = frequency_secs
        self.run_id = f"{time.time_ns():x}"
        self.disk = disk if disk is not None else DiskHealth(self.dir)
        self._buffer: list[Reading] = []
        self._buffer_lock = threading.Lock()  # append (event loop) against flush taking the buffer (worker)
        self._held: dict[int, list[Columns]] = {}  # window end → readings flushed but not yet written
        self._deferred: list[tuple[int, Columns]] = []  # (window end, readings) kept back by flush(keep_upto)
        self._open: dict[int, _Segment] = {}
        self._seq = 0
        self.closed_upto: int | None = None
        self.late = 0
        self.bytes_written = 0  # segment bytes this spool wrote (never decreases; the budget's estimate)
        self.torn_segments = 0
        self.read_errors = Counter()  # errno name (EIO, EACCES, EISDIR, ...) → failed segment reads
        self._read_log = TransitionLog(log)  # one WARNING per unreadable segment, INFO when it reads again
        self.dropped_readings = Counter()  # reason → count
        self._alive_fd: int | None = None
        self.previous_alive: float | None = None
        self._owner: dict[str, int] = {}  # sensor → its group (set_groups); no groups: one record per flush
        self._cut: GroupCut | None = None  # how the last names table is cut into group records
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe-{self.run_id}"
            with open(probe, "wb") as fh:
                fh.write(b"x")
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise StateError(f"spool folder {self.dir} is not writable: {exc}") from exc
        self.previous_alive = self.read_alive()

    def read_alive(self) -> float | None:
        """The clock time the ``alive`` file holds (the last sign of life written), or None."""
        try:
            return float((self.dir / ALIVE_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def set_groups(self, owner: dict[str, int]) -> None:
        """Write the readings of each group of sensors in records of their own (``owner``: sensor → group
        index, agent.pipeline.groups.owners; sensors not in it go to one more record). Takes effect at the next
        flush; records written before are read as they are."""
        self._owner = dict(owner)
        self._cut = None

    def _encode(self, part: Columns) -> bytes:
        """The records of one flush of one window: one per group of sensors (see the module docstring)."""
        if not self._owner:
            return encode(part)
        cut = self._cut
        if cut is None or cut.names != part.names:  # flushes of the same sensors repeat their names table
            owner = self._owner
            cut = self._cut = GroupCut(part.names, np.array([owner.get(n, -1) for n in part.names], dtype=np.int64))
        return b"".join(cut.records(part))

    # --- hot path -------------------------------------------------------------------------------------
    def append(self, batch: list[Reading]) -> None:
        with self._buffer_lock:
            self._buffer.extend(batch)

    # --- durability -----------------------------------------------------------------------------------
    def flush(self, keep_upto: int | None = None) -> int:
        """Write and fsync the buffered readings (and any held from earlier failed writes); returns how many
        were written. Never raises for disk errors: a window whose write failed keeps its readings in memory
        (``held_bytes``, counted against the disk budget by the caller's policy) and is retried at the next
        flush in a new segment file; the failure is reported to ``self.disk`` (logged once per episode).

        ``keep_upto``: the end of a window being closed right now (a flush between two groups of a long close,
        so the readings arriving meanwhile do not pile up in memory as objects). Readings of windows up to it
        (the window being read, and markers ``_take_late`` files with it) are not written into its segments,
        which are read and then deleted: they wait in memory, as columns, for the next flush, which sees the
        window acknowledged and treats them as any late reading."""
        parts: dict[int, list[Columns]] = self._held
        self._held = {}
        for end, cols in self._deferred:
            parts.setdefault(end, []).append(cols)
        self._deferred = []
        with self._buffer_lock:
            buf, self._buffer = self._buffer, []
        if buf:
            cols = Columns.from_readings(buf)
            del buf  # the Reading objects are the bulk of a long close's backlog
            ends = (np.ceil(cols.ts / self.frequency) * self.frequency).astype(np.int64)
            for end in np.unique(ends):
                parts.setdefault(int(end), []).append(cols.filter(ends == end))
        if not parts:
            return 0
        self._take_late(parts)
        if keep_upto is not None:
            for end in [e for e in parts if e <= keep_upto]:
                self._deferred.extend((end, cols) for cols in parts.pop(end))
        written = 0
        error: OSError | None = None
        for end in sorted(parts):
            part = Columns.concat(parts[end])
            try:
                seg = self._open.get(end)
                if seg is None:
                    self._seq += 1
                    seg = self._open[end] = _Segment(self.dir / f"{end}-{self.run_id}-{self._seq:06d}{SUFFIX}")
                payload = self._encode(part)
                seg.append(payload)
                self.bytes_written += len(payload)
                written += part.num_rows
            except OSError as exc:
                error = error or exc
                self._open.pop(end, None)  # abandoned by append: the next write opens a new segment
                self._held[end] = [part]
        if error is not None:
            self.disk.failure("spool", error)
        else:
            self.disk.success("spool")
        return written

    def _take_late(self, parts: dict[int, list[Columns]]) -> None:
        """Readings of windows already written are dropped and counted (``late``). A validity-end marker among
        them is not dropped: the value it ends must stop holding in the windows not yet written (rule 2a), or a
        source lost just before a window closed (its marker is stamped with the last instant the source answered,
        which can be a keep-alive period or more in the past) would have its last value held for ever. Such a
        marker keeps its time and is filed with the next window (agent.pipeline.resample ends a carried value at
        any marker among a window's records): the rows already written stay as they are, and the rows after
        them are what they would have been had the marker come in time (the fill rule counts from its time)."""
        if self.closed_upto is None:
            return
        for end in [e for e in parts if e <= self.closed_upto]:
            part = Columns.concat(parts.pop(end))
            markers = np.isnan(part.value)
            n_late = part.num_rows - int(markers.sum())  # markers are not readings
            if n_late:
                self.late += n_late
                self.dropped_readings["late"] += n_late
                log.debug("dropped %d late readings (their window is already written)", n_late)
            if markers.any():
                parts.setdefault(self.closed_upto + self.frequency, []).append(part.filter(markers))

    def mark_alive(self, ts: float) -> None:
        """Record ``ts`` (clock time) as the last sign of life of this run (see the module docstring)."""
        try:
            if self._alive_fd is None:
                self._alive_fd = os.open(self.dir / ALIVE_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._alive_fd, f"{ts!r:<32}\n".encode(), 0)
        except OSError as exc:
            self.disk.failure("spool", exc)

    def latest_ts(self, sensors: set[str]) -> float | None:
        """The latest timestamp of a reading (not a marker) of ``sensors`` the spool holds, or None."""
        with self._buffer_lock:
            buffered = list(self._buffer)
        best = max((r.ts for r in buffered if r.sensor in sensors and r.value == r.value), default=None)
        parts = [c for cs in list(self._held.values()) for c in cs] + [c for _, c in list(self._deferred)]
        for paths in self._segments(strict=False).values():
            for path in paths:
                with contextlib.suppress(SegmentUnreadable):  # counted and logged; the rest still counts
                    parts.extend(self._read_segment(path))
        for cols in parts:
            wanted = np.array([n in sensors for n in cols.names], dtype=bool)
            if not cols.num_rows or not wanted.any():
                continue
            mask = wanted[cols.code] & ~np.isnan(cols.value)
            if mask.any():
                ts = float(cols.ts[mask].max())
                best = ts if best is None or ts > best else best
        return best

    def _drop_segment_handle(self, end: int) -> None:
        seg = self._open.pop(end, None)
        if seg:
            seg.close()

    # --- reading and acknowledging --------------------------------------------------------------------
    def _segments(self, strict: bool = True) -> dict[int, list[Path]]:
        """Segment files by window end. A folder that cannot be listed (EACCES, EIO) raises SegmentUnreadable
        (counted, logged once), or with ``strict=False`` gives no segments (budget and status figures)."""
        out: dict[int, list[Path]] = {}
        try:
            with os.scandir(self.dir) as entries:
                names = [e.name for e in entries if e.name.endswith((SUFFIX, LEGACY_SUFFIX))]
        except OSError as exc:
            self._unreadable(self.dir, exc)
            if strict:
                raise SegmentUnreadable(self.dir, exc) from exc
            return out
        self._read_log.success(self.dir.name, "spool: folder %s can be listed again", self.dir)
        for name in names:
            try:
                end = int(name.split("-", 1)[0])
            except ValueError:
                continue
            out.setdefault(end, []).append(self.dir / name)
        for paths in out.values():
            paths.sort()
        return out

    def windows(self, strict: bool = False) -> list[int]:
        """Window ends that have flushed readings on disk or held in memory, oldest first. ``strict``: raise
        SegmentUnreadable when the folder cannot be listed, instead of leaving its windows out (the window
        closer must not take an unlistable folder for an empty one)."""
        return sorted(set(self._segments(strict)) | set(self._held))

    def read(self, end: int) -> Columns:
        """Every flushed reading of the window ending at ``end``. A torn tail is skipped (and counted).
        Raises SegmentUnreadable when a segment cannot be read (see the module docstring): nothing of the
        window is returned then, so a caller can never write (and acknowledge) the window without it."""
        with self.open_window(end) as window:
            return window.select(window.names)

    def open_window(self, end: int) -> WindowReadings:
        """The window ending at ``end``, to be read group by group (agent.pipeline.windowread); close it after
        use (it holds the segment files open). Every segment is validated first (a torn tail is skipped and
        counted, as by ``read``); raises SegmentUnreadable when a segment cannot be read, now or in a later
        pass, so a caller never writes (and acknowledges) the window without it."""
        segments: list[FileSegment | MemorySegment] = []
        try:
            for path in self._segments().get(end, []):
                segments.append(self._scan_segment(path))
        except BaseException:
            WindowReadings(segments).close()
            raise
        return WindowReadings(segments, self._failed_later)

    def _scan_segment(self, path: Path) -> FileSegment | MemorySegment:
        """The first pass over one segment (see ``open_window``); raises SegmentUnreadable on an OSError."""
        fh = None
        try:
            if path.suffix == LEGACY_SUFFIX:
                out: FileSegment | MemorySegment = MemorySegment(self._read_legacy(path))
            else:
                fh = open_segment(path)
                scan = scan_records(fh)
                if scan.torn:
                    # a crash mid-write leaves a partial last record (or an empty file): keep what came before
                    self.torn_segments += 1
                    log.warning("spool: %s ends with a torn record; %d complete records recovered", path.name,
                                scan.good)
                out = FileSegment(path, fh, scan)
        except OSError as exc:
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
            self._unreadable(path, exc)
            raise SegmentUnreadable(path, exc) from exc
        self._read_log.success(path.name, "spool: segment %s can be read again", path.name)
        return out

    def _failed_later(self, path: Path, exc: OSError) -> None:
        """A segment that passed the first pass failed to read later in the same close (see open_window)."""
        self._unreadable(path, exc)
        raise SegmentUnreadable(path, exc) from exc

    def _read_segment(self, path: Path) -> list[Columns]:
        """The segment's readings; raises SegmentUnreadable on an OSError (counted, logged once per segment)."""
        try:
            if path.suffix == LEGACY_SUFFIX:
                out = self._read_legacy(path)
            else:
                cols = self._read_records(path)
                out = [cols] if cols.num_rows else []
        except OSError as exc:
            self._unreadable(path, exc)
            raise SegmentUnreadable(path, exc) from exc
        self._read_log.success(path.name, "spool: segment %s can be read again", path.name)
        return out

    def _unreadable(self, path: Path, exc: OSError) -> None:
        """Count a failed read by errno name; log it once per file (or folder) until it reads again."""
        name = errno.errorcode.get(exc.errno, "OSError") if exc.errno is not None else type(exc).__name__
        self.read_errors[name] += 1
        what = "folder" if path == self.dir else "segment"
        self._read_log.failure(path.name, "spool: %s %s cannot be read (%s); it is kept and its windows wait "
                               "(retried with backoff)", what, path.name if what == "segment" else path, exc)

    def _read_records(self, path: Path) -> Columns:
        """``read_file`` with its verdict: a record that does not decode (ValueError after a good CRC) is
        torn like a bad CRC; an OSError propagates (it says nothing about the file's content)."""
        try:
            cols, records, torn = read_file(path)
        except ValueError:
            cols, records, torn = Columns.empty(), 0, True
        if torn:
            # a crash mid-write leaves a partial last record (or an empty file): keep what came before
            self.torn_segments += 1
            log.warning("spool: %s ends with a torn record; %d complete records recovered", path.name, records)
        return cols

    def _read_legacy(self, path: Path) -> list[Columns]:
        """An Arrow IPC stream segment from an earlier version (pyarrow is imported for it only). Raises
        OSError when the file cannot be read; a stream cut short is a torn tail."""
        import pyarrow as pa
        import pyarrow.ipc

        out = []
        try:
            with pa.OSFile(str(path), "rb") as fh:
                reader = pa.ipc.open_stream(fh)
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    out.append(Columns.from_arrow(pa.Table.from_batches([batch])))
        except (pa.ArrowInvalid, ValueError) as exc:
            self.torn_segments += 1
            log.warning("spool: %s ends with a torn record (%s); %d complete batches recovered",
                        path.name, exc, len(out))
        return out

    def ack(self, end: int) -> None:
        """The window ending at ``end`` is durable downstream: delete its segments; later readings are late."""
        self._drop_segment_handle(end)
        for path in self._segments().get(end, []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.closed_upto = end if self.closed_upto is None else max(self.closed_upto, end)

    def drop_window(self, end: int) -> int:
        """Delete a window's raw readings, on disk and held in memory, to free room (budget policy).
        Returns the bytes freed (file sizes plus the held tables' size)."""
        freed = sum(p.stat().st_size for p in self._segments(strict=False).get(end, []) if p.exists())
        freed += sum(t.nbytes for t in self._held.pop(end, []))
        self._drop_segment_handle(end)
        for path in self._segments(strict=False).get(end, []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return freed

    def bytes_on_disk(self) -> int:
        total = 0
        for path in [*self.dir.glob(f"*{SUFFIX}"), *self.dir.glob(f"*{LEGACY_SUFFIX}")]:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def buffered(self) -> int:
        """Readings in memory: appended since the last flush plus held after failed writes."""
        return (len(self._buffer) + sum(t.num_rows for tables in list(self._held.values()) for t in tables)
                + sum(t.num_rows for _, t in list(self._deferred)))

    def held_windows(self) -> list[int]:
        """Window ends with readings held in memory because their write failed (oldest first): such a
        window must not be written (closed) before they are on disk."""
        return sorted(self._held)

    def held_bytes(self) -> int:
        """Size of the readings held in memory after failed writes (counted against the disk budget)."""
        return sum(t.nbytes for tables in list(self._held.values()) for t in tables)

    def readings_in(self, end: int) -> int:
        """Readings of the window on disk plus held in memory (for the budget's drop events)."""
        on_disk = 0
        for path in self._segments(strict=False).get(end, []):
            with contextlib.suppress(SegmentUnreadable):  # counted and logged by _read_segment
                on_disk += sum(t.num_rows for t in self._read_segment(path))
        return on_disk + sum(t.num_rows for t in self._held.get(end, []))

    def close(self) -> None:
        """Close the open segments (after writing readings kept back during a close, see ``flush``). Readings
        still in memory (the disk refused them up to the end) are lost with the process: said once, with the
        count."""
        if self._deferred:
            self.flush()
        lost = sum(t.num_rows for tables in self._held.values() for t in tables)
        if lost:
            self.dropped_readings["unwritten_at_exit"] += lost
            log.error("spool: %d readings could not be written to %s before stopping (the disk refused them); "
                      "they are lost", lost, self.dir)
        for end in list(self._open):
            self._drop_segment_handle(end)
        if self._alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._alive_fd)
            self._alive_fd = None
