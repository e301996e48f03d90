"""Benchmark: Modbus request planner vs one request per point, against a local pymodbus TCP server.

    .venv/bin/python tests/bench/bench_modbus.py [--cycles N]

The map: 1,000 holding registers in 5 blocks of 200 (far apart, so blocks never merge), each block holding
40 uint16, 40 float32 and 20 int64 points (500 points). For each mode the script polls the device
``--cycles`` times through the connector's own poll path and reports requests per cycle (counted by the
server) and the cycle time (wall ms, median and p95), then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "connectors")]

from modbus_peer import Gate, sim_device, tcp_peer  # noqa: E402

from agent.core.clock import SystemClock  # noqa: E402
from connectors.modbus.config import ModbusSourceConfig  # noqa: E402
from connectors.modbus.connector import ModbusConnector  # noqa: E402

BLOCK_STARTS = (0, 1_000, 5_000, 20_000, 40_000)
LAYOUT = (("uint16", 1, 40), ("float32", 2, 40), ("int64", 4, 20))  # (type, registers, count) = 200 regs


def build_map() -> tuple[dict[int, list[int]], list[dict]]:
    holding: dict[int, list[int]] = {}
    points: list[dict] = []
    for b, start in enumerate(BLOCK_STARTS):
        address = start
        for type_, width, count in LAYOUT:
            for i in range(count):
                points.append({"sensor": f"b{b}_{type_}_{i}", "table": "holding", "address": address, "type": type_})
                address += width
        holding[start] = [(start + i) & 0xFFFF for i in range(address - start)]
    return holding, points


async def run_mode(port: int, points: list[dict], gate: Gate, one_per_point: bool, cycles: int) -> dict:
    config = ModbusSourceConfig.model_validate(
        {
            "name": "bench",
            "kind": "modbus",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "devices": [{"device_id": 1, "one_request_per_point": one_per_point, "points": points}],
        }
    )
    conn = ModbusConnector(config, SystemClock(), Path("."))
    state = conn._build_states()[0]  # the connector's own poll path, without the tick wait
    try:
        await conn._poll(state)  # connect and warm up
        gate.requests = 0
        times = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            batch = await conn._poll(state)
            times.append(time.perf_counter() - t0)
            assert len(batch) == len(points), f"only {len(batch)} of {len(points)} points read"
    finally:
        conn._close_links()
    times.sort()
    return {
        "requests": gate.requests / cycles,
        "planned": len(state.requests),
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": times[int(0.95 * (len(times) - 1))] * 1000,
    }


async def main(cycles: int) -> None:
    holding, points = build_map()
    gate = Gate()
    async with tcp_peer(sim_device(1, holding=holding, action=gate.action)) as peer:
        planned = await run_mode(peer.port, points, gate, False, cycles)
        single = await run_mode(peer.port, points, gate, True, cycles)
    registers = sum(len(v) for v in holding.values())
    print(f"map: {registers} registers in {len(BLOCK_STARTS)} blocks, {len(points)} points; {cycles} cycles each")
    print(f"{'mode':<24}{'requests/cycle':>16}{'cycle median ms':>18}{'cycle p95 ms':>15}")
    for name, r in (("planner", planned), ("one request per point", single)):
        print(f"{name:<24}{r['requests']:>16.1f}{r['median_ms']:>18.2f}{r['p95_ms']:>15.2f}")
    print(
        f"ratio (one per point / planner): requests {single['requests'] / planned['requests']:.1f}x, "
        f"cycle time {single['median_ms'] / planned['median_ms']:.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30)
    asyncio.run(main(parser.parse_args().cycles))
