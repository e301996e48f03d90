"""The numpy window grid (agent.lookout_local.window_grid) against the pandas path it replaces in inference:
``modeling.resample`` per component, ``join``, ``reindex(grid).ffill().bfill()``, compared bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.model import Window
from agent.lookout_local.modeling import join, resample
from agent.lookout_local.window_grid import fill_both_ways, grid_means
from agent.pipeline.windows import grid_points

T0 = 1_767_225_600


def pandas_path(frames: dict[str, pd.DataFrame], window: Window, rate: int) -> np.ndarray:
    parts = [resample(f, name, tuple(c for c in f.columns if c != "timestamp"), rate) for name, f in frames.items()]
    grid = pd.DatetimeIndex(pd.to_datetime(grid_points(window, rate), unit="s"))
    return join(parts).reindex(grid).ffill().bfill().to_numpy(dtype=np.float64)


def numpy_path(frames: dict[str, pd.DataFrame], window: Window, rate: int) -> np.ndarray:
    grid_s = np.asarray(grid_points(window, rate), dtype=np.int64)
    parts = []
    for f in frames.values():
        ts_ns = f["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        values = f[[c for c in f.columns if c != "timestamp"]].to_numpy(dtype=np.float64)
        parts.append(fill_both_ways(grid_means(ts_ns, values, grid_s, rate)))
    return np.hstack(parts)


value = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.1, 0.2, 0.3, 1e-9, 1e9]))


@st.composite
def windows(draw):
    rate = draw(st.sampled_from([60, 300, 30]))
    frequency = draw(st.sampled_from([300, 600, 900]))
    window = Window(T0, T0 + frequency)
    frames = {}
    for c in range(draw(st.integers(1, 3))):
        n_sensors = draw(st.integers(1, 4))
        # distinct, sorted times in (start, end]: sub-grid offsets put several rows in one grid point
        offsets = sorted(set(draw(st.lists(st.integers(1, frequency * 1000), min_size=1, max_size=25))))
        rows = [[draw(value) for _ in range(n_sensors)] for _ in offsets]
        frame = pd.DataFrame(rows, columns=[f"s{k}" for k in range(n_sensors)], dtype=np.float64)
        frame.insert(0, "timestamp", pd.to_datetime([T0 * 1000 + o for o in offsets], unit="ms"))
        frames[f"c{c}"] = frame
    return frames, window, rate


@settings(max_examples=600, deadline=None)
@given(windows())
def test_the_numpy_grid_is_the_pandas_grid_to_the_bit(case):
    frames, window, rate = case
    want, got = pandas_path(frames, window, rate), numpy_path(frames, window, rate)
    assert want.shape == got.shape
    assert np.array_equal(np.isnan(want), np.isnan(got))
    assert want.tobytes() == got.tobytes()  # same bits, NaN included (both are the default quiet NaN)


def test_kahan_order_matters_and_matches():
    """Values whose plain sum differs from the compensated one: the mean must be pandas' (compensated)."""
    window = Window(T0, T0 + 300)
    xs = [1.0, 1e-16, 1e-16, 1e-16, 1e-16]
    frame = pd.DataFrame({"timestamp": pd.to_datetime([(T0 + 1 + k) * 1000 for k in range(5)], unit="ms"),
                          "s0": xs})
    frames = {"c": frame}
    naive = np.float64(0.0)
    for x in xs:
        naive += x
    assert naive / 5 != pandas_path(frames, window, 60)[0, 0]  # this case tells a plain sum from pandas' mean
    assert pandas_path(frames, window, 60).tobytes() == numpy_path(frames, window, 60).tobytes()
