"""One window's readings, taken sensor group by sensor group: the memory a close needs is that of the largest
group, not of the window.

A ``WindowReadings`` is built over the window's segments after a first pass has validated them
(agent.pipeline.columns.scan_records: CRC, torn tail) and kept only where each record is and which names it holds.
``select(sensors)`` then reads only the records that hold some of those sensors and keeps only their readings
(a record of another cut, an older file, a config changed since writing, is read and filtered by name: correct,
only slower). Readings come in append order (segments in name order, records in file order), as
``Spool.read`` gives them. Segments of the previous format (Arrow) are kept in memory as decoded.

A read failing in a later pass (the file was readable a moment before) is handed to ``on_error``, which raises
(the spool's SegmentUnreadable): the caller stops the window as for a failed first pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.pipeline.columns import Columns, SegmentScan, open_segment, read_codes, scan_records


@dataclass
class FileSegment:
    path: Path
    fh: object  # the open file (agent.pipeline.columns.open_segment), closed by WindowReadings.close
    scan: SegmentScan


@dataclass
class MemorySegment:
    parts: list[Columns]  # decoded readings (a segment of the previous format, or readings given in memory)


class WindowReadings:
    """See the module docstring. ``names``: every sensor name of the window, in order of first appearance (the
    order of ``Spool.read(end).names``). Close it (or use it as a context manager): it holds the files open."""

    def __init__(self, segments: list[FileSegment | MemorySegment],
                 on_error: Callable[[Path, OSError], None] | None = None) -> None:
        self._segments = segments
        self._on_error = on_error
        index: dict[str, int] = {}
        # per segment: its names tables (file) or parts (memory) as one flat array of global codes and where each
        # table starts in it, so which tables a selection touches is a few numpy calls, however many there are;
        # and (file) its records as arrays: offset of the code array, readings, names table
        self._tables: list[tuple[np.ndarray, np.ndarray]] = []
        self._records_of: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        for seg in segments:
            if isinstance(seg, FileSegment):
                if not seg.scan.rows:  # an empty segment adds no names (Spool.read drops it)
                    tables: list[np.ndarray] = []
                else:
                    to_global = np.array([index.setdefault(n, len(index)) for n in seg.scan.names], dtype=np.int64)
                    tables = [to_global[t] for t in seg.scan.tables]
                records = np.frombuffer(seg.scan.records, dtype=np.int64).reshape(-1, 3)
                self._records_of.append((records[:, 0], records[:, 1], records[:, 2]))
            else:
                tables = [np.array([index.setdefault(n, len(index)) for n in p.names], dtype=np.int64)
                          if p.num_rows else np.empty(0, np.int64) for p in seg.parts]
                self._records_of.append(None)
            sizes = np.array([len(t) for t in tables], dtype=np.int64)
            self._tables.append((np.concatenate(tables) if tables else np.empty(0, np.int64),
                                 np.r_[0, np.cumsum(sizes)].astype(np.int64)))
        self.names: list[str] = list(index)
        self._index = index
        self.track_latest = False  # keep the latest good timestamp of every name selected (``latest``)
        self._latest = np.full(len(self.names), -np.inf)

    @classmethod
    def of(cls, readings: Columns) -> WindowReadings:
        """Readings already in memory (tests, a caller that has them anyway)."""
        return cls([MemorySegment([readings])])

    @classmethod
    def from_files(cls, paths: list[Path]) -> WindowReadings:
        """The records of segment files (in the order given), validated as the spool does (a torn tail is
        skipped). Raises OSError when one cannot be read."""
        segments: list[FileSegment | MemorySegment] = []
        try:
            for path in paths:
                fh = open_segment(path)
                segments.append(FileSegment(path, fh, SegmentScan()))
                segments[-1].scan = scan_records(fh)
        except BaseException:
            cls(segments).close()
            raise
        return cls(segments)

    def __enter__(self) -> WindowReadings:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for seg in self._segments:
            if isinstance(seg, FileSegment):
                with contextlib.suppress(OSError):
                    seg.fh.close()

    def mixed_rows(self, group_of: dict[str, int]) -> int:
        """Readings in records (or parts) whose names belong to more than one group (``group_of``: name → group;
        names not in it form one more group): records written before groups, or with other groups."""
        group = np.array([group_of.get(n, -1) for n in self.names], dtype=np.int64)
        out = 0
        for seg, (flat, starts), records in zip(self._segments, self._tables, self._records_of, strict=True):
            sizes = np.diff(starts)
            if not len(flat):
                continue
            at = np.minimum(starts[:-1], len(flat) - 1)
            mixed = (np.minimum.reduceat(group[flat], at) != np.maximum.reduceat(group[flat], at)) & (sizes > 0)
            if records is None:
                out += sum(p.num_rows for p, m in zip(seg.parts, mixed.tolist(), strict=True) if m)
            else:
                out += int(records[1][mixed[records[2]]].sum())
        return out

    def load_whole(self) -> None:
        """Read every reading into memory once (one Columns, as ``Spool.read``) and serve the selections from
        there: for a window whose records mix groups, which would otherwise be read again for every group."""
        whole = self.select(self.names)
        self.close()
        self._segments = [MemorySegment([whole])]
        self._tables = [(np.arange(len(self.names), dtype=np.int64), np.array([0, len(self.names)], np.int64))]
        self._records_of = [None]

    @property
    def num_rows(self) -> int:
        return sum(seg.scan.rows if isinstance(seg, FileSegment) else sum(p.num_rows for p in seg.parts)
                   for seg in self._segments)

    def select(self, sensors: Iterable[str]) -> Columns:
        """The readings of ``sensors`` (those of them the window has), in append order; ``names`` lists them in
        the order given."""
        wanted = [self._index[s] for s in dict.fromkeys(sensors) if s in self._index]
        return self._gather(np.asarray(wanted, dtype=np.int64))

    def select_others(self, known: set[str]) -> Columns:
        """The readings of every sensor not in ``known`` (sensors in no component), in append order."""
        return self._gather(np.array([i for i, n in enumerate(self.names) if n not in known], dtype=np.int64))

    def latest(self) -> dict[str, float]:
        """Per name selected so far (with ``track_latest``), the latest timestamp of a good reading (not a
        marker), in the order of ``names``."""
        return {n: t for n, t in zip(self.names, self._latest.tolist(), strict=True) if t != -np.inf}

    def _gather(self, wanted: np.ndarray) -> Columns:
        """The readings of the names ``wanted`` (global codes), in append order, read into arrays of their final
        size when the records say how many there are (every record read holds wanted names only: the common
        case), else gathered in parts and joined once."""
        names = tuple(self.names[i] for i in wanted.tolist())
        position = np.full(len(self.names), -1, dtype=np.int32)  # global code → position in ``names``
        position[wanted] = np.arange(len(wanted), dtype=np.int32)
        plan = []  # per segment: (segment, {table: (position lut, whole)} of the tables touched, records to read)
        exact = True
        count = 0
        for seg, (flat, starts), records in zip(self._segments, self._tables, self._records_of, strict=True):
            hit = (position[flat] >= 0).astype(np.int64)
            sizes = np.diff(starts)
            # per table: how many of its names are wanted (reduceat gives an empty table its next name: none)
            wanted_in = np.zeros(len(sizes), dtype=np.int64)
            if len(flat):
                wanted_in = np.add.reduceat(hit, np.minimum(starts[:-1], len(flat) - 1))
                wanted_in[sizes == 0] = 0
            touched = np.flatnonzero(wanted_in > 0)
            luts = {t: (position[flat[starts[t]:starts[t + 1]]], bool(wanted_in[t] == sizes[t]))
                    for t in touched.tolist()}
            if records is None:  # memory: one table per part
                chosen = touched
                rows = np.array([seg.parts[t].num_rows for t in touched.tolist()], dtype=np.int64)
            else:
                _, ns, tables = records
                chosen = np.flatnonzero((wanted_in[tables] > 0) & (ns > 0)) if len(tables) else tables
                rows = ns[chosen]
                tables = tables[chosen]
            count += int(rows.sum())
            whole_tables = [luts[t][1] for t in (touched.tolist() if records is None else np.unique(tables).tolist())]
            exact = exact and all(whole_tables)
            plan.append((seg, luts, chosen))
        if exact:
            code = np.empty(count, dtype=np.int32)
            ts = np.empty(count)
            value = np.empty(count)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        at = 0
        for seg, luts, chosen in plan:
            for pos, t, v in self._records(seg, luts, chosen):
                if exact:
                    code[at:at + len(pos)] = pos
                    ts[at:at + len(pos)] = t
                    value[at:at + len(pos)] = v
                    at += len(pos)
                else:
                    parts.append((pos, t, v))
        if not exact:
            code = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int32)
            ts = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
            value = np.concatenate([p[2] for p in parts]) if parts else np.empty(0)
        out = Columns(names, code, ts, value)
        if self.track_latest and out.num_rows:
            good = ~np.isnan(out.value)
            np.maximum.at(self._latest, wanted[out.code[good]], out.ts[good])
        return out

    def _records(self, seg: FileSegment | MemorySegment, luts: dict[int, tuple[np.ndarray, bool]],
                 chosen: np.ndarray):
        """(position in the selection, ts, value) of the wanted readings of each chosen record (or part) of
        ``seg``, in order; ``luts``: per names table touched, its names' positions in the selection and whether
        all of them are wanted."""
        if isinstance(seg, MemorySegment):
            sources = ((seg.parts[k].code, seg.parts[k].ts, seg.parts[k].value, *luts[k]) for k in chosen.tolist())
        else:
            records = seg.scan.records  # flat: offset, n, table of record k at 3k, 3k+1, 3k+2
            sources = ((*self._read(seg, records[3 * k], records[3 * k + 1]), *luts[records[3 * k + 2]])
                       for k in chosen.tolist())
        for code, t, v, lut, whole in sources:
            pos = lut[code]
            if not whole:
                keep = pos >= 0
                if not keep.any():
                    continue
                pos, t, v = pos[keep], t[keep], v[keep]
            yield pos, t, v

    def _read(self, seg: FileSegment, offset: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            return read_codes(seg.fh, offset, n)
        except OSError as exc:
            if self._on_error is not None:
                self._on_error(seg.path, exc)
            raise
