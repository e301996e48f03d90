"""Causal row operations on a regular grid (rows in time order, one per grid step). numpy only.

Every function here gives row t a value computed from rows ≤ t only: in production the gateway asks about
now, so a score may never look at later rows. Rows marked absent (``present`` False: no reading at all at
that grid point) are left out of every mean; a window without a present row gives NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def rows_for(seconds: float, rate: float) -> int:
    """Rows covering ``seconds`` at ``rate`` seconds per row: at least 1 (a span shorter than a row is one row)."""
    return max(1, round(seconds / rate))


def _cumsum0(values: np.ndarray) -> np.ndarray:
    """Cumulative sums with a leading zero row: sum of rows [a, b) = c[b] - c[a]."""
    shape = (1, *values.shape[1:])
    return np.concatenate([np.zeros(shape), np.cumsum(values, axis=0)])


def trailing_mean(z: np.ndarray, width: int, present: np.ndarray) -> np.ndarray:
    """Mean of the present rows among rows [t − width + 1, t] for each t (n × p); NaN where none is present.
    At the start the window is shorter (what exists so far)."""
    n = len(z)
    sums = _cumsum0(np.where(present[:, None], z, 0.0))
    counts = _cumsum0(present.astype(np.float64))
    hi = np.arange(1, n + 1)
    lo = np.maximum(hi - width, 0)
    count = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[hi] - sums[lo]) / count[:, None]


def lagged_mean(z: np.ndarray, lag: int, width: int, present: np.ndarray) -> np.ndarray:
    """The reference of row t: mean of the present rows among [t − lag − width + 1, t − lag] (n × p); NaN
    where that span starts before the first row or holds no present row."""
    n = len(z)
    out = np.full(z.shape, np.nan)
    hi = np.arange(n) - lag + 1  # exclusive end
    lo = hi - width
    ok = lo >= 0
    if not ok.any():
        return out
    sums = _cumsum0(np.where(present[:, None], z, 0.0))
    counts = _cumsum0(present.astype(np.float64))
    count = counts[hi[ok]] - counts[lo[ok]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = (sums[hi[ok]] - sums[lo[ok]]) / count[:, None]
    return out


def trailing_median(x: np.ndarray, width: int) -> np.ndarray:
    """Median of the finite values among x[t − width + 1 .. t] for each t (1-D); NaN where none is finite.
    A median rather than a mean: a burst shorter than half the window does not move it, a lasting change
    does (after half the window)."""
    n = len(x)
    if width <= 1 or n == 0:
        return x.astype(np.float64, copy=True)
    padded = np.concatenate([np.full(width - 1, np.nan), x.astype(np.float64)])
    windows = sliding_window_view(padded, width)
    out = np.full(n, np.nan)
    finite = np.isfinite(windows).any(axis=1)
    if finite.any():
        out[finite] = np.nanmedian(windows[finite], axis=1)
    return out


# --- the same means over a long run fed in parts -------------------------------------------------------------
# A run's running sums (``_cumsum0`` of the present rows, and of the present flags) can be extended part by part
# (``extend_sums``): each new sum is the previous one plus the row, in the order a single cumsum adds them, so
# the means below equal ``trailing_mean`` and ``lagged_mean`` of the whole run. ``sums[k - base]`` is the sum
# of rows [0, k): only the sums the rows still to come need are kept.
def extend_sums(sums: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``sums`` followed by the running sums of ``rows`` continuing its last one."""
    return np.concatenate([sums, np.cumsum(np.concatenate([sums[-1:], rows]), axis=0)[1:]])


def trailing_mean_at(sums: np.ndarray, counts: np.ndarray, base: int, first: int, last: int,
                     width: int) -> np.ndarray:
    """``trailing_mean`` of rows [first, last) from the run's running sums (see above)."""
    hi = np.arange(first + 1, last + 1)
    lo = np.maximum(hi - width, 0)
    count = counts[hi - base] - counts[lo - base]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[hi - base] - sums[lo - base]) / count[:, None]


def lagged_mean_at(sums: np.ndarray, counts: np.ndarray, base: int, first: int, last: int, lag: int,
                   width: int) -> np.ndarray:
    """``lagged_mean`` of rows [first, last) from the run's running sums (see above)."""
    out = np.full((last - first, sums.shape[1]), np.nan)
    hi = np.arange(first, last) - lag + 1  # exclusive end
    lo = hi - width
    ok = lo >= 0
    if not ok.any():
        return out
    count = counts[hi[ok] - base] - counts[lo[ok] - base]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = (sums[hi[ok] - base] - sums[lo[ok] - base]) / count[:, None]
    return out
