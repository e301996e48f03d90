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

from agent.pipeline.columns import Columns, SegmentScan, read_codes


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
        """Readings already in memory (a re-render of a kept window, tests)."""
        return cls([MemorySegment([readings])])

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
        names = tuple(self.names[i] for i in wanted.tolist())
        if not len(wanted):
            return Columns(names, np.empty(0, np.int32), np.empty(0), np.empty(0))
        position = np.full(len(self.names), -1, dtype=np.int32)  # global code → position in ``names``
        position[wanted] = np.arange(len(wanted), dtype=np.int32)
        codes, ts, values = [], [], []

        def take(local_to_pos: np.ndarray, code: np.ndarray, t: np.ndarray, v: np.ndarray, whole: bool) -> None:
            pos = local_to_pos[code]
            if not whole:
                keep = pos >= 0
                pos, t, v = pos[keep], t[keep], v[keep]
            if len(pos):
                codes.append(pos)
                ts.append(t)
                values.append(v)

        for seg, to_global in zip(self._segments, self._globals, strict=True):
            if isinstance(seg, MemorySegment):
                for part, g in zip(seg.parts, to_global, strict=True):
                    lut = position[g]
                    if part.num_rows and (lut >= 0).any():
                        take(lut, part.code, part.ts, part.value, bool((lut >= 0).all()))
                continue
            luts = [position[g] for g in to_global]
            touches = [bool((lut >= 0).any()) for lut in luts]
            whole = [bool((lut >= 0).all()) for lut in luts]
            for offset, n, table in seg.scan.records:
                if not n or not touches[table]:
                    continue
                try:
                    code, t, v = read_codes(seg.fh, offset, n)
                except OSError as exc:
                    if self._on_error is not None:
                        self._on_error(seg.path, exc)
                    raise
                take(luts[table], code, t, v, whole[table])
        if not codes:
            return Columns(names, np.empty(0, np.int32), np.empty(0), np.empty(0))
        out = Columns(names, np.concatenate(codes).astype(np.int32, copy=False), np.concatenate(ts),
                      np.concatenate(values))
        if self.track_latest:
            good = ~np.isnan(out.value)
            np.maximum.at(self._latest, wanted[out.code[good]], out.ts[good])
        return out
