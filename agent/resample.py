"""Readings → rows on the sampling grid (l4e-decisions.md rule 2). Pure functions: no I/O, no clock.

A grid point t holds the aggregate of the readings in (t − rate, t] (label right, closed right). A window's
rows are the grid points in (start, end]. An empty grid point takes the last observed value of its sensor
if that observation is at most ``fill_limit`` grid steps earlier (the observation may come from the previous
window: that is the ``carry``); otherwise it stays empty (NaN → an empty CSV cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from agent.model import Window


@dataclass(frozen=True)
class Carry:
    """Last observed (not filled) value per sensor before a window: sensor → (grid point, value)."""

    last: dict[str, tuple[int, float]]

    def to_json(self) -> dict:
        return {s: [g, v] for s, (g, v) in self.last.items()}

    @classmethod
    def from_json(cls, data: dict | None) -> Carry:
        return cls({s: (int(g), float(v)) for s, (g, v) in (data or {}).items()})


@dataclass(frozen=True)
class Grid:
    """A window's rows: ``times`` (grid points, Unix s), ``values`` (rows × sensors, float64, NaN = empty)."""

    times: np.ndarray
    sensors: list[str]
    values: np.ndarray
    unknown_sensors: int = 0  # readings of sensors that are in no component (ignored)

    def column(self, sensor: str) -> np.ndarray:
        return self.values[:, self.sensors.index(sensor)]


_AGG = {"mean": "mean", "last": "last", "min": "min", "max": "max"}


def resample(readings: pa.Table, window: Window, rate: int, sensors: list[str], aggs: dict[str, str],
             fill_limit: int, carry: Carry) -> tuple[Grid, Carry]:
    """Resample one window's readings (columns sensor, ts, value) onto its grid.

    ``aggs`` maps a sensor to mean|last|min|max ("last" = the latest timestamp; ties keep arrival order).
    Returns the grid and the carry for the next window. Same inputs → same output, bit for bit.
    """
    times = np.arange(window.start + rate, window.end + 1, rate, dtype=np.int64)
    n_rows, n_cols = len(times), len(sensors)
    values = np.full((n_rows, n_cols), np.nan)
    col_of = {s: i for i, s in enumerate(sensors)}
    unknown = 0

    if readings.num_rows:
        df = readings.to_pandas()
        df["col"] = df["sensor"].map(col_of)
        unknown = int(df["col"].isna().sum())
        df = df[df["col"].notna() & np.isfinite(df["value"])]
        df["g"] = (np.ceil(df["ts"].to_numpy() / rate) * rate).astype(np.int64)
        df = df[(df["g"] > window.start) & (df["g"] <= window.end)]
        if len(df):
            df = df.sort_values("ts", kind="stable")
            df["col"] = df["col"].astype(np.int64)
            df["agg"] = df["sensor"].map(aggs).fillna("mean")  # a dict lookup per sensor, vectorised
            for agg_name, part in df.groupby("agg", sort=True):
                grouped = part.groupby(["col", "g"], sort=False)["value"].agg(_AGG[agg_name])
                cols = grouped.index.get_level_values(0).to_numpy()
                rows = (grouped.index.get_level_values(1).to_numpy() - window.start) // rate - 1
                values[rows, cols] = grouped.to_numpy()

    observed = ~np.isnan(values)
    new_carry = dict(carry.last)
    if n_rows:
        last_rows = np.where(observed.any(axis=0), n_rows - 1 - np.argmax(observed[::-1], axis=0), -1)
        for i, s in enumerate(sensors):
            if last_rows[i] >= 0:
                new_carry[s] = (int(times[last_rows[i]]), float(values[last_rows[i], i]))
    filled = _fill_forward(values, observed, times, sensors, rate, fill_limit, carry)
    return Grid(times, list(sensors), filled, unknown), Carry(new_carry)


def _fill_forward(values: np.ndarray, observed: np.ndarray, times: np.ndarray, sensors: list[str], rate: int,
                  fill_limit: int, carry: Carry) -> np.ndarray:
    """Carry each observation forward into at most ``fill_limit`` following empty grid points."""
    if fill_limit <= 0 or not len(times):
        return values
    n_rows, n_cols = values.shape
    rows = np.arange(n_rows)[:, None]
    # position (in grid steps, relative to row 0) of the latest observation at or before each row
    first = times[0]
    carry_pos = np.full(n_cols, -(10**12), dtype=np.int64)
    carry_val = np.full(n_cols, np.nan)
    for i, s in enumerate(sensors):
        if s in carry.last:
            g, v = carry.last[s]
            if g < first:
                carry_pos[i] = (g - first) // rate
                carry_val[i] = v
    pos = np.where(observed, rows, -(10**12))
    pos = np.maximum.accumulate(pos, axis=0)
    from_carry = pos < 0
    pos = np.where(from_carry, carry_pos[None, :], pos)
    age = rows - pos
    fill = ~observed & (age <= fill_limit)
    src = np.where(from_carry, 0, pos).astype(np.int64)
    taken = np.take_along_axis(values, src, axis=0)
    taken = np.where(from_carry, carry_val[None, :], taken)
    out = values.copy()
    out[fill] = taken[fill]
    return out


def frame(grid: Grid) -> pd.DataFrame:
    """The grid as a DataFrame indexed by UTC timestamps (for inspection and tests)."""
    index = pd.to_datetime(grid.times, unit="s", utc=True)
    return pd.DataFrame(grid.values, index=index, columns=grid.sensors)
