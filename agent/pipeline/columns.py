"""Readings as columns, and the spool's record format: numpy only (no pyarrow, no pandas in the data path).

``Columns`` holds readings column-wise: ``names`` (the distinct sensor names), ``code`` (int32, per reading: its
sensor's index in ``names``), ``ts`` (float64 Unix seconds) and ``value`` (float64; NaN is a validity-end marker).

One spool record is one flush of one window, or of one group of its sensors (agent.pipeline.groups: a writer
that knows the groups writes one record per group per flush, so a reader can take a window group by group)
(little-endian)::

    magic b"L4ES" | version u16 = 1 | reserved u16 | n u32 | names_len u32 | crc32 u32   (20 bytes)
    body: names (UTF-8 JSON list, names_len bytes) | code i32[n] | ts f64[n] | value f64[n]

The CRC covers the body. A record's names table says which sensors it holds, so records of any cut (one per flush,
one per group, groups of another configuration) read the same way: the record format is unchanged by grouping
(version 1), and files stay readable by earlier versions. ``read_file`` (a whole file) and ``scan_records`` (a
first pass that keeps only where each record is) take records in order and stop at the first one that is short,
has a bad magic or a bad CRC: a torn tail after a crash loses only the record being written, never an earlier one.
A record whose names table does not decode after a good CRC makes the whole file unreadable as content (torn,
no record recovered), in both.
Why not Arrow IPC (the previous format, still read): pyarrow costs 36 MB resident in every agent process, which is
most of what a small asset needs in all; these records are as cheap to write and read with numpy alone.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from array import array
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"L4ES"
VERSION = 1
_HEADER = struct.Struct("<4sHHIII")


@dataclass(frozen=True)
class Columns:
    names: tuple[str, ...]
    code: np.ndarray
    ts: np.ndarray
    value: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.code)

    @property
    def nbytes(self) -> int:
        return self.code.nbytes + self.ts.nbytes + self.value.nbytes + sum(len(n) for n in self.names)

    @classmethod
    def empty(cls) -> Columns:
        return cls((), np.empty(0, np.int32), np.empty(0), np.empty(0))

    @classmethod
    def from_readings(cls, readings) -> Columns:
        """From a list of agent.model.Reading (in append order). ``names`` come sorted, so flushes of the same
        sensors carry the same name table (the reader then shares one copy of it, see ``decode``)."""
        index: dict[str, int] = {}
        n = len(readings)
        code = np.fromiter((index.setdefault(r.sensor, len(index)) for r in readings), dtype=np.int32, count=n)
        ts = np.fromiter((r.ts for r in readings), dtype=np.float64, count=n)
        value = np.fromiter((r.value for r in readings), dtype=np.float64, count=n)
        names = sorted(index)
        rank = np.empty(len(names), dtype=np.int32)
        rank[[index[s] for s in names]] = np.arange(len(names), dtype=np.int32)
        return cls(tuple(names), rank[code] if n else code, ts, value)

    @classmethod
    def from_rows(cls, sensors, ts, values) -> Columns:
        """From parallel sequences (sensor names, timestamps, values)."""
        index: dict[str, int] = {}
        code = np.fromiter((index.setdefault(s, len(index)) for s in sensors), dtype=np.int32)
        return cls(tuple(index), code, np.asarray(ts, dtype=np.float64), np.asarray(values, dtype=np.float64))

    @classmethod
    def from_arrow(cls, table) -> Columns:
        """From a pyarrow Table (sensor, ts, value): the previous spool format, and tests."""
        return cls.from_rows(table.column("sensor").to_pylist(), table.column("ts").to_pylist(),
                             table.column("value").to_pylist())

    def filter(self, mask: np.ndarray) -> Columns:
        return Columns(self.names, self.code[mask], self.ts[mask], self.value[mask])

    def split(self, key: np.ndarray) -> list[tuple[int, Columns]]:
        """The readings grouped by ``key[code]`` (one int per name), one part per key that occurs, in key order.
        Each part keeps append order and carries only the names it holds (in the order of ``names``); with a
        single key the Columns is returned as it is (no copy)."""
        if not self.num_rows:
            return []
        per_reading = key[self.code]
        first = per_reading[0]
        if (per_reading == first).all():
            return [(int(first), self)]
        order = np.argsort(per_reading, kind="stable")  # stable: each part keeps append order
        sorted_keys = per_reading[order]
        bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        present = np.zeros(len(self.names), dtype=bool)
        present[self.code] = True
        remap = np.full(len(self.names), -1, dtype=np.int32)
        out = []
        for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(order)].tolist(), strict=True):
            k = sorted_keys[a]
            used = np.flatnonzero(present & (key == k))
            remap[used] = np.arange(len(used), dtype=np.int32)
            rows = order[a:b]
            out.append((int(k), Columns(tuple(map(self.names.__getitem__, used.tolist())), remap[self.code[rows]],
                                        self.ts[rows], self.value[rows])))
        return out

    def sensors(self) -> list[str]:
        """The sensor name of each reading."""
        names = self.names
        return [names[c] for c in self.code.tolist()]

    def codes_for(self, wanted) -> np.ndarray:
        """Per name in ``names``: its position in ``wanted`` (a list), or -1."""
        position = {s: i for i, s in enumerate(wanted)}
        return np.array([position.get(n, -1) for n in self.names], dtype=np.int64)

    def to_pydict(self) -> dict[str, list]:
        return {"sensor": self.sensors(), "ts": self.ts.tolist(), "value": self.value.tolist()}

    def to_pandas(self):
        """A DataFrame (sensor, ts, value), for inspection and tests (imports pandas)."""
        import pandas as pd

        return pd.DataFrame({"sensor": self.sensors(), "ts": self.ts, "value": self.value})

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        """One Columns from several, in order (their name tables merged)."""
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return Columns.empty()
        if len(parts) == 1:
            return parts[0]
        names = parts[0].names
        if all(p.names is names or p.names == names for p in parts):  # the common case: one name table
            return Columns(names, np.concatenate([p.code for p in parts]), np.concatenate([p.ts for p in parts]),
                           np.concatenate([p.value for p in parts]))
        index: dict[str, int] = {}
        codes = []
        for part in parts:
            lut = np.array([index.setdefault(n, len(index)) for n in part.names], dtype=np.int32)
            codes.append(lut[part.code])
        return Columns(tuple(index), np.concatenate(codes), np.concatenate([p.ts for p in parts]),
                       np.concatenate([p.value for p in parts]))


def encode(cols: Columns) -> bytes:
    """One spool record (see the module docstring)."""
    return encode_record(names_blob(cols.names), cols.code, cols.ts, cols.value)


def names_blob(names) -> bytes:
    """A names table as a record stores it (UTF-8 JSON list)."""
    return json.dumps(list(names), ensure_ascii=False, separators=(",", ":")).encode()


def encode_record(names: bytes, code: np.ndarray, ts: np.ndarray, value: np.ndarray) -> bytes:
    """One spool record from its encoded names table (``names_blob``) and its columns (codes index the table)."""
    body = b"".join((names, code.astype("<i4").tobytes(), ts.astype("<f8").tobytes(), value.astype("<f8").tobytes()))
    return _HEADER.pack(MAGIC, VERSION, 0, len(code), len(names), zlib.crc32(body)) + body


class GroupCut:
    """How flushes of one names table are cut into records per group (``key``: the group of each name), made
    once and used while the table repeats (the same sensors report every flush): each group's names table is
    encoded once, and a flush costs one stable sort of its readings by group plus one slice per group.
    ``records(cols)`` gives the same records as ``[encode(p) for _, p in cols.split(key)]``."""

    def __init__(self, names: tuple[str, ...], key: np.ndarray) -> None:
        self.names = names
        self.key = key
        self.groups = np.unique(key)  # sorted, as split orders its parts
        self.local = np.empty(len(names), dtype=np.int32)  # each name's position in its group's table
        self.blobs = []
        by_group = np.argsort(key, kind="stable")  # each group's names in table order
        ends = np.searchsorted(key[by_group], self.groups, side="right").tolist()
        start = 0
        for end in ends:
            members = by_group[start:end]
            self.local[members] = np.arange(len(members), dtype=np.int32)
            self.blobs.append(names_blob(map(names.__getitem__, members.tolist())))
            start = end

    def records(self, cols: Columns) -> list[bytes]:
        """``cols`` (whose names table is ``self.names``) as records per group; a flush in which some name has
        no reading (a window's part of a flush) is cut by ``split`` (its tables list present names only)."""
        present = np.zeros(len(self.names), dtype=bool)
        present[cols.code] = True
        if not present.all():
            return [encode(part) for _, part in cols.split(self.key)]
        per_reading = self.key[cols.code]
        order = np.argsort(per_reading, kind="stable")  # stable: each group keeps append order
        ends = np.searchsorted(per_reading[order], self.groups, side="right").tolist()
        code, ts, value = self.local[cols.code[order]], cols.ts[order], cols.value[order]
        out = []
        start = 0
        for blob, end in zip(self.blobs, ends, strict=True):
            out.append(encode_record(blob, code[start:end], ts[start:end], value[start:end]))
            start = end
        return out


def read_file(path) -> tuple[Columns, int, bool]:
    """A segment file's records as one Columns, the number of complete records, and whether it ended torn.

    Streams the file twice (headers, then bodies straight into arrays of the final size), so reading a window
    costs the size of its columns once, not the file's bytes plus a copy."""
    sizes: list[tuple[int, int, int, int]] = []  # (body offset, n, names_len, crc) of each whole record
    torn = False
    with open(path, "rb") as fh:
        total = fh.seek(0, 2)
        pos = 0
        while pos < total:
            fh.seek(pos)
            header = fh.read(_HEADER.size)
            if len(header) < _HEADER.size:
                torn = True
                break
            magic, version, _, n, names_len, crc = _HEADER.unpack(header)
            end = pos + _HEADER.size + names_len + 20 * n
            if magic != MAGIC or version != VERSION or end > total:
                torn = True
                break
            sizes.append((pos + _HEADER.size, n, names_len, crc))
            pos = end
        count = sum(n for _, n, _, _ in sizes)
        code = np.empty(count, dtype=np.int32)
        ts = np.empty(count, dtype=np.float64)
        value = np.empty(count, dtype=np.float64)
        index: dict[str, int] = {}
        tables: dict[bytes, np.ndarray] = {}  # name table bytes → its lookup into the merged names
        at = good = 0
        for offset, n, names_len, crc in sizes:
            fh.seek(offset)
            body = fh.read(names_len + 20 * n)
            if zlib.crc32(body) != crc:
                torn = True
                break
            blob = body[:names_len]
            lut = tables.get(blob)
            if lut is None:
                lut = tables[blob] = np.array([index.setdefault(x, len(index)) for x in json.loads(blob)],
                                              dtype=np.int32)
            code[at:at + n] = lut[np.frombuffer(body, dtype="<i4", count=n, offset=names_len)]
            ts[at:at + n] = np.frombuffer(body, dtype="<f8", count=n, offset=names_len + 4 * n)
            value[at:at + n] = np.frombuffer(body, dtype="<f8", count=n, offset=names_len + 12 * n)
            at += n
            good += 1
    return Columns(tuple(index), code[:at], ts[:at], value[:at]), good, torn


def open_segment(path):
    """A segment file opened for reading (binary, buffered): what ``scan_records`` and ``read_codes`` read."""
    return open(path, "rb")  # held across a window's passes; WindowReadings.close closes it


@dataclass
class SegmentScan:
    """Where the good records of one segment file are, without their bodies (``scan_records``).

    ``names``: the segment's sensor names in order of first appearance (as ``read_file`` merges them);
    ``tables``: per distinct names table, the position in ``names`` of each of its names; ``records``: per good
    record three int64 in a row (offset of its code array, readings n, table index; flat, 24 bytes a record: a
    window at 20,000 sensors has 24,000 records); ``rows``: readings in all; ``good``: complete records;
    ``torn``: the file ended with a short or bad record (or a names table did not decode)."""

    names: list[str] = field(default_factory=list)
    tables: list[np.ndarray] = field(default_factory=list)
    records: array = field(default_factory=lambda: array("q"))
    rows: int = 0
    good: int = 0
    torn: bool = False


def scan_records(fh) -> SegmentScan:
    """First pass over a segment (an open binary file): validate every record in order (header, length, CRC,
    names table) and keep only where it is, so a window is checked whole before any of it is used and then read
    group by group with ``read_codes``. Streams the bodies one record at a time (a record's size at most).
    Same verdict as ``read_file``: stops at the first short or bad record; a names table that does not decode
    gives no record at all (torn). Raises OSError when the file cannot be read."""
    scan = SegmentScan()
    index: dict[str, int] = {}
    tables: dict[bytes, int] = {}  # digest of a names table → its index in scan.tables
    total = fh.seek(0, 2)
    fh.seek(0)
    pos = 0
    try:
        while pos < total:
            header = fh.read(_HEADER.size)
            if len(header) < _HEADER.size:
                scan.torn = True
                break
            magic, version, _, n, names_len, crc = _HEADER.unpack(header)
            end = pos + _HEADER.size + names_len + 20 * n
            if magic != MAGIC or version != VERSION or end > total:
                scan.torn = True
                break
            body = fh.read(names_len + 20 * n)
            if len(body) < names_len + 20 * n or zlib.crc32(body) != crc:
                scan.torn = True
                break
            view = memoryview(body)[:names_len]
            digest = hashlib.blake2b(view, digest_size=16).digest()  # tables repeat: decode each once
            table = tables.get(digest)
            if table is None:
                table = tables[digest] = len(scan.tables)
                scan.tables.append(np.array([index.setdefault(x, len(index)) for x in json.loads(bytes(view))],
                                            dtype=np.int32))
            scan.records.extend((pos + _HEADER.size + names_len, n, table))
            scan.rows += n
            scan.good += 1
            pos = end
    except ValueError:  # a names table that does not decode after a good CRC: as read_file, nothing is kept
        return SegmentScan(torn=True)
    scan.names = list(index)
    return scan


def read_codes(fh, offset: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (code, ts, value) arrays of the record whose code array starts at ``offset`` (found by
    ``scan_records``); codes index the record's own names table. Raises OSError when the file cannot be read."""
    fh.seek(offset)
    data = fh.read(20 * n)
    if len(data) < 20 * n:  # the file changed since it was scanned: nothing a reader may guess about
        raise OSError(f"segment shorter than when scanned ({len(data)} of {20 * n} bytes at {offset})")
    return (np.frombuffer(data, dtype="<i4", count=n), np.frombuffer(data, dtype="<f8", count=n, offset=4 * n),
            np.frombuffer(data, dtype="<f8", count=n, offset=12 * n))
