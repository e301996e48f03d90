"""5,000 and 20,000 OPC-UA tags at 1 Hz in one agent process: CPU per value against a bare asyncua client, peak
memory with a window close included, and every row of every window complete.

Run: .venv/bin/python tests/bench/bench_opcua_scale.py [--tags 5000 20000] [--seconds 60]
(both loads by default, ~20 min in all: each needs one whole PT5M window after the agent's warm-up; keep the
machine otherwise quiet, it compares CPU of two processes run one after the other)

Per load N, three processes on 127.0.0.1, measured from /proc (utime + stime, VmHWM, VmRSS):
- the plant (measured only to show it is not the bottleneck): tests/peers/node_opcua/load_server.js, N Double
  variables ns=1;s=v<i> all changing every second, its limits raised so one subscription carries all N;
- the baseline: a bare asyncua client, its high-level subscription (publishing 1000 ms, queuesize=1,
  SamplingInterval 0: asyncua's default of 50 ms would have node-opcua sample every item 20 times a second and
  make the plant the bottleneck) with a handler that only counts, measured for --seconds after a 10 s warm-up;
- ours: ``python -m agent run`` on an asset file for the same N nodes (components of 100 sensors, PT5M windows of
  PT1S rows, a folder store ``file://``, metrics on, SamplingInterval 0 as the baseline asks), its readings counted
  from its own /metrics. It runs until the first window that lies wholly after its warm-up (every sensor has
  reported) is closed and uploaded, plus 40 s, with a hard cap; its CPU is measured for --seconds inside that
  window, 60 s after it opened (clear of the previous close).
Prints per load: values/s and µs CPU per value of both, the ratio ours/baseline, the agent's VmHWM before its first
window close and at the end (closes included), its RSS in the steady state, and "rows complete": every component
CSV of every window wholly after the warm-up has 300 rows and no empty cell. Prints a FAIL line and exits 1 when a
window is short, a cell is empty, or no such window was written before the cap. No absolute pass/fail on CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = ROOT / "tests" / "peers" / "node_opcua"
TICK = os.sysconf("SC_CLK_TCK")
FREQUENCY = 300  # PT5M windows
RATE = 1  # PT1S rows
ROWS = FREQUENCY // RATE
GRACE = 20  # the agent's default [window] grace_secs: a window is closed this long after its end
COMPONENT = 100  # sensors per component (one CSV each)
STEADY_OFFSET = 60  # seconds into the measured window before the CPU measurement starts
LINGER = 40  # seconds after the last file of the checked window appears
BASELINE_WARMUP = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_mb(pid: int, name: str) -> float:
    """VmRSS (resident now) or VmHWM (resident at its highest so far) of ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


BASELINE = r'''
import asyncio, logging, sys, time
from asyncua import Client
logging.disable(logging.CRITICAL)  # asyncua's publish loop logs tracebacks after disconnect()
count = 0
class Handler:
    def datachange_notification(self, node, val, data):
        global count
        count += 1
async def main(port, n, warmup, seconds):
    client = Client(f"opc.tcp://127.0.0.1:{port}/l4e", timeout=60)
    await client.connect()
    nodes = [client.get_node(f"ns=1;s=v{i}") for i in range(n)]
    sub = await client.create_subscription(1000, Handler())
    # SamplingInterval 0 as the agent's asset asks: asyncua's default is 50 ms, which makes node-opcua sample
    # every item 20 times a second (a core at 5,000 items; at 20,000 it delivered 2,000 values/s)
    await sub.subscribe_data_change(nodes, queuesize=1, sampling_interval=0.0)
    await asyncio.sleep(warmup)
    c0, t0 = count, time.process_time()
    print("measuring", flush=True)
    await asyncio.sleep(seconds)
    c1, t1 = count, time.process_time()
    print(f"{c1 - c0} {t1 - t0}", flush=True)
    await client.disconnect()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
'''


@dataclass
class Plant:
    """node load_server.js PORT N, started and stopped around one load."""

    n: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __enter__(self) -> Plant:
        self.proc = subprocess.Popen(["node", str(PEER_DIR / "load_server.js"), str(self.port), str(self.n)],
                                     cwd=PEER_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # node prints READY within seconds or dies (EOF)
        assert line.startswith("READY"), f"node-opcua load plant did not start: {line!r}"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu(self) -> float:
        return cpu_secs(self.proc.pid)


def run_baseline(plant: Plant, seconds: float) -> tuple[float, float, float]:
    """(values, CPU seconds) of the bare client over ``seconds``, and the plant's CPU seconds meanwhile."""
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, str(plant.port), str(plant.n), str(BASELINE_WARMUP),
                             str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "measuring", "the baseline client failed"
        p0 = plant.cpu()
        values, cpu = proc.stdout.readline().split()
        p1 = plant.cpu()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return float(values), float(cpu), p1 - p0


def asset_toml(folder: Path, n: int, opc_port: int, metrics_port: int) -> Path:
    sensors = [f"s{i:05d}" for i in range(n)]
    comps = "\n".join(f"c{k:03d} = {json.dumps(sensors[k * COMPONENT:(k + 1) * COMPONENT])}"
                      for k in range(math.ceil(n / COMPONENT)))
    nodes = ",\n  ".join(f'{{ sensor = "{s}", node_id = "ns=1;s=v{i}" }}' for i, s in enumerate(sensors))
    text = textwrap.dedent(f"""\
        asset = "scale"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 2
        sampling_rate = "PT1S"
        input = "file://{folder}/store/"
        timestamp_format = "EPOCH"
        delimiter = "_"
        [window]
        grace_secs = {GRACE}
        [components]
        """) + comps + textwrap.dedent(f"""
        [metrics]
        enabled = true
        port = {metrics_port}
        [log]
        level = "warning"
        [[sources]]
        name = "opc"
        kind = "opcua"
        endpoint = "opc.tcp://127.0.0.1:{opc_port}/l4e"
        publishing_interval_ms = 1000
        sampling_interval_ms = 0
        timestamp = "received"
        """) + f"nodes = [\n  {nodes}\n]\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scale.toml"
    path.write_text(text)
    return path


def readings(port: int) -> dict[str, float]:
    """l4e_readings_total per sensor from the agent's /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("l4e_readings_total{"):
            labels, value = line.rsplit(" ", 1)
            sensor = labels.split('sensor="', 1)[1].split('"', 1)[0]
            out[sensor] = float(value)
    return out


def window_files(store: Path) -> dict[int, list[Path]]:
    """Component CSVs in the store by window start (EPOCH names: <component>_<start>.csv)."""
    out: dict[int, list[Path]] = {}
    for path in store.rglob("*.csv"):
        start = path.stem.rsplit("_", 1)[-1]
        if start.isdigit():
            out.setdefault(int(start), []).append(path)
    return out


def check_rows(files: list[Path]) -> tuple[int, int]:
    """(files with exactly ROWS data rows and no empty cell, files checked)."""
    good = 0
    for path in files:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        body = rows[1:]
        if len(body) == ROWS and all(len(r) == len(rows[0]) and all(cell != "" for cell in r) for r in body):
            good += 1
        else:
            empty = sum(cell == "" for r in body for cell in r)
            print(f"  short or holed: {path.name}: {len(body)} rows, {empty} empty cells", flush=True)
    return good, len(files)


def sleep_until(wall: float, proc: subprocess.Popen) -> None:
    while (left := wall - time.time()) > 0:
        assert proc.poll() is None, f"the agent exited ({proc.returncode})"
        time.sleep(min(left, 1.0))


def run_agent(folder: Path, plant: Plant, seconds: float) -> dict:
    n = plant.n
    metrics_port = free_port()
    path = asset_toml(folder, n, plant.port, metrics_port)
    store = folder / "store"
    log = (folder / "agent.log").open("w")
    started = time.time()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(folder / "state")],
                             cwd=ROOT, stderr=log)
    out: dict = {"log": folder / "agent.log"}
    try:
        # warm-up: until every sensor has reported at least once (bounded)
        deadline = time.monotonic() + 180
        while True:
            assert agent.poll() is None, f"the agent exited ({agent.returncode}), see {out['log']}"
            assert time.monotonic() < deadline, "the agent's sensors did not all report within 180 s"
            time.sleep(2)
            try:
                seen = readings(metrics_port)
            except OSError:
                continue
            if sum(v > 0 for v in seen.values()) >= n:
                break
        warm = time.time()
        out["warmup"] = warm - started
        # the first whole window after the warm-up; the window open at warm-up (partial) closes GRACE s after it
        first = math.ceil(warm / FREQUENCY) * FREQUENCY
        out["window"] = first
        out["close_in_warmup"] = math.floor(warm / FREQUENCY) * FREQUENCY + GRACE > started + 5
        sleep_until(first + GRACE - 2, agent)
        out["hwm_before"] = mem_mb(agent.pid, "VmHWM")
        sleep_until(first + STEADY_OFFSET, agent)
        r0, c0, p0 = sum(readings(metrics_port).values()), cpu_secs(agent.pid), plant.cpu()
        sleep_until(first + STEADY_OFFSET + seconds, agent)
        r1, c1, p1 = sum(readings(metrics_port).values()), cpu_secs(agent.pid), plant.cpu()
        out.update(readings=r1 - r0, cpu=c1 - c0, plant_cpu=p1 - p0, rss=mem_mb(agent.pid, "VmRSS"))
        expected = math.ceil(n / COMPONENT)
        cap = first + FREQUENCY + GRACE + 240
        while time.time() < cap and len(window_files(store).get(first, [])) < expected:
            assert agent.poll() is None, f"the agent exited ({agent.returncode}), see {out['log']}"
            time.sleep(1)
        out["written"] = time.time() - (first + FREQUENCY)
        sleep_until(min(cap, time.time() + LINGER), agent)
        out["hwm_end"], out["rss_end"] = mem_mb(agent.pid, "VmHWM"), mem_mb(agent.pid, "VmRSS")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
    files = window_files(store)
    checked = [p for start, paths in files.items() if start >= warm for p in paths]
    out["good"], out["checked"] = check_rows(checked)
    out["windows"] = sorted(start for start in files if start >= warm)
    out["short_windows"] = [w for w in out["windows"] if len(files[w]) != expected]
    out["expected"] = expected
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tags", type=int, nargs="+", default=[5000, 20000], help="OPC-UA tags per load")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds of each client (<= 200)")
    args = parser.parse_args()
    assert 0 < args.seconds <= FREQUENCY - STEADY_OFFSET - 40, "--seconds must leave the window's end clear"
    failed = False
    for n in args.tags:
        with tempfile.TemporaryDirectory() as tmp, Plant(n) as plant:
            values_b, cpu_b, plant_b = run_baseline(plant, args.seconds)
            ours = run_agent(Path(tmp) / "agent", plant, args.seconds)
            us_b = cpu_b / values_b * 1e6 if values_b else float("nan")
            us_o = ours["cpu"] / ours["readings"] * 1e6 if ours["readings"] else float("nan")
            print(f"load: {n} OPC-UA tags at 1 Hz (node-opcua plant), {args.seconds:g} s measured per client")
            print(f"  baseline bare asyncua client: {values_b / args.seconds:.0f} values/s, {us_b:.1f} µs CPU/value "
                  f"(plant {plant_b / args.seconds * 100:.0f} % of a core)")
            print(f"  l4e-agent (to CSV in the store): {ours['readings'] / args.seconds:.0f} readings/s, "
                  f"{us_o:.1f} µs CPU/reading (plant {ours['plant_cpu'] / args.seconds * 100:.0f} % of a core; "
                  f"warm-up {ours['warmup']:.0f} s)")
            print(f"  ratio ours/baseline: {us_o / us_b:.2f}")
            before = "before the first window close" + (" (one during the warm-up included)"
                                                        if ours["close_in_warmup"] else "")
            print(f"  agent memory: RSS steady {ours['rss']:.0f} MB, VmHWM {ours['hwm_before']:.0f} MB {before}, "
                  f"VmHWM {ours['hwm_end']:.0f} MB at the end (window closes and uploads included; RSS then "
                  f"{ours['rss_end']:.0f} MB)")
            print(f"  rows complete: {ours['good']}/{ours['checked']} component files of "
                  f"{len(ours['windows'])} window(s) after the warm-up have {ROWS} rows and no empty cell "
                  f"(window written {ours['written']:.0f} s after its end)", flush=True)
            if not ours["checked"] or ours["good"] != ours["checked"] or ours["short_windows"]:
                failed = True
                print(f"FAIL: rows incomplete at {n} tags ({ours['good']}/{ours['checked']} files good, "
                      f"{ours['expected']} expected per window); agent log: "
                      f"{ours['log'].read_text()[-2000:]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
