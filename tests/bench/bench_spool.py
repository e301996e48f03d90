"""Spool append throughput on one core and RSS, against a baseline of appending to a plain Python list.

Run: .venv/bin/python tests/bench/bench_spool.py [--readings N] [--sensors N --batch N] [--grouped]
The hot path is ``append`` (O(1) list extend) plus ``flush`` (records + fsync) once per batch of 1 s of a
700-reading/s load; both are included in the figure. ``--sensors 20000 --batch 20000 --grouped``: 1 s of 20,000
tags, written in records per group of components (100 sensors a component, as the window closer sets them).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from agent.core.model import Reading
from agent.pipeline.groups import owners, sensor_groups
from agent.pipeline.spool import Spool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=700, help="readings per flush (700 = 1 s of the target load)")
    parser.add_argument("--sensors", type=int, default=700)
    parser.add_argument("--grouped", action="store_true", help="records per group of components (as in the agent)")
    args = parser.parse_args()
    sensors = [f"s{i:03d}" for i in range(args.sensors)]
    batches = []
    t = 1_000_000.0
    for _ in range(args.readings // args.batch):
        batches.append([Reading(s, 1.5, t) for s in sensors[: args.batch]])
        t += 1.0

    t0 = time.process_time()
    sink: list = []
    for b in batches:
        sink.extend(b)
        sink.clear()
    baseline = time.process_time() - t0

    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), 300)
        if args.grouped:
            components = {f"c{k}": sensors[k:k + 100] for k in range(0, len(sensors), 100)}
            spool.set_groups(owners(sensor_groups(components)))
        t0 = time.process_time()
        for b in batches:
            spool.append(b)
            spool.flush()
        ours = time.process_time() - t0
        size = spool.bytes_on_disk()
    n = len(batches) * args.batch
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"spool append+flush: {n / ours:,.0f} readings/s on one core ({ours / n * 1e6:.2f} µs CPU per reading, "
          f"flush every {args.batch} readings), {size / n:.1f} B/reading on disk, max RSS {rss_mb:.0f} MB")
    print(f"baseline list.extend: {baseline / n * 1e6:.3f} µs per reading; ratio ours/baseline "
          f"{ours / max(baseline, 1e-9):.1f}")


if __name__ == "__main__":
    main()
