"""Resident memory of small assets: N agents (default 10) on the shipped replay example, one process each.

Run: .venv/bin/python tests/bench/bench_small_assets.py [--instances 10] [--seconds 20]

A gateway runs one `l4e-agent@<asset>` per asset, so a small asset's fixed cost is paid once per asset. Each
agent replays config/replay/ (a 10-tag class asset: 3 sensors) at 60x into its own folder store. After the run
time (several windows written), the benchmark reads each process's VmRSS, VmHWM (peak) and the proportional set
size (Pss from /proc/PID/smaps_rollup: shared library pages split between the processes that map them), and
prints them beside the same figures for bare Python interpreters (the floor: `python -c "import time; ..."`)
started in the same command, as ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(procs: list[subprocess.Popen]) -> list[tuple[float, float, float]]:
    return [(status_mb(p.pid, "VmRSS"), status_mb(p.pid, "VmHWM"), pss_mb(p.pid)) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    config = ROOT / "config" / "replay" / "pump-07.toml"
    with tempfile.TemporaryDirectory() as tmp:
        agents, floors = [], []
        for i in range(args.instances):
            folder = Path(tmp) / f"a{i}"
            env = dict(os.environ, L4E_AGENT_LOOKOUT__INPUT=f"file://{folder}/store/")
            agents.append(subprocess.Popen(
                [sys.executable, "-m", "agent", "run", str(config), "--state-dir", str(folder / "state"),
                 "--clock-start", "2025-12-31T23:58:00Z", "--speed", "60"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            floors.append(subprocess.Popen([sys.executable, "-c", "import asyncio, time; time.sleep(3600)"]))
        try:
            time.sleep(args.seconds)
            ours, floor = measure(agents), measure(floors)
            windows = sum(len(list((Path(tmp) / f"a{i}" / "store").glob("*.csv"))) for i in range(args.instances))
        finally:
            for p in agents + floors:
                p.terminate()
            for p in agents + floors:
                p.wait(30)
    n = args.instances
    rss = max(r for r, _, _ in ours)
    hwm = max(h for _, h, _ in ours)
    pss = sum(p for _, _, p in ours)
    f_rss = max(r for r, _, _ in floor)
    f_pss = sum(p for _, _, p in floor)
    print(f"{n} agents on the replay example (3 sensors, 60x, {args.seconds:g} s, {windows} windows written)")
    print(f"per agent: RSS {rss:.0f} MB (peak {hwm:.0f} MB); all {n}: PSS {pss:.0f} MB")
    print(f"baseline bare interpreter: RSS {f_rss:.0f} MB; all {n}: PSS {f_pss:.0f} MB")
    print(f"ratio ours/baseline: RSS {rss / f_rss:.1f}, PSS {pss / f_pss:.1f}")


if __name__ == "__main__":
    main()
