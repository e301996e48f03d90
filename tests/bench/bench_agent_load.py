"""CPU per reading end to end and idle CPU: 500 OPC-UA nodes + 200 Modbus registers at 1 Hz.

Run: .venv/bin/python tests/bench/bench_agent_load.py [--seconds 30] [--tags 700] [--soak]
(--tags: OPC-UA nodes + the 200 Modbus registers; 700 by default, 2200 for the large gateway)

Three processes on 127.0.0.1, measured from /proc (utime + stime of the measured process only):
- a plant process (not measured): an asyncua server whose 500 Double nodes change every second and a pymodbus
  TCP server with 200 holding registers;
- the baseline: a bare asyncua subscription client + a pymodbus client polling the 200 registers each second
  (two 100-register reads), counting values and doing nothing with them;
- ours: `l4e-agent run` on the same load, all the way to CSV windows in a folder store, its readings counted
  from its own /metrics, measured for --seconds clear of the PT5M window closes (``clear_of_close``: a close is
  measured by bench_window_close.py; at 700 sensors it is ~0.1 s of CPU every 300 s, ~0.5 µs a reading).
Then ours again with the plant frozen (values unchanged: OPC-UA sends nothing, Modbus is not polled because the
agent's Modbus source is removed) for the idle figure. Prints µs of CPU per reading, the ratio to the
baseline, RSS, and idle CPU as % of one core.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N_NODES, N_REGS = 500, 200
TICK = os.sysconf("SC_CLK_TCK")
GRACE = 20  # the agent's default [window] grace_secs: a PT5M window is closed this long after its end
CLOSE_SECS = 15  # a close and its upload are over within this (700 to 2,200 sensors × 300 rows: well under 1 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident MB now (VmRSS) or at its highest so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


PLANT = r'''
import asyncio, logging, math, sys, time
from asyncua import Server, ua
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer
logging.disable(logging.WARNING)
async def main(opc_port, mb_port, frozen):
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{opc_port}")
    idx = await server.register_namespace("urn:bench")
    obj = await server.nodes.objects.add_object(idx, "Plant")
    nodes = [await obj.add_variable(ua.NodeId(f"n{i}", idx), f"n{i}", 0.0) for i in range(%(n)d)]
    block = ModbusSequentialDataBlock(1, list(range(%(r)d)))
    ctx = ModbusServerContext(devices={1: ModbusDeviceContext(hr=block)}, single=False)
    async with server:
        asyncio.create_task(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", mb_port)))
        print("ready", flush=True)
        k = 0
        while True:
            k += 1
            if not frozen:
                for i, node in enumerate(nodes):
                    await node.write_value(float(k + i * 0.001))
            await asyncio.sleep(1.0)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"))
'''

BASELINE = r'''
import asyncio, logging, sys, time
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient
logging.disable(logging.WARNING)
count = 0
class Handler:
    def datachange_notification(self, node, val, data):
        global count
        count += 1
async def main(opc_port, mb_port, seconds):
    global count
    client = Client(f"opc.tcp://127.0.0.1:{opc_port}")
    await client.connect()
    idx = await client.get_namespace_index("urn:bench")
    nodes = [client.get_node(f"ns={idx};s=n{i}") for i in range(%(n)d)]
    sub = await client.create_subscription(1000, Handler())
    await sub.subscribe_data_change(nodes, queuesize=1)
    mb = AsyncModbusTcpClient("127.0.0.1", port=mb_port)
    await mb.connect()
    async def poll():
        global count
        while True:
            for start in (0, 100):
                rr = await mb.read_holding_registers(start, count=100, device_id=1)
                count += len(rr.registers)
            await asyncio.sleep(1.0)
    task = asyncio.create_task(poll())
    await asyncio.sleep(5)  # warm-up
    c0, t0 = count, time.process_time()
    await asyncio.sleep(seconds)
    c1, t1 = count, time.process_time()
    print(f"{c1 - c0} {t1 - t0}", flush=True)
    task.cancel()
    await client.disconnect()
    mb.close()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
'''


def script(template: str) -> str:
    return template.replace("%(n)d", str(N_NODES)).replace("%(r)d", str(N_REGS))


def asset_toml(folder: Path, opc_port: int, mb_port: int, metrics_port: int, with_modbus: bool) -> Path:
    opc = [f"o{i:04d}" for i in range(N_NODES)]
    regs = [f"m{i:03d}" for i in range(N_REGS)]
    sensors = opc + (regs if with_modbus else [])
    comps = "\n".join(f'c{k} = {json.dumps(sensors[k * 100:(k + 1) * 100])}' for k in range(len(sensors) // 100))
    nodes = ",\n  ".join(f'{{ sensor = "o{i:04d}", node_id = "ns=2;s=n{i}" }}' for i in range(N_NODES))
    text = textwrap.dedent(f"""\
        asset = "bench"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 2
        sampling_rate = "PT1S"
        input = "file://{folder}/store/"
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
        endpoint = "opc.tcp://127.0.0.1:{opc_port}"
        publishing_interval_ms = 1000
        timestamp = "received"
        """) + f"nodes = [\n  {nodes}\n]\n"
    if with_modbus:
        points = ",\n  ".join(f'{{ sensor = "m{i:03d}", table = "holding", address = {i}, type = "uint16" }}'
                              for i in range(N_REGS))
        text += textwrap.dedent(f"""
            [[sources]]
            name = "plc"
            kind = "modbus"
            transport = "tcp"
            host = "127.0.0.1"
            port = {mb_port}
            poll_interval_ms = 1000
            [[sources.devices]]
            device_id = 1
            """) + f"points = [\n  {points}\n]\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.toml"
    path.write_text(text)
    return path


def readings_total(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("l4e_readings_total{"))


def start_plant(frozen: bool) -> tuple[subprocess.Popen, int, int]:
    opc_port, mb_port = free_port(), free_port()
    plant = subprocess.Popen([sys.executable, "-c", script(PLANT), str(opc_port), str(mb_port), "1" if frozen else "0"],
                             stdout=subprocess.PIPE, text=True)
    assert plant.stdout.readline().strip() == "ready"
    return plant, opc_port, mb_port


def clear_of_close(seconds: float) -> None:
    """Wait, if need be, so that the next ``seconds`` hold no window close: one close every 300 s (PT5M), GRACE s
    after the window's end, lasting up to CLOSE_SECS with its upload. A 30 s measurement that caught one would
    charge it ten times its share; the close is measured on its own (bench_window_close.py)."""
    now = time.time()
    close = math.ceil((now - GRACE - CLOSE_SECS) / 300) * 300 + GRACE  # the next close still running or to come
    if now + seconds > close - 2 and now < close + CLOSE_SECS:
        time.sleep(close + CLOSE_SECS - now)


def run_agent(folder: Path, opc_port: int, mb_port: int, seconds: float, with_modbus: bool,
              rss_every: float = 0) -> dict:
    metrics_port = free_port()
    path = asset_toml(folder, opc_port, mb_port, metrics_port, with_modbus)
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(folder / "state")],
                             cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r0 = readings_total(metrics_port)
                break
            except OSError:
                assert time.monotonic() < deadline, "agent metrics never came up"
                time.sleep(0.5)
        time.sleep(8)  # warm-up: connections, subscriptions, first windows
        if rss_every <= 0:
            clear_of_close(seconds)
        r0, c0, rss0 = readings_total(metrics_port), cpu_secs(agent.pid), rss_mb(agent.pid)
        trace: list[tuple[float, float]] = []
        if rss_every > 0:  # a memory trace: is it flat once the first windows have been written?
            t0 = time.monotonic()
            t_end = t0 + seconds
            while (left := t_end - time.monotonic()) > 0:
                time.sleep(min(rss_every, left))
                trace.append((time.monotonic() - t0, rss_mb(agent.pid)))
                print(f"  t={trace[-1][0]:5.0f}s RSS {trace[-1][1]:6.1f} MB", flush=True)
        else:
            time.sleep(seconds)
        r1, c1 = readings_total(metrics_port), cpu_secs(agent.pid)
        rss, rss_max = rss_mb(agent.pid), rss_mb(agent.pid, "VmHWM")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    return {"readings": r1 - r0, "cpu": c1 - c0, "rss": rss, "rss0": rss0, "rss_max": rss_max, "trace": trace}


def main() -> None:
    global N_NODES
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--soak", action="store_true", help="only our agent under load, printing RSS as it runs")
    parser.add_argument("--rss-every", type=float, default=60.0, help="seconds between RSS samples (--soak)")
    parser.add_argument("--tags", type=int, default=N_NODES + N_REGS, help="OPC-UA nodes + 200 Modbus registers")
    args = parser.parse_args()
    N_NODES = args.tags - N_REGS
    if args.soak:
        with tempfile.TemporaryDirectory() as tmp:
            plant, opc_port, mb_port = start_plant(frozen=False)
            try:
                ours = run_agent(Path(tmp) / "soak", opc_port, mb_port, args.seconds, True, args.rss_every)
            finally:
                plant.terminate()
                plant.wait(10)
        print(f"soak {args.seconds:g} s: {ours['cpu'] / ours['readings'] * 1e6:.1f} µs CPU/reading, "
              f"RSS {ours['rss0']:.0f} → {ours['rss']:.0f} MB (max {ours['rss_max']:.0f} MB)")
        # PT5M windows: the first close is within 300 s of the start (+ the 8 s warm-up); flatness is judged
        # from the first sample after it
        after = [mb for t, mb in ours["trace"] if t >= 300 + 30]
        if len(after) >= 2:
            moved = after[-1] - after[0]
            print(f"after the first window close: {after[0]:.1f} → {after[-1]:.1f} MB (moved {moved:+.1f} MB; "
                  f"range {min(after):.1f}–{max(after):.1f} MB over {len(after)} samples)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plant, opc_port, mb_port = start_plant(frozen=False)
        try:
            base = subprocess.run([sys.executable, "-c", script(BASELINE), str(opc_port), str(mb_port),
                                   str(args.seconds)], capture_output=True, text=True, timeout=args.seconds + 120)
            n_base, cpu_base = base.stdout.split()
            n_base, cpu_base = float(n_base), float(cpu_base)
            ours = run_agent(tmp / "load", opc_port, mb_port, args.seconds, with_modbus=True)
        finally:
            plant.terminate()
            plant.wait(10)
        plant, opc_port, mb_port = start_plant(frozen=True)
        try:
            idle = run_agent(tmp / "idle", opc_port, mb_port, args.seconds, with_modbus=False)
        finally:
            plant.terminate()
            plant.wait(10)
    us_base = cpu_base / n_base * 1e6
    us_ours = ours["cpu"] / ours["readings"] * 1e6
    print(f"load: {N_NODES} OPC-UA nodes + {N_REGS} Modbus registers at 1 Hz, {args.seconds:g} s measured")
    print(f"baseline bare asyncua + pymodbus client: {n_base / args.seconds:.0f} values/s, {us_base:.1f} µs CPU/value")
    print(f"l4e-agent end to end (to CSV in the store): {ours['readings'] / args.seconds:.0f} readings/s, "
          f"{us_ours:.1f} µs CPU/reading, RSS {ours['rss0']:.0f} → {ours['rss']:.0f} MB over the run "
          f"(max {ours['rss_max']:.0f} MB)")
    print(f"ratio ours/baseline: {us_ours / us_base:.2f}")
    print(f"idle (connected, no data changing): {idle['cpu'] / args.seconds * 100:.2f} % of one core, "
          f"RSS {idle['rss']:.0f} MB")


if __name__ == "__main__":
    main()
