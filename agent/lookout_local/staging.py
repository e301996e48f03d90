"""One component's ingested rows on disk, then written in timestamp order, never all in memory.

Ingestion parses files chunk by chunk (``ingest.read_component_chunks``); the chunks go to a ``Staging`` file
(Arrow IPC, uncompressed: written and read back at disk speed) in arrival order, and only their timestamps
stay in memory (int64 nanoseconds, 8 bytes a row). ``write_sorted`` then orders the rows with a stable sort
of those timestamps (skipped when they arrived in order, the usual case: timestamp-named files of ordered
rows), drops duplicates keeping the last, and writes the Parquet file block by block, each block gathered
from the few staged batches it needs. The result is what ``frame.sort_values("timestamp", kind="stable")``,
``duplicated(keep="last")`` and ``to_parquet(index=False)`` give on the whole frame: same rows, same values
(NaN stored as null, as pandas' conversion does), same schema and pandas metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent.core.atomic import replace_with

SHORT_RANGE_SECS = 14 * 86400
OUT_CELLS = 250_000  # cells per written block (row group): about 2 MB of float64


class Staging:
    """Frames appended in arrival order to an Arrow IPC file at ``path``; ``mark``/``rollback`` drop what
    was appended since a mark (a file discarded half-way)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schema: pa.Schema | None = None
        self._sink = None
        self._writer = None
        self._times: list[np.ndarray] = []  # per staged batch: its timestamps (int64 ns)
        self._alive: list[bool] = []

    @property
    def rows(self) -> int:
        return sum(len(t) for t, alive in zip(self._times, self._alive, strict=True) if alive)

    def append(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        batch = pa.RecordBatch.from_pandas(frame, schema=self.schema, preserve_index=False, nthreads=1)
        if self._writer is None:
            self.schema = batch.schema
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_batch(batch)
        self._times.append(frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64))
        self._alive.append(True)

    def mark(self) -> int:
        return len(self._times)

    def rollback(self, mark: int) -> None:
        for i in range(mark, len(self._times)):
            self._alive[i] = False
            self._times[i] = self._times[i][:0]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def take_times(self) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """All live rows' timestamps in arrival order (the per-batch copies released on the way), and the
        live batches as (batch index in the file, first row in that order)."""
        times = np.empty(self.rows, dtype=np.int64)
        batches, at = [], 0
        for i, alive in enumerate(self._alive):
            if alive:
                part = self._times[i]
                times[at:at + len(part)] = part
                batches.append((i, at))
                at += len(part)
            self._times[i] = None
        return times, batches


class _Gather:
    """Rows of the staging file by position (in arrival order, live rows only), reading only the batches
    they lie in; the last two batches read are kept (consecutive blocks of ordered data share one)."""

    def __init__(self, staging: Staging, batches: list[tuple[int, int]]) -> None:
        self._source = pa.OSFile(str(staging.path), "rb")
        self._reader = pa.ipc.open_file(self._source)
        self._index = np.array([i for i, _ in batches], dtype=np.int64)
        self._starts = np.array([s for _, s in batches], dtype=np.int64)
        self._cache: dict[int, pa.RecordBatch] = {}

    def close(self) -> None:
        self._cache.clear()
        self._reader = None
        self._source.close()

    def _batch(self, k: int) -> pa.RecordBatch:
        if k not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = self._reader.get_batch(int(self._index[k]))
        return self._cache[k]

    def rows(self, positions: np.ndarray) -> pa.Table:
        which = np.searchsorted(self._starts, positions, side="right") - 1
        pieces, where = [], []
        for k in np.unique(which):
            mask = which == k
            pieces.append(self._batch(int(k)).take(pa.array(positions[mask] - self._starts[k])))
            where.append(np.flatnonzero(mask))
        table = pa.Table.from_batches(pieces)
        if len(pieces) == 1:
            return table  # one batch: ``take`` gave the rows in the order asked
        order = np.concatenate(where)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return table.take(pa.array(inverse))


def write_sorted(staging: Staging, comp, out: Path, quality, out_cells: int = OUT_CELLS) -> tuple[float, float]:
    """Write ``staging``'s rows to ``out`` (atomically) in timestamp order without duplicates (the last wins);
    adds the duplicate, all-missing and short-range counts to ``quality``; returns the first and last
    timestamps (epoch seconds). ``staging`` must hold at least one row."""
    staging.close()
    times, batches = staging.take_times()
    n = len(times)
    order = None if bool(np.all(times[1:] >= times[:-1])) else np.argsort(times, kind="stable")
    sensors = list(comp.sensors)
    block = max(1, out_cells // (len(sensors) + 1))
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    bounds: list[int] = []
    gather = _Gather(staging, batches)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(str(tmp), staging.schema) as writer:
            for a in range(0, n, block):
                b = min(n, a + block)
                positions = np.arange(a, b) if order is None else order[a:b]
                stamps = times[positions]
                following = None if b == n else times[b if order is None else order[b]]
                keep = np.empty(len(stamps), dtype=bool)
                keep[:-1] = stamps[:-1] != stamps[1:]
                keep[-1] = following is None or stamps[-1] != following
                quality.duplicate_timestamps += int(len(keep) - keep.sum())
                positions, stamps = positions[keep], stamps[keep]
                if not len(positions):
                    continue  # every row of the block has a later duplicate in the next one
                table = gather.rows(positions)
                writer.write_table(table)
                for sensor in sensors:
                    valid = pc.is_valid(table.column(sensor)).to_numpy(zero_copy_only=False)
                    if valid.any():
                        first_seen.setdefault(sensor, int(stamps[valid.argmax()]))
                        last_seen[sensor] = int(stamps[len(valid) - 1 - valid[::-1].argmax()])
                if not bounds:
                    bounds.append(int(stamps[0]))
                bounds[1:] = [int(stamps[-1])]

    # agent.core.atomic: a reader (training) never sees a half-written file, a crash never a torn one
    try:
        replace_with(out, write)
    finally:
        gather.close()
    for sensor in sensors:
        if sensor not in first_seen:
            quality.all_missing_sensors += 1
        elif pd.Timedelta(last_seen[sensor] - first_seen[sensor]).total_seconds() < SHORT_RANGE_SECS:
            quality.short_range_sensors += 1
    return pd.Timestamp(bounds[0]).timestamp(), pd.Timestamp(bounds[-1]).timestamp()
