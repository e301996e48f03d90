"""Readings → rows on the sampling grid (rules 2 and 2a of docs/decisions). Pure functions: no I/O, no clock.

Rule 2 (the grid). A grid point t holds the aggregate of the readings in (t − rate, t] (label right, closed
right). A window's rows are the grid points in (start, end].

Rule 2a (validity: sources that report by exception). A reading of a *holding* sensor holds from its timestamp
while its source still vouches for it: until the next reading of that sensor, a validity-end marker for it
(a Reading whose value is NaN, see :func:`agent.core.model.validity_end`: a Bad/Uncertain status, a lost session or
subscription, a failed poll, the connector stopping), or ``hold_secs`` after the reading (the sensor's
``max_age``). A grid point whose interval holds no reading takes the value that holds at t (the latest reading's
value), whatever ``fill_limit`` says.

The fill rule. When no value holds at t, the last value is carried at most ``fill_limit`` grid steps, counted
from the last grid point at which it was observed or held (for a sensor that does not hold, the grid point of
its last observation: rule 2 as it always was); beyond that the cell stays empty (NaN → an empty CSV cell).
Observations and held values may come from earlier windows: that is the ``Carry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agent.core.model import Window
from agent.pipeline.columns import Columns

_FAR = 10**12  # "no observation": a position further back than any fill limit reaches


@dataclass(frozen=True)
class Carry:
    """What the next window needs from the previous ones, per sensor.

    ``last``: sensor → (grid point of the last observed or held value, that value).
    ``until``: sensor → Unix seconds until which that value still holds (math.inf: until a marker or the next
    reading). A sensor absent from ``until`` does not hold: only the fill rule carries it.
    """

    last: dict[str, tuple[int, float]]
    until: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, list] = {}
        for s, (g, v) in self.last.items():
            until = self.until.get(s)
            out[s] = [g, v] if until is None else [g, v, None if math.isinf(until) else until]
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> Carry:
        last, until = {}, {}
        for s, entry in (data or {}).items():
            last[s] = (int(entry[0]), float(entry[1]))
            if len(entry) > 2:
                until[s] = math.inf if entry[2] is None else float(entry[2])
        return cls(last, until)

    def holds_into(self, window: Window) -> bool:
        """Whether some carried value still holds after ``window.start`` (rule 2a). Such a window is written
        even when it has no reading: a steady plant reports nothing new, and that is a value, not a gap. A
        window with no reading that no held value reaches is a missing window (rule 5), whatever the fill
        rule could carry into it."""
        return any(until > window.start for until in self.until.values())


@dataclass(frozen=True)
class Grid:
    """A window's rows: ``times`` (grid points, Unix s), ``values`` (rows × sensors, float64, NaN = empty)."""

    times: np.ndarray
    sensors: list[str]
    values: np.ndarray
    unknown_sensors: int = 0  # readings of sensors that are in no component (ignored)

    def column(self, sensor: str) -> np.ndarray:
        return self.values[:, self.sensors.index(sensor)]


def resample(readings: Columns, window: Window, rate: int, sensors: list[str], aggs: dict[str, str],
             fill_limit: int, carry: Carry, holds: dict[str, float] | None = None) -> tuple[Grid, Carry]:
    """Resample one window's readings (``Columns``, or a pyarrow Table sensor/ts/value; NaN values are
    validity-end markers).

    ``aggs`` maps a sensor to mean|last|min|max ("last" = the latest timestamp; ties keep arrival order).
    ``holds`` maps a sensor to how long (seconds, math.inf = without limit) a reading of it holds (rule 2a);
    sensors not in it do not hold. Returns the grid and the carry for the next window. Same inputs → same
    output, bit for bit.
    """
    holds = holds or {}
    if not isinstance(readings, Columns):
        readings = Columns.from_arrow(readings)
    times = np.arange(window.start + rate, window.end + 1, rate, dtype=np.int64)
    n_rows, n_cols = len(times), len(sensors)
    values = np.full((n_rows, n_cols), np.nan)
    latest = values.copy()          # per cell: value of the latest reading (what holds after the cell)
    latest_ts = values.copy()       # per cell: its timestamp
    hold_secs = np.array([holds.get(s, 0.0) for s in sensors], dtype=np.float64)
    unknown = 0
    markers = (np.empty(0, np.int64), np.empty(0))  # (column, ts) of validity ends, sorted by (column, ts)

    if readings.num_rows:
        unknown, markers = _aggregate(readings, window, rate, sensors, aggs, values, latest, latest_ts)

    observed = ~np.isnan(values)
    holding = hold_secs > 0
    # what a cell hands on to the cells after it: the aggregate (rule 2), or for holding sensors the latest
    # reading, valid until the first marker after it or its hold time, whichever comes first
    handed = np.where(holding[None, :] & observed, latest, values)
    until = np.full((n_rows, n_cols), -np.inf)
    if holding.any() and observed.any():
        r, c = np.nonzero(observed & holding[None, :])
        until[r, c] = np.minimum(latest_ts[r, c] + hold_secs[c], _next_marker(markers, c, latest_ts[r, c]))
    del latest, latest_ts  # the grid's temporaries go as soon as they are used (a close's peak is these)

    carry_g, carry_v, carry_until = _carried(carry, sensors, markers, window.start)
    filled = _fill(values, observed, handed, until, times, rate, fill_limit, carry_g, carry_v, carry_until)
    return Grid(times, list(sensors), filled, unknown), _next_carry(carry, sensors, observed, handed, until, times,
                                                                    carry_until)


_AGG_CODE = {"mean": 0, "last": 1, "min": 2, "max": 3}


def _aggregate(readings: Columns, window: Window, rate: int, sensors: list[str], aggs: dict[str, str],
               values: np.ndarray, latest: np.ndarray, latest_ts: np.ndarray) -> tuple[int, tuple]:
    """Fill ``values`` (the aggregate per cell), ``latest``/``latest_ts`` (the latest reading per cell).

    Returns the count of readings of unknown sensors and the validity-end markers as (column, ts) sorted by
    (column, ts). Within a cell, readings are taken in timestamp order (ties: arrival order); "mean" sums them
    with Kahan compensation in that order, as pandas' groupby mean does, so results are the same to the bit.
    """
    n_cols = values.shape[1]
    col = readings.codes_for(sensors)[readings.code]
    ts = readings.ts
    val = readings.value
    known = col >= 0
    unknown = int(len(col) - np.count_nonzero(known))
    nan = np.isnan(val)
    is_marker = known & nan
    markers = (np.empty(0, np.int64), np.empty(0))
    if is_marker.any():
        m_col, m_ts = col[is_marker], ts[is_marker]
        order = np.lexsort((m_ts, m_col))
        markers = (m_col[order], m_ts[order])
    g = np.ceil(ts / rate) * rate
    ok = known & ~nan & np.isfinite(val) & (g > window.start) & (g <= window.end)
    del known, nan, is_marker  # per-reading temporaries go as soon as they are used: a close's peak is these
    if not ok.any():
        return unknown, markers
    c, t, v = col[ok], ts[ok], val[ok]
    r = ((g[ok].astype(np.int64) - window.start) // rate - 1).astype(np.int64)
    del col, g, ok
    cell = r * n_cols + c
    del r, c
    order = np.lexsort((t, cell))  # by cell, then timestamp; np.lexsort is stable: ties keep arrival order
    cell, t, v = cell[order], t[order], v[order]
    del order
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    counts = np.diff(np.r_[starts, len(cell)])
    ucell = cell[starts]
    del cell
    rows, cols = ucell // n_cols, ucell % n_cols
    del ucell
    lasts = starts + counts - 1
    latest[rows, cols] = v[lasts]
    latest_ts[rows, cols] = t[lasts]
    del t
    code = np.array([_AGG_CODE[aggs.get(s, "mean")] for s in sensors], dtype=np.int8)[cols]
    out = np.empty(len(starts))
    for k, reducer in ((1, None), (2, np.minimum), (3, np.maximum)):
        sel = code == k
        if sel.any():
            out[sel] = v[lasts[sel]] if reducer is None else reducer.reduceat(v, starts)[sel]
    sel = np.flatnonzero(code == 0)
    if len(sel):
        out[sel] = _kahan_mean(v, starts[sel], counts[sel])
    values[rows, cols] = out
    return unknown, markers


def _kahan_mean(v: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of each run v[start : start + count], summed in order with Kahan compensation (pandas' rule).

    Vectorised across runs: step j adds the j-th element of every run that has one, so the work is the number
    of readings plus one numpy step per element of the longest run."""
    if len(counts) and counts.max() == 1:  # one reading per cell (the usual 1 Hz case): 0.0 + x, as the sum gives
        return v[starts] + 0.0
    by_len = np.argsort(-counts, kind="stable")
    s_starts, s_counts = starts[by_len], counts[by_len]
    sums = np.zeros(len(starts))
    comp = np.zeros(len(starts))
    active = len(starts)
    for j in range(int(s_counts[0]) if len(s_counts) else 0):
        while active and s_counts[active - 1] <= j:
            active -= 1
        x = v[s_starts[:active] + j]
        y = x - comp[:active]
        tot = sums[:active] + y
        comp[:active] = (tot - sums[:active]) - y
        sums[:active] = tot
    out = np.empty(len(starts))
    out[by_len] = sums / s_counts
    return out


def _next_marker(markers: tuple[np.ndarray, np.ndarray], cols: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For each (column, ts): the time of the first validity-end marker of that column at or after ts (inf if
    none)."""
    m_col, m_ts = markers
    out = np.full(len(cols), np.inf)
    if not len(m_col) or not len(cols):
        return out
    # one sorted key per (column, time); times of one window span less than 2**22 s, far inside float64
    offset = float(min(m_ts.min(), ts.min()))
    span = 2.0 ** 22
    m_key = m_col * span + (m_ts - offset)
    q_key = cols * span + (ts - offset)
    idx = np.searchsorted(m_key, q_key, side="left")
    found = idx < len(m_key)
    idx_c = np.minimum(idx, len(m_key) - 1)
    same_col = found & (m_col[idx_c] == cols)
    out[same_col] = m_ts[idx_c[same_col]]
    return out


def _carried(carry: Carry, sensors: list[str], markers, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The carry as arrays per column: grid point, value, and until (cut by the window's first marker of that
    column, whatever its time: a validity end that arrived after its own window was written is filed with the
    next window, keeping its time, see agent.pipeline.spool)."""
    n = len(sensors)
    g = np.full(n, -np.inf)
    v = np.full(n, np.nan)
    until = np.full(n, -np.inf)
    for i, s in enumerate(sensors):
        if s in carry.last:
            g[i], v[i] = carry.last[s]
            until[i] = carry.until.get(s, -np.inf)
    held = np.nonzero(until > start)[0]
    if len(held) and len(markers[0]):
        earliest = min(float(start), float(markers[1].min()))
        until[held] = np.minimum(until[held], _next_marker(markers, held, np.full(len(held), earliest)))
    return g, v, until


def _fill(values, observed, handed, until, times, rate, fill_limit, carry_g, carry_v, carry_until) -> np.ndarray:
    """Empty cells take the value that holds at t, or (when none holds) the last value within fill_limit."""
    n_rows, n_cols = values.shape
    if not n_rows or not n_cols:
        return values
    rows = np.arange(n_rows)[:, None]
    pos = np.maximum.accumulate(np.where(observed, rows, -_FAR), axis=0)  # latest observed row at or before
    from_carry = pos < 0
    src = np.where(from_carry, 0, pos)
    del pos
    val = np.where(from_carry, carry_v[None, :], np.take_along_axis(handed, src, axis=0))
    vu = np.where(from_carry, carry_until[None, :], np.take_along_axis(until, src, axis=0))
    g_obs = np.where(from_carry, carry_g[None, :], times[src])
    del src, from_carry
    t = times[:, None].astype(np.float64)
    held = vu > t
    with np.errstate(invalid="ignore"):
        # last grid point at which the value was observed or held: its own, or the last one before `until`
        base = np.where(np.isfinite(vu), np.maximum(g_obs, np.ceil(vu / rate) * rate - rate), g_obs)
        del g_obs, vu
        within = (t - base) <= fill_limit * rate
        del base
    fill = ~observed & ~np.isnan(val) & (held | within)
    out = values.copy()
    out[fill] = val[fill]
    return out


def _next_carry(carry: Carry, sensors, observed, handed, until, times, carry_until) -> Carry:
    last = dict(carry.last)
    held = {s: u for s, u in carry.until.items()}
    n_rows = len(times)
    if n_rows:
        last_rows = np.where(observed.any(axis=0), n_rows - 1 - np.argmax(observed[::-1], axis=0), -1)
    else:
        last_rows = np.full(len(sensors), -1)
    for i, s in enumerate(sensors):
        p = last_rows[i]
        if p >= 0:
            last[s] = (int(times[p]), float(handed[p, i]))
            u = float(until[p, i])
        else:
            u = float(carry_until[i])
        if u == -math.inf:
            held.pop(s, None)
        else:
            held[s] = u
    return Carry(last, held)


def frame(grid: Grid):
    """The grid as a pandas DataFrame indexed by UTC timestamps (for inspection and tests)."""
    import pandas as pd  # only here: the data path itself runs without pandas

    index = pd.to_datetime(grid.times, unit="s", utc=True)
    return pd.DataFrame(grid.values, index=index, columns=grid.sensors)
