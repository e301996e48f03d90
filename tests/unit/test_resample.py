"""Resampling rule 2: label right, closed right; aggregations; the fill rule across windows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.model import Window
from agent.pipeline.csvfile import component_csv
from agent.pipeline.resample import Carry, resample


def table(rows):
    sensors, ts, values = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table({"sensor": pa.array(list(sensors), pa.string()), "ts": pa.array(list(ts), pa.float64()),
                     "value": pa.array(list(values), pa.float64())})


def test_label_right_closed_right_and_aggregations():
    w = Window(0, 300)
    rows = [("a", 60.0, 1.0),     # exactly on the grid point 60 → row 60
            ("a", 60.5, 10.0),    # just after → row 120
            ("a", 119.0, 20.0),   # row 120
            ("b", 150.0, 5.0), ("b", 170.0, 1.0), ("b", 179.9, 3.0)]
    aggs = {"a": "mean", "b": "max"}
    grid, _ = resample(table(rows), w, 60, ["a", "b"], aggs, 0, Carry({}))
    assert list(grid.times) == [60, 120, 180, 240, 300]
    assert grid.column("a")[0] == 1.0 and grid.column("a")[1] == 15.0
    assert grid.column("b")[2] == 5.0
    for agg, expected in (("min", 1.0), ("last", 3.0), ("mean", 3.0)):
        g, _ = resample(table(rows), w, 60, ["a", "b"], {"a": "mean", "b": agg}, 0, Carry({}))
        assert g.column("b")[2] == expected


def test_last_means_latest_timestamp_not_arrival_order():
    rows = [("a", 50.0, 2.0), ("a", 30.0, 1.0)]  # arrived out of order
    grid, _ = resample(table(rows), Window(0, 60), 60, ["a"], {"a": "last"}, 0, Carry({}))
    assert grid.column("a")[0] == 2.0


def test_fill_limit_carries_forward_including_across_windows():
    rows = [("a", 60.0, 7.0)]
    grid, carry = resample(table(rows), Window(0, 300), 60, ["a", "b"], {}, 2, Carry({}))
    col = grid.column("a")
    assert col[0] == 7.0 and col[1] == 7.0 and col[2] == 7.0 and math.isnan(col[3])
    assert carry.last["a"] == (60, 7.0)
    # next window: observation at 240 carries into 300 (1 step), 360 (2 steps), not 420
    rows2 = [("a", 240.0, 9.0)]
    _, carry1 = resample(table(rows2), Window(0, 300), 60, ["a"], {}, 2, Carry({}))
    grid2, _ = resample(table([]), Window(300, 600), 60, ["a"], {}, 2, carry1)
    col2 = grid2.column("a")
    assert col2[0] == 9.0 and math.isnan(col2[1])  # 360 is 2 steps after 240, 420 is 3


def test_unknown_sensors_and_non_finite_values_are_ignored():
    rows = [("zzz", 10.0, 1.0), ("a", 10.0, float("nan")), ("a", 20.0, 4.0)]
    grid, _ = resample(table(rows), Window(0, 60), 60, ["a"], {}, 0, Carry({}))
    assert grid.unknown_sensors == 1
    assert grid.column("a")[0] == 4.0


def test_csv_bytes_header_order_empty_cells_and_no_file_without_data():
    grid, _ = resample(table([("b", 1652443860.0, 0.1), ("a", 1652443920.0, 2.0)]), Window(1652443800, 1652444100),
                       60, ["a", "b", "c"], {}, 0, Carry({}))
    text = component_csv(grid, ["b", "a"]).decode()
    assert text.splitlines() == [
        "Timestamp,b,a",
        "2022-05-13T12:11:00.000000,0.1,",
        "2022-05-13T12:12:00.000000,,2.0",
        "2022-05-13T12:13:00.000000,,",
        "2022-05-13T12:14:00.000000,,",
        "2022-05-13T12:15:00.000000,,",
    ]
    assert text.endswith("\n")
    assert component_csv(grid, ["c"]) is None


def reference(rows, window, rate, sensors, agg, fill_limit):
    """A slow, obviously-correct model of rule 2 and the fill rule (no carry)."""
    points = list(range(window.start + rate, window.end + 1, rate))
    out = {s: [] for s in sensors}
    for s in sensors:
        last_obs = None
        for i, g in enumerate(points):
            vals = sorted([(ts, v) for (name, ts, v) in rows if name == s and g - rate < ts <= g])
            if vals:
                v = {"mean": lambda x: sum(x) / len(x), "max": max, "min": min, "last": lambda x: x[-1]}[agg](
                    [v for _, v in vals])
                out[s].append(v)
                last_obs = (i, v)
            elif last_obs is not None and i - last_obs[0] <= fill_limit:
                out[s].append(last_obs[1])
            else:
                out[s].append(None)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 600), st.integers(-1000, 1000)),
                max_size=40),
       st.sampled_from([30, 60, 120]), st.sampled_from(["mean", "max", "min", "last"]), st.integers(0, 4))
def test_matches_reference_model(raw, rate, agg, fill_limit):
    seen = set()
    rows = []
    for s, ts, v in raw:  # distinct timestamps per sensor keep "last" unambiguous
        if (s, ts) not in seen:
            seen.add((s, ts))
            rows.append((s, float(ts), float(v)))
    w = Window(0, 600)
    grid, _ = resample(table(rows), w, rate, ["a", "b"], {"a": agg, "b": agg}, fill_limit, Carry({}))
    ref = reference(rows, w, rate, ["a", "b"], agg, fill_limit)
    for s in ("a", "b"):
        got = [None if np.isnan(x) else x for x in grid.column(s)]
        assert len(got) == len(ref[s])
        for g, r in zip(got, ref[s], strict=True):
            assert (g is None and r is None) or (g is not None and r is not None and math.isclose(g, r))


def test_same_inputs_same_bytes():
    rng = np.random.default_rng(1)
    rows = [(f"s{i % 7}", float(rng.uniform(0, 300)), float(rng.normal())) for i in range(500)]
    outs = set()
    for _ in range(3):
        grid, _ = resample(table(rows), Window(0, 300), 10, [f"s{i}" for i in range(7)], {}, 2, Carry({}))
        outs.add(component_csv(grid, [f"s{i}" for i in range(7)]))
    assert len(outs) == 1


def test_aggregates_are_bit_identical_to_pandas_groupby():
    """The data path runs without pandas; its aggregates must still equal pandas' to the last bit (Kahan mean)."""
    import pandas as pd

    rng = np.random.default_rng(7)
    n = 20_000
    sensors = [f"s{i}" for i in range(13)]
    rows = list(zip(rng.choice(sensors, n).tolist(), rng.uniform(0, 600, n).round(3).tolist(),
                    (rng.normal(0, 1, n) * 10.0 ** rng.integers(-3, 6, n)).tolist(), strict=True))
    aggs = {s: ("mean", "last", "min", "max")[i % 4] for i, s in enumerate(sensors)}
    grid, _ = resample(table(rows), Window(0, 600), 30, sensors, aggs, 0, Carry({}))
    df = pd.DataFrame(rows, columns=["sensor", "ts", "value"]).sort_values("ts", kind="stable")
    df["g"] = (np.ceil(df["ts"] / 30) * 30).astype(np.int64)
    for s in sensors:
        expected = df[df["sensor"] == s].groupby("g")["value"].agg(aggs[s])
        got = grid.column(s)
        for g, v in expected.items():
            assert got[g // 30 - 1] == v, (s, g)  # exact equality, not isclose
