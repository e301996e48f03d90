"""The status page at 2,200 sensors: collect (/api/status data) and render (GET /), against json.dumps.

Run: .venv/bin/python tests/bench/bench_status_page.py [--sensors N] [--repeat N]

A real AssetRunner (22 components × 100 sensors, PT5M windows on a PT1M grid) is fed one hour of readings
through its spool and window closer, so the status history holds 12 closed windows (60 grid rows per
sensor, the sparkline's last hour). Then it prints, best of ``--repeat``:

- ms to collect the status document (agent.runtime.status_data.collect_status) and to render the page from it
  (agent.runtime.status_page.render_page; the budget is 50 ms), each with its ratio to ``json.dumps`` of the same
  document (the baseline, measured in the same process);
- ms per window close spent by the history parsing the window's CSV files;
- ns per reading of the last-value store in AssetRunner._pump, next to the per-reading cost of building the
  Reading and of spool.append + flush (so "nearly nothing" is a measured ratio).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
from pathlib import Path

from agent.config import load
from agent.core.clock import ScaledClock
from agent.core.model import Reading
from agent.runtime.asset import AssetRunner
from agent.runtime.status_data import collect_status
from agent.runtime.status_page import render_page

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def build(tmp: Path, n_sensors: int) -> tuple[AssetRunner, list[str], float]:
    sensors = [f"s{i:04d}" for i in range(n_sensors)]
    (tmp / "history.csv").write_text("Timestamp," + ",".join(sensors) + "\n2026-01-01T00:00:00Z," +
                                     ",".join("1" for _ in sensors) + "\n")
    comps = "\n".join(f'c{c:02d} = {json.dumps(sensors[c * 100:(c + 1) * 100])}'
                      for c in range((n_sensors + 99) // 100))
    (tmp / "asset.toml").write_text(f"""asset = "bench"
[lookout]
upload_frequency = "PT5M"
sampling_rate = "PT1M"
input = "file://{tmp}/store/"
[components]
{comps}
[window]
fill_limit = 2
grace_secs = 5
[[sources]]
name = "history"
kind = "replay"
path = "history.csv"
""")
    config = load(tmp / "asset.toml")
    clock = ScaledClock(T0, 1.0)
    runner = AssetRunner(config, tmp / "asset.toml", tmp / "state", clock, connectors=[])
    close_secs = []
    for minute in range(60):
        batch = [Reading(s, float(i % 17) + minute / 60, T0 + 60 * minute + 30) for i, s in enumerate(sensors)]
        runner.spool.append(batch)
        for r in batch:
            runner.last_readings[r.sensor] = r  # the bench's readings are never markers
        runner.spool.flush()
        if minute % 5 == 4:
            events = runner.closer.close_due(T0 + 60 * (minute + 1) + 6)
            t0 = time.perf_counter()
            for ev in events:
                runner.history.on_event(ev)
            close_secs.append(time.perf_counter() - t0)
    return runner, sensors, min(close_secs)


def history_bytes(history) -> tuple[int, int]:
    """tracemalloc bytes of a copy of the kept sensor history, and of the same points held as a deque of
    (ts, value) tuples per sensor (the layout before Series), built in this process."""
    import collections
    import tracemalloc

    from agent.runtime.status_history import Series

    def measure(build) -> int:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        size = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del kept
        return size

    def compact():
        out = {}
        for name, series in history.series.items():
            copy = out[name] = Series(series.capacity)
            for ts, value in series:
                copy.append(ts, value)
        return out

    def tuples():
        return {name: collections.deque(((float(ts), None if v is None else float(v)) for ts, v in series),
                                        maxlen=series.capacity) for name, series in history.series.items()}

    return measure(compact), measure(tuples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sensors", type=int, default=2200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runner, sensors, history_secs = build(Path(tmp), args.sensors)
        now = T0 + 3600 + 20
        doc = collect_status([runner], now)
        points = sum(len(s["history"]) for s in doc["assets"][0]["sensors"])
        collect = min(timeit.repeat(lambda: collect_status([runner], now), number=1, repeat=args.repeat))
        render = min(timeit.repeat(lambda: render_page(doc), number=1, repeat=args.repeat))
        baseline = min(timeit.repeat(lambda: json.dumps(doc), number=1, repeat=args.repeat))
        html = render_page(doc)
        print(f"sensors: {len(sensors)}, sparkline points: {points}, page {len(html) / 1e6:.2f} MB, "
              f"JSON {len(json.dumps(doc)) / 1e6:.2f} MB")
        print(f"baseline json.dumps(document): {baseline * 1e3:.1f} ms")
        print(f"collect_status: {collect * 1e3:.1f} ms  (×{collect / baseline:.2f} baseline)")
        print(f"render_page:    {render * 1e3:.1f} ms  (×{render / baseline:.2f} baseline; budget 50 ms: "
              f"{'OK' if render <= 0.050 else 'OVER'})")
        print(f"history per window close ({len(runner.plan.components)} CSV files): {history_secs * 1e3:.1f} ms")
        kept, as_tuples = history_bytes(runner.history)
        print(f"sensor history memory: {kept / 1e6:.2f} MB for {points} points ({kept / points:.0f} B/point); "
              f"the same points as a deque of (ts, value) tuples per sensor: {as_tuples / 1e6:.2f} MB "
              f"(×{kept / as_tuples:.2f})")

    batch = [Reading(s, 1.0, 1000.0) for s in sensors]
    last: dict = {}
    ends: dict = {}

    def store_last() -> None:  # as in AssetRunner._pump: markers (NaN) are kept apart from the last reading
        for reading in batch:
            if reading.value == reading.value:
                last[reading.sensor] = reading
            else:
                ends[reading.sensor] = reading.ts

    def construct() -> None:
        [Reading(s, 1.0, 1000.0) for s in sensors]

    per = 1e9 / len(batch)
    t_last = min(timeit.repeat(store_last, number=50, repeat=5)) / 50 * per
    t_make = min(timeit.repeat(construct, number=50, repeat=5)) / 50 * per
    with tempfile.TemporaryDirectory() as tmp:
        from agent.pipeline.spool import Spool

        spool = Spool(Path(tmp), 300)

        def append_flush() -> None:
            spool.append(batch)
            spool.flush()

        t_spool = min(timeit.repeat(append_flush, number=50, repeat=5)) / 50 * per
        spool.close()
    print(f"last-value store: {t_last:.1f} ns/reading; Reading(): {t_make:.1f} ns; spool append+flush: "
          f"{t_spool:.1f} ns (store = {100 * t_last / (t_make + t_spool):.1f} % of those two)")


if __name__ == "__main__":
    main()
