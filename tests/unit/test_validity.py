"""Rule 2a: a value holds while its source vouches for it; then the fill rule applies from where it stopped."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.model import Reading, Window
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.resample import Carry, resample
from agent.pipeline.spool import Spool

NAN = math.nan
INF = math.inf


def table(rows):
    sensors, ts, values = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table({"sensor": pa.array(list(sensors), pa.string()), "ts": pa.array(list(ts), pa.float64()),
                     "value": pa.array(list(values), pa.float64())})


def col(rows, window=Window(0, 300), fill_limit=2, holds=None, carry=None, sensor="a", rate=60):
    grid, carry = resample(table(rows), window, rate, [sensor], {}, fill_limit, carry or Carry({}),
                           {sensor: INF} if holds is None else holds)
    return [None if math.isnan(v) else v for v in grid.column(sensor)], carry


def test_a_held_value_fills_every_row_whatever_the_fill_limit():
    got, carry = col([("a", 30.0, 5.0)], fill_limit=1)
    assert got == [5.0] * 5
    assert carry.until["a"] == INF
    # the next window has no reading at all: the value still holds
    got2, _ = col([], window=Window(300, 600), fill_limit=1, carry=carry)
    assert got2 == [5.0] * 5


def test_a_sensor_that_does_not_hold_keeps_the_fill_rule():
    got, carry = col([("a", 30.0, 5.0)], fill_limit=1, holds={})
    assert got == [5.0, 5.0, None, None, None]
    assert "a" not in carry.until


def test_validity_end_then_fill_limit_steps_then_empty():
    # held at 60, 120; ended at 130 → the last grid point it held at is 120; 180 and 240 are fill steps 1, 2
    got, _ = col([("a", 30.0, 5.0), ("a", 130.0, NAN)], fill_limit=2)
    assert got == [5.0, 5.0, 5.0, 5.0, None]
    got0, _ = col([("a", 30.0, 5.0), ("a", 130.0, NAN)], fill_limit=0)
    assert got0 == [5.0, 5.0, None, None, None]


def test_max_age_ends_validity_like_a_marker():
    got, _ = col([("a", 30.0, 5.0)], fill_limit=1, holds={"a": 100.0})  # holds until 130
    assert got == [5.0, 5.0, 5.0, None, None]


def test_a_new_reading_vouches_again_after_a_validity_end():
    rows = [("a", 30.0, 5.0), ("a", 70.0, NAN), ("a", 200.0, 5.0)]
    got, carry = col(rows, fill_limit=1)
    # 60 observed… (30 → row 60), 120 fill step 1 after 60, 180 empty, 240 observed (200), 300 held
    assert got == [5.0, 5.0, None, 5.0, 5.0]
    assert carry.until["a"] == INF


def test_held_value_is_the_latest_reading_not_the_aggregate():
    got, _ = col([("a", 10.0, 1.0), ("a", 50.0, 3.0)], fill_limit=0)
    assert got == [2.0, 3.0, 3.0, 3.0, 3.0]  # row 60 is the mean; after it the latest value holds


def test_a_marker_in_a_later_window_ends_a_carried_value():
    _, carry = col([("a", 30.0, 5.0)])
    got, carry2 = col([("a", 400.0, NAN)], window=Window(300, 600), fill_limit=1, carry=carry)
    # held at 360; ended at 400 → last held grid point 360; 420 is fill step 1; then empty
    assert got == [5.0, 5.0, None, None, None]
    got3, _ = col([], window=Window(600, 900), fill_limit=1, carry=carry2)
    assert got3 == [None] * 5
    assert not carry2.holds_into(Window(600, 900))


def test_carry_json_round_trip_and_legacy_entries():
    carry = Carry({"a": (60, 1.5), "b": (120, 2.0), "c": (60, 3.0)}, {"a": INF, "b": 250.0})
    again = Carry.from_json(carry.to_json())
    assert again == carry
    legacy = Carry.from_json({"a": [60, 1.5]})  # progress files written before rule 2a
    assert legacy.last == {"a": (60, 1.5)} and legacy.until == {}


def reference(events, window, rate, hold, agg, fill_limit):
    """A slow, obviously-correct model of rules 2 and 2a for one sensor: events are (ts, value|NaN)."""
    readings = sorted((t, v) for t, v in events if not math.isnan(v))
    markers = sorted(t for t, v in events if math.isnan(v))
    out = []
    for t in range(window.start + rate, window.end + 1, rate):
        here = [v for ts, v in readings if t - rate < ts <= t]
        if here:
            out.append({"mean": lambda x: sum(x) / len(x), "max": max, "min": min, "last": lambda x: x[-1]}[agg](here))
            continue
        before = [(ts, v) for ts, v in readings if ts <= t]
        if not before:
            out.append(None)
            continue
        r_ts, r_v = before[-1]
        g = math.ceil(r_ts / rate) * rate
        if hold > 0:
            until = min([r_ts + hold] + [m for m in markers if m >= r_ts])
            if until > t:
                out.append(r_v)
                continue
            base = max(g, math.ceil(until / rate) * rate - rate)
            value = r_v
        else:
            base = g
            here_g = [v for ts, v in readings if g - rate < ts <= g]
            value = {"mean": lambda x: sum(x) / len(x), "max": max, "min": min, "last": lambda x: x[-1]}[agg](here_g)
        out.append(value if t - base <= fill_limit * rate else None)
    return out


events_strategy = st.lists(
    st.tuples(st.integers(1, 900), st.one_of(st.integers(-50, 50).map(float), st.just(NAN))), max_size=30)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.sampled_from([30, 60, 150]), st.sampled_from([0.0, 45.0, 200.0, INF]),
       st.sampled_from(["mean", "last", "max"]), st.integers(0, 3))
def test_matches_reference_and_splitting_into_windows_changes_nothing(raw, rate, hold, agg, fill_limit):
    seen, events = set(), []
    for ts, v in raw:  # readings on whole seconds, markers half a second later: no ties
        t = float(ts) + (0.5 if math.isnan(v) else 0.0)
        if t not in seen:
            seen.add(t)
            events.append((t, v))
    holds = {"a": hold} if hold else {}
    ref = reference(events, Window(0, 900), rate, hold, agg, fill_limit)
    carry = Carry({})
    got = []
    for w in (Window(0, 300), Window(300, 600), Window(600, 900)):
        part = [("a", t, v) for t, v in events if w.start < t <= w.end]
        grid, carry = resample(table(part), w, rate, ["a"], {"a": agg}, fill_limit, Carry.from_json(carry.to_json()),
                               holds)
        got.extend(None if np.isnan(x) else float(x) for x in grid.column("a"))
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert (g is None and r is None) or (g is not None and r is not None and math.isclose(g, r)), (got, ref)


def test_closer_writes_windows_of_a_steady_plant_that_reported_nothing_new(tmp_path):
    """One notification, then silence for three windows on a healthy session: three full files."""
    plan = WindowPlan("a", 300, 60, {"pump": ["setpoint", "drift"]}, {}, 2, 0, "_", "yyyyMMddHHmmss", 0,
                      holds={"setpoint": INF, "drift": INF})
    spool = Spool(tmp_path / "spool", 300)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    spool.append([Reading("setpoint", 42.0, 10.0), Reading("drift", 1.0, 10.0)])
    spool.append([Reading("drift", 1.0 + k, 60.0 * k + 10) for k in range(1, 15)])
    spool.flush()
    closer.close_due(900.0)
    files = {name: data for _, name, data in outbox_files(outbox)}
    assert sorted(files) == ["pump_19700101000000.csv", "pump_19700101000500.csv", "pump_19700101001000.csv"]
    for data in files.values():
        rows = [line.split(",") for line in data.decode().splitlines()[1:]]
        assert len(rows) == 5 and all(r[1] == "42.0" and r[2] for r in rows)
    # the source stops vouching at 905 (e.g. the session is lost): two fill steps, then empty cells
    spool.append([Reading("setpoint", NAN, 905.0), Reading("drift", NAN, 905.0)])
    spool.flush()
    closer.close_due(1200.0)
    last = {name: data for _, name, data in outbox_files(outbox)}["pump_19700101001500.csv"].decode()
    assert [line.split(",")[1] for line in last.splitlines()[1:]] == ["42.0", "42.0", "", "", ""]
    # nothing holds any more: the next window has no reading and no file (rule 5)
    events = closer.close_due(1500.0)
    assert [e.kind for e in events] == ["window_missing"]


def test_a_validity_end_that_arrives_after_its_window_was_written_still_ends_the_value(tmp_path):
    """A lost session's markers are stamped with the last instant the source answered, which can lie in a window
    already written (the loss is noticed a keep-alive period later). They must still end the value for the
    windows not yet written: before, the spool dropped them as late and the last value held for ever."""
    plan = WindowPlan("a", 300, 60, {"pump": ["setpoint"]}, {}, 1, 0, "_", "yyyyMMddHHmmss", 0,
                      holds={"setpoint": INF})
    spool = Spool(tmp_path / "spool", 300)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    spool.append([Reading("setpoint", 42.0, 10.0)])
    spool.flush()
    closer.close_due(305.0)  # (0, 300] written: the value holds through it
    spool.append([Reading("setpoint", 43.0, 250.0), Reading("setpoint", NAN, 280.0)])  # both late
    spool.flush()
    assert spool.late == 1  # the reading is dropped and counted; the marker is not a reading
    events = closer.close_due(605.0)
    # the rows after the written window are what a timely marker would have given: held at 240 (the last grid
    # point before 280), then one fill step (fill_limit 1) reaching 300, which is already written: all empty
    assert [e.kind for e in events] == ["window_missing"]
    assert [e.kind for e in closer.close_due(905.0)] == ["window_missing"]  # nothing holds any more
    # with two fill steps the second reaches into the next window
    plan2 = WindowPlan("b", 300, 60, {"pump": ["setpoint"]}, {}, 2, 0, "_", "yyyyMMddHHmmss", 0,
                       holds={"setpoint": INF})
    spool2 = Spool(tmp_path / "spool2", 300)
    outbox2 = Outbox(tmp_path / "outbox2")
    closer2 = WindowCloser(plan2, spool2, outbox2, tmp_path / "progress2.json")
    spool2.append([Reading("setpoint", 42.0, 10.0)])
    spool2.flush()
    closer2.close_due(305.0)
    spool2.append([Reading("setpoint", NAN, 280.0)])
    spool2.flush()
    closer2.close_due(605.0)
    last = {name: data for _, name, data in outbox_files(outbox2)}["pump_19700101000500.csv"].decode()
    assert [line.split(",")[1] for line in last.splitlines()[1:]] == ["42.0", "", "", "", ""]


def outbox_files(outbox: Outbox):
    for entry in outbox.entries():
        yield entry.window_end, entry.name, entry.path.read_bytes()

