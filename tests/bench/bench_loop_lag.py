"""Event-loop lag across window closes: 2,200 tags at 1 Hz through the real pipeline, in one process.

Run: .venv/bin/python tests/bench/bench_loop_lag.py [--tags 2200] [--repeat 3] [--secs 4]

One AssetRunner (spool → window closer → outbox → folder store, alarm engine, status history) under the
Agent and its scheduler, fed in real time by a source that hands over one batch of ``--tags`` readings per
second (a 1 Hz gateway). PT5M windows on a PT1S grid: a close resamples 300 rows × ``--tags`` sensors into 22
component files. So that a close happens within seconds, the spool is first filled with the window's five
minutes of readings (one record per second, as the flushes write them) and the clock starts one second
before the window falls due. A ticker task on the loop sleeps 5 ms and records how late it wakes: the
event-loop lag every connector and the HTTP listener would see.

Two kinds of run in the same command, ``--repeat`` times each, ``--secs`` long: the baseline (the same feed,
flushes and uploads; the clock starts mid-window, so no window closes), then ours (one window close per run).
Prints p50, p99 and max lag of both, the same within the closes (from the due time until 2 s after), and the
ratio of the p99s. Percentiles are over time (``spread``): a stall of one second counts for one second of
late timers, not for one late tick.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path

import numpy as np

T0 = 1767225600.0  # 2026-01-01T00:00:00Z, on every window grid
FREQ = 300
TICK_SECS = 0.005


class Plant:
    """A source that hands over one reading per sensor every clock second (what a 1 Hz gateway delivers)."""

    def __init__(self, name: str, sensors: list[str], clock) -> None:
        from connectors.base import SourceStats

        self.name = name
        self.sensors = sensors
        self.clock = clock
        self.stats = SourceStats(connected=True, session_watched=True)

    async def readings(self):
        from agent.core.model import Reading

        t = math.floor(self.clock.now()) + 1
        k = 0
        while True:
            await self.clock.sleep_until(t)
            await asyncio.sleep(0)  # a batch comes off the network: the loop runs between two of them
            k += 1
            yield [Reading(s, float(k + i * 0.001), float(t)) for i, s in enumerate(self.sensors)]
            self.stats.last_reading_ts = self.stats.last_alive_ts = self.clock.now()
            t += 1


def asset_text(store: Path, sensors: list[str], grace: float) -> str:
    comps = "\n".join(f'c{c:02d} = {sensors[c * 100:(c + 1) * 100]!r}'.replace("'", '"')
                      for c in range(math.ceil(len(sensors) / 100)))
    return f"""\
asset = "bench"
[lookout]
upload_frequency = "PT5M"
delay_offset_minutes = 2
sampling_rate = "PT1S"
input = "file://{store}/"
[components]
{comps}
[window]
fill_limit = 2
grace_secs = {grace}
[[sources]]
name = "plant"
kind = "replay"
path = "plant.csv"
"""


def prefill(spool_dir: Path, sensors: list[str], up_to: float) -> None:
    """The spool as one second-by-second feed leaves it: one flushed record per second up to ``up_to``."""
    from agent.core.model import Reading
    from agent.pipeline.spool import Spool

    spool = Spool(spool_dir, FREQ)
    for t in range(int(T0) + 1, int(up_to) + 1):
        spool.append([Reading(s, float(t - T0 + i * 0.001), float(t)) for i, s in enumerate(sensors)])
        spool.flush()
    spool.close()


async def run(folder: Path, n_tags: int, secs: float, close: bool) -> tuple[list, list]:
    """One run; returns [(wall secs since start, lag secs)] of the ticker and the wall secs a window fell due."""
    from agent.config import load
    from agent.core.clock import ScaledClock
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner

    sensors = [f"t{i:04d}" for i in range(n_tags)]
    (folder / "plant.csv").write_text("Timestamp," + ",".join(sensors) + "\n")
    grace = 5.0
    path = folder / "asset.toml"
    path.write_text(asset_text(folder / "store", sensors, grace))
    due = T0 + FREQ + grace
    start = due - 1.0 if close else T0 + FREQ / 2
    prefill(folder / "state" / "spool", sensors, start)
    clock = ScaledClock(start, 1.0)
    runner = AssetRunner(load(path), path, folder / "state", clock, connectors=[Plant("plant", sensors, clock)])

    lags: list[tuple[float, float]] = []
    t_start = time.monotonic()

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_SECS)
            now = time.monotonic()
            lags.append((now - t_start, now - before - TICK_SECS))

    tick = asyncio.create_task(ticker())
    await Agent([runner], clock).run(until=start + secs)
    tick.cancel()
    written = runner.closer.stats.windows_written
    if written != (1 if close else 0):
        raise SystemExit(f"{written} windows written in a run that should write {1 if close else 0}")
    return lags, [due - start] if close else []


def spread(lags: list[float]) -> list[float]:
    """The lag a timer due at any moment would see, one sample per tick interval: a wake-up ``lag`` late also
    delayed the timers that fell due during it, by ``lag``, ``lag`` − 5 ms, … (so a long stall weighs as long
    as it lasted, not as one tick)."""
    out = []
    for lag in lags:
        out.extend(np.arange(lag, 0.0, -TICK_SECS).tolist() or [max(lag, 0.0)])
    return out


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tags", type=int, default=2200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--secs", type=float, default=4.0)
    args = parser.parse_args()
    base, ours, within = [], [], []
    for close, into in ((False, base), (True, ours)):
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                lags, dues = asyncio.run(run(Path(tmp), args.tags, args.secs, close))
            into.extend(spread([lag for _, lag in lags]))
            within.extend(spread([lag for t, lag in lags if any(d <= t <= d + 2.0 for d in dues)]))
    print(f"{args.tags} tags at 1 Hz (real time), PT5M windows on a PT1S grid, {args.repeat} runs of {args.secs:g} s "
          f"each; ticker every {TICK_SECS * 1e3:g} ms")
    for name, lags in (("baseline (no window close)", base), ("ours (one close per run)", ours),
                       ("ours within the closes", within)):
        print(f"{name:28s} lag p50 {pct(lags, 50):6.2f} ms  p99 {pct(lags, 99):7.2f} ms  max {pct(lags, 100):7.2f} ms"
              f"  ({len(lags)} samples)")
    print(f"ratio p99 within the closes / baseline p99: {pct(within, 99) / pct(base, 99):.2f}")


if __name__ == "__main__":
    main()
