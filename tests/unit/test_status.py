"""The status page's parts: source states, the closed-window history, sparklines and escaping."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

from agent.core.model import Alarm, Diagnostic, Event, Reading, Result, validity_end
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool
from agent.runtime.status_history import StatusHistory, source_state
from agent.runtime.status_page import SPARK_H, SPARK_W, render_page, sparklines
from connectors.base import SourceStats

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass
class NewStats(SourceStats):
    """SourceStats with the fields another change adds (the page reads them with getattr)."""

    last_alive_ts: float | None = None
    bad_now: set = field(default_factory=set)


@dataclass
class Conn:
    name: str
    stats: SourceStats


def test_source_states():
    up, gone = SourceStats(connected=True), SourceStats(connected=False)
    assert source_state(up, silent=False, bad_quality=False) == "connected"
    assert source_state(up, silent=False, bad_quality=True) == "bad quality"
    assert source_state(up, silent=True, bad_quality=False) == "down"  # connected but not answering
    assert source_state(gone, silent=False, bad_quality=False) == "reconnecting"
    assert source_state(gone, silent=True, bad_quality=True) == "down"


def test_source_transitions_and_rate():
    history = StatusHistory("/nonexistent", lambda c, w: "", 60)
    stats = SourceStats(connected=False, readings=Counter())
    conn = Conn("plc", stats)
    history.observe_sources([conn], set(), set(), T0)
    assert (history.sources["plc"].state, history.sources["plc"].since) == ("reconnecting", T0)
    stats.connected = True
    for i in range(1, 13):  # 10 readings per clock second, sampled every 10 s
        stats.readings["a"] = 100 * i
        history.observe_sources([conn], set(), set(), T0 + 10 * i)
    assert (history.sources["plc"].state, history.sources["plc"].since) == ("connected", T0 + 10)
    assert history.rate_of("plc", 100 * 12, T0 + 120) == 10.0
    history.observe_sources([conn], set(), set(), T0 + 120)  # same time again: no second sample
    stats.connected = False
    history.observe_sources([conn], {"plc"}, set(), T0 + 500)
    assert (history.sources["plc"].state, history.sources["plc"].since) == ("down", T0 + 500)


def closer_with_history(tmp_path, rate: int, max_points: int = 120):
    plan = WindowPlan("a", 300, rate, {"pump": ["flow", "temp"]}, {}, 0, 0, "_", "yyyyMMddHHmmss", 0)
    spool = Spool(tmp_path / "spool", 300)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    return plan, spool, closer, StatusHistory(outbox.dir, plan.name, rate, max_points=max_points)


def test_history_keeps_the_last_hour_of_grid_rows_bounded(tmp_path):
    _plan, spool, closer, history = closer_with_history(tmp_path, rate=1)
    # two hours on a 1 s grid: flow = seconds since T0, temp only in the first half of each minute
    for end in range(T0 + 300, T0 + 7200 + 1, 300):
        spool.append([Reading("flow", float(t - T0), t) for t in range(end - 299, end + 1)])
        spool.append([Reading("temp", 1.0, t) for t in range(end - 299, end + 1) if (t - T0) % 60 < 30])
        spool.flush()
        for ev in closer.close_due(end + 1):
            history.on_event(ev)
    flow = history.sensor_points("flow")
    assert len(flow) == 120  # one row in 30 of a 1 s grid: 120 per hour, whatever the rate
    assert flow[-1] == (T0 + 7200, 7200.0) and flow[0] == (T0 + 3600 + 30, 3630.0)
    assert all(b[0] - a[0] == 30 for a, b in itertools.pairwise(flow))
    assert all(v == t - T0 for t, v in flow)  # the values written into the CSV, not the readings
    temp = dict(history.sensor_points("temp"))
    assert temp[T0 + 7200] == 1.0 and temp[T0 + 7200 - 30] is None  # an empty grid cell stays a gap
    assert len(history.series["flow"]) <= 122  # memory bounded by max_points, not by the rate


def test_history_memory_is_8_bytes_a_point_per_sensor_and_one_timestamp_ring_per_window_file(tmp_path):
    """The sensors of one window file share its grid seconds: at 20,000 sensors × 122 points that is 20 MB of
    history, where a ring of timestamps per sensor doubled it."""
    _plan, spool, closer, history = closer_with_history(tmp_path, rate=1)
    for end in range(T0 + 300, T0 + 900 + 1, 300):
        spool.append([Reading(s, 1.0, t) for t in range(end - 299, end + 1) for s in ("flow", "temp")])
        spool.flush()
        for ev in closer.close_due(end + 1):
            history.on_event(ev)
    arrays = {id(a): a for series in history.series.values() for a in (series.ts, series.values)}
    held = sum(len(a) * a.itemsize for a in arrays.values())
    assert held == (2 + 1) * 122 * 8  # two sensors' values, one timestamp ring for their component
    assert history.sensor_points("temp") == history.sensor_points("flow") != []


def test_history_skips_a_window_whose_file_is_gone(tmp_path):
    _plan, spool, closer, history = closer_with_history(tmp_path, rate=60)
    spool.append([Reading("flow", 1.0, T0 + 10)])
    spool.flush()
    events = closer.close_due(T0 + 301)
    for entry in closer.outbox.entries():
        closer.outbox.remove(entry)  # uploaded (or dropped by the budget) before the listener ran
    for ev in events:
        history.on_event(ev)
    assert history.unreadable_windows == 1 and history.sensor_points("flow") == []


def test_executions_results_and_transitions_are_bounded():
    history = StatusHistory("/nonexistent", lambda c, w: "", 60, executions=3, abnormal_rows=2)
    for i in range(5):
        history.on_event(Event("execution_succeeded", "a", "", T0 + i, {"window_start": i, "window_end": i + 1,
                                                                         "rows": 5, "max_score": 0.5,
                                                                         "anomalous": 1}))
    history.on_event(Event("execution_failed", "a", "no data", T0 + 9, {"window_start": 9, "window_end": 10}))
    assert [e["window_start"] for e in history.executions] == [3, 4, 9]
    assert history.executions[-1]["status"] == "FAILED" and history.executions[-1]["reason"] == "no data"
    diags = tuple(Diagnostic(f"c\\s{k}", k / 10) for k in range(8))
    history.on_results([Result(T0 + k, k % 2, "ANOMALY_DETECTED", 0.1 * k, diags) for k in range(6)])
    assert [a["ts"] for a in history.abnormal] == [T0 + 3, T0 + 5]
    assert history.abnormal[-1]["diagnostics"][0] == ["c\\s7", 0.7] and len(history.abnormal[-1]["diagnostics"]) == 5
    history.on_alarms([Alarm("id1", "a", "anomaly", "raised", T0, message="x")])
    assert history.transitions[-1]["state"] == "raised"


def test_sparklines_break_at_gaps_and_are_valid_paths():
    end = T0 + 3600
    pts = [[T0 + 60 * i, None if i in (10, 11) else float(i % 7)] for i in range(1, 61)]
    flat = [[T0 + 60 * i, 3.0] for i in range(1, 61)]
    gone = [[T0 + 60, None]]
    out = sparklines([pts, flat, gone, []], end)
    path = re.search(r' d="([^"]*)"', out[0]).group(1)
    tokens = path.split()
    assert path.startswith("M2 ") and path.count("M") == 2  # the first row is 60 s into the hour; one restart
    pairs = re.findall(r"M?(\d+) (\d+)", path)
    assert len(pairs) == 58
    assert all(0 <= int(x) <= SPARK_W and 0 <= int(y) < SPARK_H for x, y in pairs)
    assert tokens[-2:] == [str(SPARK_W), str(SPARK_H - 1 - round((60 % 7) / 6 * (SPARK_H - 2)))]
    assert "last hour 3 to 3" in out[1] and f" {SPARK_H // 2}" in out[1]
    assert "no data" in out[2] and "no data" in out[3]


def test_every_text_is_escaped():
    doc = status_doc()
    asset = doc["assets"][0]
    asset["lookout"]["executions"] = [{"window_start": T0, "window_end": T0 + 300, "status": "FAILED", "ts": T0,
                                       "rows": None, "anomalous": None, "max_score": None,
                                       "reason": "<script>alert(1)</script>"}]
    asset["alarms"]["transitions"] = [{"id": "i", "rule": "r", "state": "raised", "ts": T0, "severity": "warning",
                                       "message": "<img src=x onerror=alert(2)>", "score": None}]
    page = render_page(doc)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page


def runner_with(tmp_path, stats):
    from agent.config import load
    from agent.core.clock import ScaledClock
    from agent.runtime.asset import AssetRunner
    from tests.helpers import asset_file, write_history

    write_history(tmp_path / "history.csv", minutes=6)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/")  # one source "history": flow, pressure, temp
    return AssetRunner(load(path), path, tmp_path / "state", ScaledClock(T0, 1.0),
                       connectors=[Conn("history", stats)])


def test_collect_reads_the_new_stats_fields_when_present(tmp_path):
    """A connector reporting bad_now/last_alive_ts (the fields another change adds), one sensor Bad now."""
    import json

    from agent.runtime.status_data import collect_status

    stats = NewStats(connected=True, bad_now={"pressure"}, last_alive_ts=T0 - 2,
                     readings=Counter(flow=3, pressure=1), bad_quality=Counter(pressure=2, temp=5))
    runner = runner_with(tmp_path, stats)
    runner.last_readings.update(flow=Reading("flow", float("inf"), T0 - 1),
                                pressure=Reading("pressure", 2.5, T0 - 1))
    doc = collect_status([runner], T0)
    json.dumps(doc, allow_nan=False)  # no NaN or Infinity reaches the JSON
    source = doc["assets"][0]["sources"][0]
    assert source["state"] == "connected" and source["bad_now"] == ["pressure"]
    assert source["last_alive_ts"] == T0 - 2
    sensors = {s["name"]: s for s in doc["assets"][0]["sensors"]}
    assert (sensors["flow"]["value"], sensors["flow"]["quality"]) == (None, "good")
    assert (sensors["pressure"]["value"], sensors["pressure"]["quality"]) == (2.5, "bad")
    assert (sensors["temp"]["value"], sensors["temp"]["quality"]) == (None, "bad")  # never a good sample
    assert sensors["temp"]["bad_quality_total"] == 5 and sensors["flow"]["source"] == "history"
    assert "2 s ago" in render_page(doc)  # the transport's last answer

    stats.bad_now |= {"flow", "temp"}  # every item of the source Bad: the source is "bad quality"
    runner.check_sources()  # where the runner keeps its own verdict (rule 2a), its health check sets it
    assert collect_status([runner], T0 + 1)["assets"][0]["sources"][0]["state"] == "bad quality"


def test_a_validity_end_marker_ends_the_hold(tmp_path):
    """A marker (rule 2a) is not a value: the page keeps the last reading's value and time, quality "ended"."""
    from agent.runtime.status_data import collect_status

    runner = runner_with(tmp_path, SourceStats(connected=True, readings=Counter(flow=2)))
    from agent.runtime.status_history import Series

    runner.history.series["flow"] = flow = Series(4)
    flow.append(T0 - 60, 4.0)
    flow.append(T0, 5.0)
    runner.history.latest_grid_ts = T0
    runner.last_readings["flow"] = Reading("flow", 5.5, T0 - 0.5)
    runner.validity_ends["flow"] = T0 + 1
    runner.last_readings["temp"] = Reading("temp", 3.0, T0 - 30)
    runner.validity_ends["temp"] = T0 - 40  # a marker before the last reading: the value holds again
    sensors = {s["name"]: s for s in collect_status([runner], T0 + 10)["assets"][0]["sensors"]}
    assert (sensors["flow"]["value"], sensors["flow"]["ts"], sensors["flow"]["quality"]) == (5.5, T0 - 0.5, "ended")
    assert sensors["flow"]["age_secs"] == 10.5
    assert sensors["flow"]["holds"] is False  # fill_limit 0: not carried past the marker's grid step
    assert (sensors["temp"]["value"], sensors["temp"]["quality"], sensors["temp"]["holds"]) == (3.0, "good", False)


async def test_the_page_shows_the_last_reading_received_not_a_grid_aggregate(tmp_path):
    """Readings then a marker through the runner's pump: the value and age are the last reading's (the grid
    cell holding the mean of the three readings, 2.0, is not what the page says), quality "ended"."""
    from agent.runtime.status_data import collect_status

    class Source:
        name = "history"

        def __init__(self) -> None:
            self.stats = SourceStats(connected=True)

        async def readings(self):
            yield [Reading("flow", 1.0, T0 - 40), Reading("flow", 2.0, T0 - 30), Reading("flow", 3.0, T0 - 20)]
            yield [validity_end("flow", T0 - 15)]
            yield [Reading("temp", 4.0, T0 - 19)]

    runner = runner_with(tmp_path, SourceStats())
    runner.connectors = [Source()]
    await runner._pump(runner.connectors[0])  # the source finishes: every value of it stops holding
    sensors = {s["name"]: s for s in collect_status([runner], T0 + 50)["assets"][0]["sensors"]}
    assert (sensors["flow"]["value"], sensors["flow"]["ts"], sensors["flow"]["age_secs"]) == (3.0, T0 - 20, 70)
    assert sensors["flow"]["quality"] == "ended"
    # temp's last reading is good, but its source finished after it: ended too, never shown green
    assert (sensors["temp"]["value"], sensors["temp"]["quality"]) == (4.0, "ended")
    page = render_page(collect_status([runner], T0 + 50))
    assert '<td class="quality warn">ended</td>' in page and '<td class="quality ok">ended' not in page


def status_doc(**asset) -> dict:
    """A minimal status document for rendering, with ``asset``'s parts replaced."""
    a = {"asset": "a", "sources": [], "sensors": [],
         "windows": {"frequency_secs": 300, "rate_secs": 60, "grace_secs": 5, "delay_offset_secs": 60,
                     "written_total": 0, "last_written": None, "last_uploaded": None,
                     "open": {"start": T0, "end": T0 + 300, "due_at": T0 + 305},
                     "next_deadline": {"window_start": T0, "window_end": T0 + 300, "deadline": T0 + 360,
                                       "left_secs": 100, "pending": False},
                     "outbox": {"files": 0, "windows": 0, "oldest_end": None, "bytes": 0}, "late_total": 0,
                     "missing": {}, "spool": {"bytes": 0, "buffered_readings": 0, "late_readings": 0},
                     "budget": {"bytes": 1, "used_bytes": 0, "fraction": 0.0, "when_full": "drop_oldest",
                                "refusing": False}},
         "lookout": {"scheduler": None, "mode": "none", "status": "off", "polls": 0, "poll_errors": 0,
                     "cursor": None, "results_processed": 0, "score_trend": [], "thresholds": [], "abnormal": [],
                     "executions": []},
         "alarms": {"open": [], "pending_deliveries": 0, "hooks": [], "transitions": []}}
    a.update(asset)
    return {"now": T0, "assets": [a]}


def source_row(name: str, state: str, since: float) -> dict:
    return {"name": name, "kind": "modbus", "endpoint": "", "state": state, "since": since,
            "readings_total": 0, "readings_per_sec": None, "read_errors_total": 0, "bad_quality_total": 0,
            "reconnects": 0, "last_reading_ts": None, "last_alive_ts": None, "bad_now": [], "backfill": None}


def test_the_health_summary_comes_first_with_the_open_alarms_and_their_age():
    sources = [source_row("opc", "connected", T0 - 600), source_row("plc", "down", T0 - 300)]
    alarms = {"open": [{"rule": "silent", "id": "x1", "since": T0 - 90, "subject": "plc"},
                       {"rule": "anomaly", "id": "x2", "since": T0 - 7200, "score": 0.97}],
              "pending_deliveries": 0, "hooks": [], "transitions": []}
    page = render_page(status_doc(sources=sources, alarms=alarms))
    top = page[:page.index('<section class="asset"')]
    assert "1 of 2 source(s) do not answer: plc (down for 5.0 min)" in top
    assert "2 open alarms" in top
    assert "<b>silent</b> plc, open for <span class=\"alarm-age\">90 s</span>" in top
    assert "<b>anomaly</b> score 0.97, open for <span class=\"alarm-age\">2.0 h</span>" in top
    calm = render_page(status_doc(sources=sources[:1]))
    top = calm[:calm.index('<section class="asset"')]
    assert "all 1 source(s) answer" in top and "no open alarms" in top


def test_a_sparkline_has_its_scale():
    end = T0 + 3600
    pts = [[T0 + 60 * i, 10.0 + i / 10] for i in range(1, 61)]
    out = sparklines([pts, [[T0 + 60, None]]], end)
    assert '<span class="scale-max">16</span><br><span class="scale-min">10.1</span>' in out[0]
    assert "scale" not in out[1]  # nothing drawn, no scale


def test_a_sensor_series_is_a_ring_allocated_once():
    """The last ``capacity`` points, oldest first, an empty cell as None, and no growth while it fills."""
    from agent.runtime.status_history import Series

    series = Series(4)
    before = (series.ts.buffer_info(), series.values.buffer_info())
    for k in range(7):
        series.append(T0 + 60 * k, None if k == 5 else float(k))
        assert len(series) == min(k + 1, 4)
    assert (series.ts.buffer_info(), series.values.buffer_info()) == before  # same buffers, same sizes
    assert list(series) == [(T0 + 180, 3.0), (T0 + 240, 4.0), (T0 + 300, None), (T0 + 360, 6.0)]
    assert series.after(T0 + 240) == [(T0 + 300, None), (T0 + 360, 6.0)]
    assert Series(3).after(0) == []


def test_history_depth_shrinks_with_the_asset_so_its_memory_stays_bounded():
    from agent.runtime.status_history import HISTORY_POINTS_BUDGET, points_per_sensor

    assert points_per_sensor(10) == points_per_sensor(2200) == 120  # a small or mid-size asset keeps its hour
    assert points_per_sensor(20_000) == 15  # 20,000 sensors: 300,000 points, not 2.4 million
    assert points_per_sensor(10**6) == 12  # never fewer than a sparkline needs
    for n in (2500, 5000, 20_000, 25_000):  # up to where the floor of 12 points takes over
        assert n * points_per_sensor(n) <= HISTORY_POINTS_BUDGET
