"""Durable raw readings: Arrow IPC stream segments on local disk, one per (window, agent run).

Why Arrow IPC streams: appends are whole record batches (one per flush, not one write per reading), each
message is length-prefixed so a torn last batch after a crash is detected and skipped while every earlier
batch is kept, and a window's segments load straight into the resampler as columns with no parsing. A
window's data lives in its own files, so acknowledging a written window is an unlink, not a compaction.

Contract:
- ``append(batch)`` is the hot path: it only extends an in-memory list (O(1) per reading, no I/O).
- ``flush()`` writes everything appended since the last flush and fsyncs it; the service calls it at least
  every ``fsync_interval_ms``. What was flushed survives kill -9 and power loss; what was not is at most one
  interval of readings.
- ``read(end)`` returns every flushed reading of the window (start, end] as a pyarrow Table
  (sensor: string, ts: float64 Unix seconds, value: float64), in append order.
- ``ack(end)`` deletes the window's segments: call it only after the window's CSVs are durable in the outbox.
- Readings of a window already acknowledged (``closed_upto``) are late: counted in ``late`` and dropped.
- Segment names: ``<window end>-<run id>.arrows``; a restart opens new segments, never appends to old ones
  (an IPC stream cannot be resumed after a torn tail).
- Validity-end markers (value NaN, see agent.model.validity_end) travel like readings; they are never counted
  as late readings.
- ``mark_alive(ts)`` records the clock time of the agent's last sign of life (no fsync: a power cut may lose
  the last second, which only ends held values earlier); ``previous_alive`` is what the previous run left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent.errors import StateError, TransitionLog
from agent.model import Reading

log = logging.getLogger("l4e.spool")

SCHEMA = pa.schema([("sensor", pa.string()), ("ts", pa.float64()), ("value", pa.float64())])
SUFFIX = ".arrows"
ALIVE_FILE = "alive"
# Readings kept in memory while the disk refuses writes (read-only, full); beyond it the oldest are dropped.
MAX_UNFLUSHED = 2_000_000


class _Segment:
    """One open IPC stream file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "wb")  # noqa: SIM115 - lives as long as the window is open
        self.writer = pa.ipc.new_stream(self.fh, SCHEMA)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.fh.flush()

    def sync(self) -> None:
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.fh.close()


class Spool:
    """See the module docstring. Not thread-safe: use from the event loop (flush may run in a thread alone)."""

    def __init__(self, directory: Path, frequency_secs: int) -> None:
        self.dir = Path(directory)
        self.frequency = frequency_secs
        self.run_id = f"{time.time_ns():x}"
        self._buffer: list[Reading] = []
        self._open: dict[int, _Segment] = {}
        self.closed_upto: int | None = None
        self.late = 0
        self.torn_segments = 0
        self.dropped_readings = Counter()  # reason → count
        self._errors = TransitionLog(log)
        self._alive_fd: int | None = None
        self.previous_alive: float | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe-{self.run_id}"
            with open(probe, "wb") as fh:
                fh.write(b"x")
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise StateError(f"spool folder {self.dir} is not writable: {exc}") from exc
        try:
            self.previous_alive = float((self.dir / ALIVE_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.previous_alive = None

    # --- hot path -------------------------------------------------------------------------------------
    def append(self, batch: list[Reading]) -> None:
        self._buffer.extend(batch)

    # --- durability -----------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write and fsync the buffered readings; returns how many were written. Never raises for disk
        errors: the readings stay buffered (bounded by MAX_UNFLUSHED) and the failure is logged once."""
        if not self._buffer:
            return 0
        buf = self._buffer
        self._buffer = []
        ts = np.fromiter((r.ts for r in buf), dtype=np.float64, count=len(buf))
        ends = (np.ceil(ts / self.frequency) * self.frequency).astype(np.int64)
        sensors = pa.array([r.sensor for r in buf], pa.string())
        values = pa.array(np.fromiter((r.value for r in buf), dtype=np.float64, count=len(buf)))
        table = pa.table([sensors, pa.array(ts), values], schema=SCHEMA)
        if self.closed_upto is not None:
            late_mask = (ends <= self.closed_upto) & ~np.isnan(values.to_numpy(zero_copy_only=False))
            n_late = int(late_mask.sum())
            if n_late:
                self.late += n_late
                self.dropped_readings["late"] += n_late
                log.debug("dropped %d late readings (their windows are already written)", n_late)
        written = 0
        failed: list[Reading] = []
        for end in np.unique(ends):
            end = int(end)
            if self.closed_upto is not None and end <= self.closed_upto:
                continue
            mask = ends == end
            part = table.filter(pa.array(mask))
            try:
                seg = self._open.get(end)
                if seg is None:
                    seg = self._open[end] = _Segment(self.dir / f"{end}-{self.run_id}{SUFFIX}")
                seg.write(part)
                seg.sync()
                written += part.num_rows
            except OSError as exc:
                self._errors.failure("write", "spool: cannot write to %s: %s; readings kept in memory",
                                     self.dir, exc)
                self._drop_segment_handle(end)
                failed.extend(r for r, m in zip(buf, mask, strict=True) if m)
        if failed:
            self._buffer = failed + self._buffer
            overflow = len(self._buffer) - MAX_UNFLUSHED
            if overflow > 0:
                del self._buffer[:overflow]
                self.dropped_readings["memory_full"] += overflow
        else:
            self._errors.success("write", "spool: writing to %s again", self.dir)
        return written

    def mark_alive(self, ts: float) -> None:
        """Record ``ts`` (clock time) as the last sign of life of this run (see the module docstring)."""
        try:
            if self._alive_fd is None:
                self._alive_fd = os.open(self.dir / ALIVE_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            os.pwrite(self._alive_fd, f"{ts!r:<32}\n".encode(), 0)
        except OSError as exc:
            self._errors.failure("alive", "spool: cannot record the alive time in %s: %s", self.dir, exc)

    def latest_ts(self, sensors: set[str]) -> float | None:
        """The latest timestamp of a flushed or buffered reading (not marker) of ``sensors``, or None."""
        best = max((r.ts for r in self._buffer if r.sensor in sensors and r.value == r.value), default=None)
        for end in self.windows():
            table = self.read(end)
            if not table.num_rows:
                continue
            mask = pc.and_(pc.is_in(table["sensor"], pa.array(sorted(sensors), pa.string())),
                           pc.invert(pc.is_nan(table["value"])))
            ts = pc.max(pc.filter(table["ts"], mask)).as_py()
            if ts is not None and (best is None or ts > best):
                best = ts
        return best

    def _drop_segment_handle(self, end: int) -> None:
        seg = self._open.pop(end, None)
        if seg:
            seg.close()

    # --- reading and acknowledging --------------------------------------------------------------------
    def _segments(self) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {}
        for path in self.dir.glob(f"*{SUFFIX}"):
            try:
                end = int(path.name.split("-", 1)[0])
            except ValueError:
                continue
            out.setdefault(end, []).append(path)
        for paths in out.values():
            paths.sort()
        return out

    def windows(self) -> list[int]:
        """Window ends that have flushed readings on disk, oldest first."""
        return sorted(self._segments())

    def read(self, end: int) -> pa.Table:
        """Every flushed reading of the window ending at ``end``. A torn tail is skipped (and counted)."""
        tables = []
        for path in self._segments().get(end, []):
            tables.extend(self._read_segment(path))
        if not tables:
            return SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def _read_segment(self, path: Path) -> list[pa.Table]:
        out = []
        try:
            with pa.OSFile(str(path), "rb") as fh:
                reader = pa.ipc.open_stream(fh)
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    out.append(pa.Table.from_batches([batch], schema=SCHEMA))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            # a crash mid-write leaves a partial last message (or an empty file): keep what came before
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
        """Delete a window's raw readings to free disk (budget policy). Returns bytes freed."""
        freed = sum(p.stat().st_size for p in self._segments().get(end, []) if p.exists())
        self._drop_segment_handle(end)
        for path in self._segments().get(end, []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return freed

    def bytes_on_disk(self) -> int:
        total = 0
        for path in self.dir.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def buffered(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        for end in list(self._open):
            self._drop_segment_handle(end)
        if self._alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._alive_fd)
            self._alive_fd = None
