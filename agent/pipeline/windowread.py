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
        # per segment: global code of each names table (file) or of each part's names (memory)
        self._globals: list[list[np.ndarray]] = []
        for seg in segments:
            if isinstance(seg, FileSegment):
                if not seg.scan.rows:  # an empty segment adds no names (Spool.read drops it)
                    self._globals.append([])
                    continue
                to_global = np.array([index.setdefault(n, len(index)) for n in seg.scan.names], dtype=np.int64)
                self._globals.append([to_global[t] for t in seg.scan.tables])
            else:
                self._globals.append([np.array([index.setdefault(n, len(index)) for n in p.names], dtype=np.int64)
                                      if p.num_rows else np.empty(0, np.int64) for p in seg.parts])
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
        plan = []  # (segment, [(position lut, whole)] per table or part)
        exact = True
        count = 0
        for seg, to_global in zip(self._segments, self._globals, strict=True):
            # per names table (or part): its names' positions in the selection, all wanted?, any wanted?
            luts = [(lut, bool((lut >= 0).all()), bool((lut >= 0).any())) for lut in (position[g] for g in to_global)]
            plan.append((seg, luts))
            if isinstance(seg, MemorySegment):
                for part, (_, whole, touches) in zip(seg.parts, luts, strict=True):
                    if touches:
                        exact = exact and whole
                        count += part.num_rows
                continue
            for _, n, table in seg.scan.records:
                _, whole, touches = luts[table]
                if n and touches:
                    exact = exact and whole
                    count += n
        if exact:
            code = np.empty(count, dtype=np.int32)
            ts = np.empty(count)
            value = np.empty(count)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        at = 0
        for seg, luts in plan:
            for pos, t, v in self._records(seg, luts):
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

    def _records(self, seg: FileSegment | MemorySegment, luts: list[tuple[np.ndarray, bool, bool]]):
        """(position in the selection, ts, value) of the wanted readings of each record (or part) of ``seg``."""
        if isinstance(seg, MemorySegment):
            sources = ((part.code, part.ts, part.value, lut, whole)
                       for part, (lut, whole, touches) in zip(seg.parts, luts, strict=True)
                       if part.num_rows and touches)
        else:
            sources = (self._read(seg, offset, n) + luts[table][:2] for offset, n, table in seg.scan.records
                       if n and luts[table][2])
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
