"""Synthetic plant history for the local L4E service tests: correlated multivariate 1-minute data.

Two latent factors (a daily load cycle and a slow AR(1) process) drive every sensor through fixed
loadings, plus independent noise, so sensors are strongly correlated, as on a real pump/motor. The
series is a pure function of (seed, start, minute index): inference windows can be drawn from the same
process as the training history.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

COMPONENTS = {"pump": ["flow", "pressure", "vibration", "temperature"], "motor": ["current", "speed", "winding"]}
START = pd.Timestamp("2026-01-01T00:00:00")
DAY = 1440


def schema(components: dict[str, list[str]] = COMPONENTS) -> str:
    return json.dumps({"Components": [
        {"ComponentName": c, "Columns": [{"Name": "Timestamp", "Type": "DATETIME"}]
         + [{"Name": s, "Type": "DOUBLE"} for s in sensors]} for c, sensors in components.items()]})


def series(minutes: int, seed: int = 7, components: dict[str, list[str]] = COMPONENTS) -> dict[str, pd.DataFrame]:
    """``minutes`` rows from START at 1-minute steps, per component: a Timestamp column + sensors."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    cycle = np.sin(2 * np.pi * t / DAY)
    ar = np.zeros(minutes)
    shocks = rng.normal(0, 0.3, minutes)
    for i in range(1, minutes):
        ar[i] = 0.98 * ar[i - 1] + shocks[i]
    factors = np.stack([cycle, ar / 3.0])
    n = sum(len(s) for s in components.values())
    loadings = rng.uniform(0.5, 1.5, (n, 2)) * rng.choice([-1, 1], (n, 2))
    levels = rng.uniform(10, 100, n)
    values = levels[:, None] + 5 * loadings @ factors + rng.normal(0, 0.3, (n, minutes))
    stamps = START + pd.to_timedelta(t, unit="min")
    out, i = {}, 0
    for comp, sensors in components.items():
        frame = pd.DataFrame({"Timestamp": stamps})
        for s in sensors:
            frame[s] = values[i]
            i += 1
        out[comp] = frame
    return out


def to_csv(frame: pd.DataFrame) -> bytes:
    """CSV bytes as the agent writes them (``%Y-%m-%dT%H:%M:%S.%f``, UTC, no zone)."""
    text = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%f", float_format="%.6f")
    return text.encode()


def minute_index(ts: float) -> int:
    return int((ts - START.timestamp()) // 60)
