"""Benchmark: history backfill of an OPC-UA source (values/s, time, the agent's peak memory vs a baseline).

    .venv/bin/python tests/bench/bench_backfill.py [--nodes 500] [--hours 1] [--timeout 300]

Two processes besides this one: an asyncua Server (``serve``) whose variables are historized, and the agent
(``l4e-agent run``). The server's history is filled directly, not in real time: its history store answers
HistoryRead raw for any interval with one value per second per node (value = node × 1000 + second of the
hour), which is what an hour of 1 Hz history looks like on the wire, without holding 1.8 million DataValues in
the server's memory; its variables also change every second, so live data flows during the backfill.

The agent's state folder is prepared as a run that stopped ``--hours`` ago leaves it (progress.json with the
last window written and each sensor's last reading), so the agent starts with a gap of that length per node.
Measured: from the agent's start until its progress file has no gap left (values/s = values filled / that
time), then until the windows the gap covered are written again; the agent's VmHWM at the end. The baseline is
the same agent and server without ``backfill`` for the same wall time, in the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

NS = 2
FREQ = 300


def node_id(i: int) -> str:
    return f"ns={NS};s=Bench.V{i:04d}"


def value_at(i: int, second: int) -> float:
    return i * 1000.0 + second % 3600


# ------------------------------------------------------------------------------------------------ server


async def serve(port: int, nodes: int) -> None:
    from asyncua import Server, ua
    from asyncua.server.history import HistoryStorageInterface

    index = {}

    class OneHertzHistory(HistoryStorageInterface):
        """Every node holds one value per whole second up to now (generated when read)."""

        async def init(self) -> None:
            pass

        async def new_historized_node(self, node_id, period, count=0) -> None:
            pass

        async def save_node_value(self, node_id, datavalue) -> None:
            pass

        async def read_node_history(self, node_id, start, end, nb_values):
            i = index[node_id.Identifier]
            first = math.ceil(start.timestamp())
            last = min(int(end.timestamp()), int(time.time()))
            limit = min(nb_values or self.max_history_data_response_size, self.max_history_data_response_size)
            stop = min(last, first + limit - 1)
            out = [ua.DataValue(ua.Variant(value_at(i, s), ua.VariantType.Double),
                                SourceTimestamp=datetime.fromtimestamp(s, UTC),
                                ServerTimestamp=datetime.fromtimestamp(s, UTC)) for s in range(first, stop + 1)]
            cont = datetime.fromtimestamp(stop + 1, UTC) if stop < last and nb_values > limit else None
            return out, cont

        async def stop(self) -> None:
            pass

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.iserver.history_manager.set_storage(OneHertzHistory())
    idx = await server.register_namespace("urn:l4e-agent:bench")
    assert idx == NS
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", idx), ua.QualifiedName("Bench", idx))
    variables = []
    for i in range(nodes):
        var = await folder.add_variable(ua.NodeId.from_string(node_id(i)), ua.QualifiedName(f"V{i:04d}", idx), 0.0)
        await var.write_attribute(ua.AttributeIds.AccessLevel, ua.DataValue(ua.Variant(
            ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask, ua.VariantType.Byte)))
        await var.write_attribute(ua.AttributeIds.Historizing, ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
        index[f"Bench.V{i:04d}"] = i
        variables.append(var)
    await server.start()
    print("ready", flush=True)
    while True:  # live data: every node changes every second
        second = int(time.time()) + 1
        await asyncio.sleep(second - time.time())
        stamp = datetime.fromtimestamp(second, UTC)
        for i, var in enumerate(variables):
            await server.write_attribute_value(var.nodeid, ua.DataValue(
                ua.Variant(value_at(i, second), ua.VariantType.Double), SourceTimestamp=stamp, ServerTimestamp=stamp))


# ------------------------------------------------------------------------------------------------ agent


def asset_file(folder: Path, port: int, nodes: int, backfill: bool) -> Path:
    sensors = [f"v{i:04d}" for i in range(nodes)]
    comps = {f"unit{k}": sensors[k * 100:(k + 1) * 100] for k in range((nodes + 99) // 100)}
    lines = ['asset = "bench"', "[lookout]", 'upload_frequency = "PT5M"', "delay_offset_minutes = 2",
             'sampling_rate = "PT1S"', f'input = "file://{folder / "store"}/"', "[components]"]
    lines += [f"{c} = {json.dumps(s)}" for c, s in comps.items()]
    lines += ["[window]", 'agg = "last"', "fill_limit = 2", "grace_secs = 2", "[[sources]]", 'name = "plc"',
              'kind = "opcua"', f'endpoint = "opc.tcp://127.0.0.1:{port}/"']
    if backfill:
        lines.append('backfill = { max_age = "PT2H" }')
    lines.append("nodes = [" + ", ".join(f'{{ sensor = "{s}", node_id = "{node_id(i)}" }}'
                                          for i, s in enumerate(sensors)) + "]")
    path = folder / "asset.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare_state(state: Path, nodes: int, gap_secs: int) -> float:
    """The state a run that stopped ``gap_secs`` ago leaves: its last window and each sensor's last reading."""
    last = float(int(time.time()) - gap_secs)
    state.mkdir(parents=True)
    (state / "progress.json").write_text(json.dumps({
        "last_written": int(last // FREQ) * FREQ, "carry": {},
        "last_ts": {f"v{i:04d}": last for i in range(nodes)}}))
    return last


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_agent(folder: Path, port: int, nodes: int, backfill: bool, gap_secs: int, seconds: float | None,
              timeout: float) -> dict:
    folder.mkdir(parents=True)
    path = asset_file(folder, port, nodes, backfill)
    state = folder / "state"
    prepare_state(state, nodes, gap_secs)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(state)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out: dict = {}
    progress = state / "backfill" / "plc.json"
    try:
        while time.monotonic() - started < (seconds if seconds is not None else timeout):
            time.sleep(0.25)
            if proc.poll() is not None:
                raise SystemExit(f"agent exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if not backfill or "filled_secs" in out:
                if backfill and not any((state / "kept").glob("*/dirty")):
                    out["rendered_secs"] = time.monotonic() - started
                    break
                continue
            try:
                data = json.loads(progress.read_text())
            except (OSError, ValueError):
                continue
            if data.get("totals", {}).get("values") and not data.get("gaps"):
                out["filled_secs"] = time.monotonic() - started
                out["values"] = data["totals"]["values"]
                out["filled_cpu_secs"] = cpu_secs(proc.pid)
        out["wall_secs"] = time.monotonic() - started
        out["vm_hwm_mib"] = vm_hwm_mib(proc.pid)
        out["cpu_secs"] = cpu_secs(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    from tests.ports import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(args.nodes)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", "server did not start"
        gap = int(args.hours * 3600)
        with tempfile.TemporaryDirectory(prefix="l4e-bench-backfill-") as tmp:
            server_cpu = cpu_secs(server.pid)
            fill = run_agent(Path(tmp) / "backfill", port, args.nodes, True, gap, None, args.timeout)
            fill["server_cpu_secs"] = cpu_secs(server.pid) - server_cpu
            if "filled_secs" not in fill:
                raise SystemExit(f"backfill not done within {args.timeout} s: {fill}")
            base = run_agent(Path(tmp) / "baseline", port, args.nodes, False, gap, fill["wall_secs"], args.timeout)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    expected = args.nodes * gap
    print(f"backfill: {args.nodes} nodes × {timedelta(seconds=gap)} at 1 Hz ≈ {expected:,} values "
          "(plus the seconds until the agent's first live reading)")
    print(f"  filled {fill['values']:,} values in {fill['filled_secs']:.1f} s from the agent's start "
          f"({fill['values'] / fill['filled_secs']:,.0f} values/s); windows rewritten by "
          f"{fill.get('rendered_secs', float('nan')):.1f} s")
    extra = fill["filled_cpu_secs"] - base["cpu_secs"] * fill["filled_secs"] / base["wall_secs"]
    print(f"  agent CPU until filled {fill['filled_cpu_secs']:.1f} s (baseline, same time: "
          f"{base['cpu_secs'] * fill['filled_secs'] / base['wall_secs']:.1f} s): {extra / fill['values'] * 1e6:.1f} µs "
          f"per backfilled value, {fill['values'] / extra:,.0f} values per agent CPU second; the asyncua server "
          f"used {fill['server_cpu_secs']:.1f} s of CPU meanwhile (on {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  agent VmHWM {fill['vm_hwm_mib']:.0f} MiB with backfill, {base['vm_hwm_mib']:.0f} MiB baseline "
          f"(same {base['wall_secs']:.0f} s, no backfill): +{fill['vm_hwm_mib'] - base['vm_hwm_mib']:.0f} MiB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
