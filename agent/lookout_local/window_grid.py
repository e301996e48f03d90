"""One inference window's rows on the model's grid, in numpy: what ``modeling.resample`` + ``join`` +
``reindex(grid).ffill().bfill()`` give, bit for bit, without pandas' per-call overhead.

An execution reads a few rows per component (the agent writes one per grid point), and pandas spends
milliseconds per call on resample/join/reindex machinery for them: most of an execution's CPU in a fleet.
Contract, for each component's rows (``timestamp`` ascending, unique) and each of its sensors:

- a row belongs to the grid point ``g = ceil(t / rate) · rate`` (label right, closed right, origin the epoch);
- the value at ``g`` is the mean of the sensor's non-NaN values there, summed in row order with Kahan
  compensation, as pandas' groupby mean does (so the bytes of results.jsonl do not change); NaN when none;
- the window keeps the grid points in (start, end]; then each column is filled forward, then backward.

Filling is per column, so joining components first (as the pandas path does) changes nothing.
"""

from __future__ import annotations

import numpy as np


def grid_means(ts_ns: np.ndarray, values: np.ndarray, grid_s: np.ndarray, rate: int) -> np.ndarray:
    """(len(grid) × sensors) means at each grid point of rows ``values`` (rows × sensors) stamped ``ts_ns``
    (int64 nanoseconds, ascending); NaN where a grid point has no value."""
    out = np.full((len(grid_s), values.shape[1]), np.nan)
    if not len(ts_ns):
        return out
    step = np.int64(rate) * 1_000_000_000
    labels = -(-ts_ns // step) * step // 1_000_000_000  # ceil to the grid, in seconds
    where = np.searchsorted(grid_s, labels)
    on_grid = (where < len(grid_s)) & (grid_s[np.minimum(where, len(grid_s) - 1)] == labels)
    rows = np.flatnonzero(on_grid)
    if not len(rows):
        return out
    slot = where[rows]
    starts = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])  # rows are in time order: one run per point
    ends = np.r_[starts[1:], len(rows)]
    for a, b in zip(starts, ends, strict=True):
        block = values[rows[a:b]]
        if b - a == 1:
            out[slot[a]] = 0.0 + block[0]  # as the sum starting at 0.0 does: -0.0 becomes 0.0
            continue
        total = np.zeros(block.shape[1])
        comp = np.zeros(block.shape[1])
        count = np.zeros(block.shape[1])
        for x in block:  # Kahan, skipping NaN, in row order (pandas' group_mean)
            ok = ~np.isnan(x)
            y = np.where(ok, x - comp, 0.0)
            t = total + y
            comp = np.where(ok, (t - total) - y, comp)
            total = np.where(ok, t, total)
            count += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            out[slot[a]] = np.where(count > 0, total / count, np.nan)
    return out


def fill_forward(matrix: np.ndarray) -> np.ndarray:
    """Each column filled forward (pandas' ffill()); cells before a column's first value stay NaN."""
    n = len(matrix)
    if n == 0:
        return matrix
    idx = np.where(~np.isnan(matrix), np.arange(n)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return np.take_along_axis(matrix, idx, axis=0)


def fill_both_ways(matrix: np.ndarray) -> np.ndarray:
    """Each column filled forward, then backward (pandas' ffill().bfill()); all-NaN columns stay NaN."""
    if len(matrix) == 0:
        return matrix
    return fill_forward(fill_forward(matrix)[::-1])[::-1]
