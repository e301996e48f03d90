"""Benchmark: client CPU and memory per delivered OPC-UA value, our connector vs a bare asyncua subscription.

    .venv/bin/python tests/bench/bench_opcua.py [--seconds 30] [--nodes 500]

Three processes: an asyncua Server changing every node once a second (its cost stays out of the figures),
our OpcUaConnector, and a bare asyncua client (the iterator API of ``Client.create_subscription``) subscribed
to the same nodes with the same publishing interval, sampling interval and queue size. Each client measures
its own process CPU time (user + system, ``time.process_time``) over ``--seconds`` after its first
notification, so imports, connection and the initial values are excluded; RSS is read from /proc at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PUBLISHING_MS = 1000
SAMPLING_MS = 1000
NS = 2


def node_id(i: int) -> str:
    return f"ns={NS};s=Bench.V{i:04d}"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------------ roles


async def serve(port: int, nodes: int) -> None:
    """Every second, write a new value (and source timestamp) to every node."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:l4e-agent:bench")
    assert idx == NS
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", idx), ua.QualifiedName("Bench", idx))
    ids = []
    for i in range(nodes):
        var = await folder.add_variable(ua.NodeId.from_string(node_id(i)), ua.QualifiedName(f"V{i:04d}", idx), 0.0)
        ids.append(var.nodeid)
    async with server:
        print("ready", flush=True)
        tick = 0
        next_at = time.monotonic()
        while True:
            tick += 1
            now = datetime.now(UTC)
            for i, nid in enumerate(ids):
                dv = ua.DataValue(ua.Variant(tick + i / 1000.0, ua.VariantType.Double), SourceTimestamp=now)
                await server.write_attribute_value(nid, dv)
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class Meter:
    """Counts delivered values; the first delivery (the initial values) only starts the clocks."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.count = 0
        self.wall0: float | None = None
        self.cpu0 = 0.0

    def add(self, values: int) -> bool:
        """Record ``values`` delivered values; True once ``seconds`` have been measured."""
        now = time.monotonic()
        if self.wall0 is None:
            self.wall0, self.cpu0 = now, time.process_time()
            return False
        self.count += values
        return now - self.wall0 >= self.seconds

    def result(self) -> dict:
        assert self.wall0 is not None
        return {
            "values": self.count,
            "cpu_s": time.process_time() - self.cpu0,
            "wall_s": time.monotonic() - self.wall0,
            "rss_mib": rss_mib(),
        }


async def run_connector(port: int, nodes: int, seconds: float) -> dict:
    from agent.core.clock import SystemClock
    from connectors.opcua.config import OpcUaSourceConfig
    from connectors.opcua.connector import OpcUaConnector

    config = OpcUaSourceConfig(
        name="bench",
        kind="opcua",
        endpoint=f"opc.tcp://127.0.0.1:{port}/",
        publishing_interval_ms=PUBLISHING_MS,
        sampling_interval_ms=SAMPLING_MS,
        queue_size=1,
        nodes=[{"sensor": f"v{i}", "node_id": node_id(i)} for i in range(nodes)],
    )
    connector = OpcUaConnector(config, SystemClock(), ROOT)
    meter = Meter(seconds)
    async for batch in connector.readings():
        if meter.add(len(batch)):
            break
    return meter.result()


async def run_bare(port: int, nodes: int, seconds: float) -> dict:
    from asyncua import Client, ua

    client = Client(f"opc.tcp://127.0.0.1:{port}/")
    await client.connect()
    sub = await client.create_subscription(PUBLISHING_MS, None)
    await sub.subscribe_data_change(
        [client.get_node(ua.NodeId.from_string(node_id(i))) for i in range(nodes)],
        queuesize=1,
        sampling_interval=SAMPLING_MS,
    )

    meter = Meter(seconds)
    initial = nodes  # the initial values arrive one event at a time: count them as the warm-up
    try:
        async for event in sub:
            # As little as a useful client does: the number and its timestamp.
            _ = (float(event.value), event.data.monitored_item.Value.SourceTimestamp)
            if initial:
                initial -= 1
                if initial == 0:
                    meter.add(0)
            elif meter.add(1):
                break
        return meter.result()
    finally:
        await client.disconnect()


# ------------------------------------------------------------------------------------------------ driver


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time per client (s)")
    parser.add_argument("--nodes", type=int, default=500, help="nodes changing at 1 Hz")
    parser.add_argument("--role", choices=["server", "connector", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        logging.basicConfig(level=logging.ERROR)  # asyncua's start-up warnings are not the benchmark's output
    if args.role == "server":
        asyncio.run(serve(args.port, args.nodes))
        return
    if args.role in ("connector", "bare"):
        run = run_connector if args.role == "connector" else run_bare
        print(json.dumps(asyncio.run(run(args.port, args.nodes, args.seconds))), flush=True)
        return

    port = free_port()
    server = spawn("--role", "server", "--port", str(port), "--nodes", str(args.nodes))
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        common = ("--port", str(port), "--nodes", str(args.nodes), "--seconds", str(args.seconds))
        clients = {role: spawn("--role", role, *common) for role in ("connector", "bare")}
        results = {role: json.loads(proc.communicate(timeout=args.seconds + 120)[0]) for role, proc in clients.items()}
    finally:
        server.terminate()
        server.wait(timeout=10)
    report(results, args)


def report(results: dict, args: argparse.Namespace) -> None:
    print(
        f"{args.nodes} nodes at 1 Hz, publishing {PUBLISHING_MS} ms, {args.seconds:.0f} s measured, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(f"{'client':<10} {'values':>8} {'values/s':>9} {'CPU s':>7} {'µs/value':>9} {'RSS MiB':>8}")
    per_value = {}
    for role, r in results.items():
        per_value[role] = r["cpu_s"] / r["values"] * 1e6 if r["values"] else float("nan")
        print(
            f"{role:<10} {r['values']:>8} {r['values'] / r['wall_s']:>9.0f} {r['cpu_s']:>7.2f} "
            f"{per_value[role]:>9.1f} {r['rss_mib']:>8.1f}"
        )
    print(f"ratio connector/bare CPU per value: {per_value['connector'] / per_value['bare']:.2f}")


if __name__ == "__main__":
    main()
