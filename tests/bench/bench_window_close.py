"""Window close for 1,000 sensors × 300 rows: resample + CSV + local-store put, against pandas to_csv; then the
memory one close needs at 2,200 and 20,000 sensors × 300 rows.

Run: .venv/bin/python tests/bench/bench_window_close.py [--repeat N] [--memory-sizes 2200,20000]
Prints ms per window close, MB/s of CSV produced, and the ratio to a plain pandas ``to_csv`` of the same frame
(the baseline) measured in the same process.

Memory (``--memory-sizes``, empty to skip): a spool of one window (1 Hz, PT5M: 300 flushes of every sensor,
components of 100 sensors) is written once per size; then fresh child processes each do one thing on a copy of it
and report the resident high-water mark (VmHWM, reset just before) above their resident size (VmRSS) before it:
``close`` (WindowCloser.close_due: read, resample, render, outbox) and the baseline ``read`` (Spool.read: the whole
window as one Columns, what the close read before it went group by group). Prints both in MB, their ratio, and
the close time in ms (wall, in the child).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from agent.core.model import Reading, Window
from agent.pipeline.closer import WindowCloser, WindowPlan, release_freed_memory
from agent.pipeline.outbox import Outbox
from agent.pipeline.resample import frame
from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-sizes", default="2200,20000", help="sensor counts for the memory figures")
    parser.add_argument("--child", choices=["close", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--sensors", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.dir), args.sensors)
        return
    speed(args)
    for n in [int(x) for x in args.memory_sizes.split(",") if x.strip()]:
        memory(n)


def speed(args) -> None:
    n_sensors, rate, freq = 1000, 1, 300  # 300 rows: PT1S grid in a PT5M window
    sensors = [f"s{i:04d}" for i in range(n_sensors)]
    components = {f"c{c}": sensors[c * 100:(c + 1) * 100] for c in range(10)}
    rng = np.random.default_rng(0)
    ts = np.repeat(np.arange(1, freq + 1, dtype=np.float64), n_sensors) - 0.5
    names = sensors * freq
    values = rng.normal(size=len(ts))
    plan = WindowPlan("bench", freq, rate, components, {}, 2, 0, "_", "yyyyMMddHHmmss", 0)

    close_times, csv_bytes = [], 0
    baseline_times = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            spool = Spool(tmp / "spool", freq)
            spool.append([Reading(n, v, t) for n, v, t in zip(names, values.tolist(), ts.tolist(), strict=True)])
            spool.flush()
            outbox = Outbox(tmp / "outbox")
            closer = WindowCloser(plan, spool, outbox, tmp / "progress.json")
            store = FileStore(tmp / "store")
            t0 = time.perf_counter()
            closer.close_due(freq + 1)
            for entry in outbox.entries():
                store.put(entry.name, entry.path.read_bytes())
                outbox.remove(entry)
            close_times.append(time.perf_counter() - t0)
            csv_bytes = sum((tmp / "store" / k).stat().st_size for k in store.list())
            # baseline: the same grid as a DataFrame, written by pandas (one file per component)
            from agent.pipeline.resample import Carry, resample

            table = pa.table({"sensor": names, "ts": ts, "value": values})
            grid, _ = resample(table, Window(0, freq), rate, sensors, {}, 2, Carry({}))
            df = frame(grid)
            t0 = time.perf_counter()
            for comp in components.values():
                buf = io.StringIO()
                df[comp].to_csv(buf)
            baseline_times.append(time.perf_counter() - t0)
    best, base = min(close_times), min(baseline_times)
    print(f"window close, {n_sensors} sensors x {freq // rate} rows ({csv_bytes / 1e6:.2f} MB CSV): "
          f"{best * 1e3:.1f} ms, {csv_bytes / 1e6 / best:.1f} MB/s")
    print(f"baseline pandas to_csv of the same frame (no resample, no I/O): {base * 1e3:.1f} ms")
    print(f"ratio ours/baseline: {best / base:.2f}")


MEM_FREQ, MEM_RATE, COMPONENT_SENSORS = 300, 1, 100


def mem_plan(n_sensors: int) -> WindowPlan:
    sensors = [f"plant.line.tag{i:05d}" for i in range(n_sensors)]
    components = {f"c{k:03d}": sensors[k:k + COMPONENT_SENSORS] for k in range(0, n_sensors, COMPONENT_SENSORS)}
    return WindowPlan("bench", MEM_FREQ, MEM_RATE, components, {}, 2, 0, "_", "yyyyMMddHHmmss", 0)


def write_window(spool_dir: Path, n_sensors: int) -> None:
    """One window of readings as the agent writes it: every sensor once a second, one flush a second (the closer
    built on the spool sets its groups, as in the agent)."""
    plan = mem_plan(n_sensors)
    spool = Spool(spool_dir, MEM_FREQ)
    WindowCloser(plan, spool, Outbox(spool_dir.parent / "unused-outbox"), spool_dir.parent / "unused.json")
    sensors = plan.sensors
    rng = np.random.default_rng(1)
    for second in range(MEM_FREQ):
        values = rng.normal(50.0, 5.0, n_sensors).tolist()
        t = second + 0.25
        spool.append([Reading(s, v, t) for s, v in zip(sensors, values, strict=True)])
        spool.flush()
    spool.close()


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(what: str, work: Path, n_sensors: int) -> None:
    """Do one close (or the baseline whole-window read) and print JSON: MB above the resident size before it."""
    plan = mem_plan(n_sensors)
    spool = Spool(work / "spool", MEM_FREQ)
    closer = WindowCloser(plan, spool, Outbox(work / "outbox"), work / "progress.json")
    gc.collect()
    release_freed_memory()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    except OSError:
        reset = False
    before = _status("VmRSS")
    t0 = time.perf_counter()
    if what == "close":
        events = closer.close_due(MEM_FREQ + 1)
        assert sum(e.kind == "window_written" for e in events) == len(plan.components), events
    else:
        cols = spool.read(MEM_FREQ)
        assert cols.num_rows == n_sensors * MEM_FREQ, cols.num_rows
    elapsed = time.perf_counter() - t0
    print(json.dumps({"peak_mb": (_status("VmHWM") - before) / 1e6, "ms": elapsed * 1e3, "reset": reset,
                      "rss_before_mb": before / 1e6}))


def memory(n_sensors: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "source" / "spool"
        source.mkdir(parents=True)
        t0 = time.perf_counter()
        write_window(source, n_sensors)
        setup = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in source.iterdir())
        out = {}
        for what in ("read", "close"):
            work = tmp / what
            (work / "spool").mkdir(parents=True)
            for path in source.iterdir():  # hard links: the close deletes its own names only
                os.link(path, work / "spool" / path.name)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                            os.environ.get("PYTHONPATH")])))
            run = subprocess.run([sys.executable, __file__, "--child", what, "--dir", str(work), "--sensors",
                                  str(n_sensors)], capture_output=True, text=True, env=env, timeout=300, check=True)
            out[what] = json.loads(run.stdout.strip().splitlines()[-1])
    read, close = out["read"], out["close"]
    note = "" if read["reset"] and close["reset"] else " (VmHWM could not be reset: figures include startup)"
    print(f"memory of one close, {n_sensors} sensors x {MEM_FREQ // MEM_RATE} rows ({n_sensors * MEM_FREQ:,} "
          f"readings, spool {size / 1e6:.0f} MB, written in {setup:.0f} s): close adds {close['peak_mb']:.1f} MB "
          f"over its resident {close['rss_before_mb']:.0f} MB (VmHWM) in {close['ms']:.0f} ms{note}")
    print(f"baseline whole-window read (Spool.read, one Columns): {read['peak_mb']:.1f} MB in {read['ms']:.0f} ms; "
          f"ratio close/baseline {close['peak_mb'] / max(read['peak_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
