"""Arrow arrays to and from numpy through their buffers, never through pyarrow's pandas shim.

pyarrow imports pandas (about 50 MB resident and 0.4 s of start-up) the first time ``pa.array()``,
``Array.to_numpy()`` or ``Schema.empty_table()`` runs, if pandas is installed, only to check whether the argument
is a pandas object. The agent's data path (spool, resample) never holds pandas objects, so it builds and reads
its arrays here. Contract: float64 and int32 columns without nulls (the spool never writes nulls).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def f64(values: np.ndarray) -> pa.Array:
    """A float64 Arrow array sharing ``values``' memory (NaN stays NaN, not null)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(values)])


def strings(items: list[str]) -> pa.Array:
    """A string (UTF-8) Arrow array of ``items``."""
    encoded = [s.encode() for s in items]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    if encoded:
        offsets[1:] = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(b"".join(encoded))])


def mask(values: np.ndarray) -> pa.Array:
    """A boolean Arrow array (for ``Table.filter``) from a numpy bool array."""
    bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def _numpy(column: pa.Array | pa.ChunkedArray, dtype) -> np.ndarray:
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError("column has nulls")
        parts.append(np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk),
                                   offset=chunk.offset * np.dtype(dtype).itemsize))
    if not parts:
        return np.empty(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def to_f64(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A float64 column as a numpy array (read-only when it is a single chunk: copy before writing)."""
    return _numpy(column, np.float64)


def to_i32(column: pa.Array | pa.ChunkedArray, null: int = -1) -> np.ndarray:
    """An int32 column as a new numpy array, nulls replaced by ``null``."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        validity, data = chunk.buffers()[:2]
        n = len(chunk)
        values = np.frombuffer(data, dtype=np.int32, count=n, offset=chunk.offset * 4).copy() if n else \
            np.empty(0, np.int32)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            values[~bits[chunk.offset:chunk.offset + n].astype(bool)] = null
        parts.append(values)
    if not parts:
        return np.empty(0, dtype=np.int32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table of ``schema`` (string and float64 fields)."""
    arrays = [strings([]) if field.type == pa.string() else f64(np.empty(0)) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
