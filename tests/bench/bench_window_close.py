"""Window close for 1,000 sensors × 300 rows: resample + CSV + local-store put, against pandas to_csv.

Run: .venv/bin/python tests/bench/bench_window_close.py [--repeat N]
Prints ms per window close, MB/s of CSV produced, and the ratio to a plain pandas ``to_csv`` of the same frame
(the baseline) measured in the same process.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from agent.core.model import Reading, Window
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.resample import frame
from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
