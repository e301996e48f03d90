"""The connector's own publish loop (connectors.opcua.publish) against node-opcua's large plant: a second of
changes that takes several PublishResponses (the agent asks for at most 1,000 notifications a publish) all
arrives, every second, through one subscription."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.core.clock import SystemClock
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.feed import MAX_NOTIFICATIONS_PER_PUBLISH
from tests.connectors.node_opcua_peer import NodeOpcUaPeer

N = 2500  # changes a second: three publishes of at most 1,000


async def test_every_change_of_a_large_plant_arrives_when_a_second_takes_several_publishes(tmp_path: Path):
    assert N > 2 * MAX_NOTIFICATIONS_PER_PUBLISH
    peer = await NodeOpcUaPeer(script="load_server.js", args=(str(N),)).start()
    config = OpcUaSourceConfig(name="plant", kind="opcua", endpoint=peer.endpoint, sampling_interval_ms=0,
                               timeout_secs=30, nodes=[{"sensor": f"s{i}", "node_id": f"ns=1;s=v{i}"}
                                                       for i in range(N)])
    connector = OpcUaConnector(config, SystemClock(), tmp_path)
    per_second: dict[int, int] = {}
    distinct: dict[str, set[float]] = {}

    async def consume() -> None:
        async for batch in connector.readings():
            for reading in batch:
                if reading.value == reading.value:
                    per_second[int(reading.ts)] = per_second.get(int(reading.ts), 0) + 1
                    distinct.setdefault(reading.sensor, set()).add(reading.value)

    task = asyncio.create_task(consume())
    try:
        deadline = time.monotonic() + 60  # ~8 s of data on a quiet machine; bounded for a loaded one
        while len(distinct) < N or min(len(v) for v in distinct.values()) < 8:
            assert time.monotonic() < deadline, f"{N - len(distinct)} sensors never delivered"
            await asyncio.sleep(0.2)
        stopped = time.time()  # the plant stamps its values with the same wall clock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await peer.stop()
    # every variable changes once a second: the whole seconds after the first one, old enough that all their
    # changes had time to arrive (3 s, for a loaded machine), hold N readings a second (the plant updates in
    # ten slices a second; a late timer can stamp one slice in the next second, so the seconds are summed)
    seconds = [s for s in sorted(per_second)[1:] if s + 1 < stopped - 3]
    got = sum(per_second[s] for s in seconds)
    assert len(seconds) >= 2 and got >= 0.95 * N * len(seconds), {s: per_second[s] for s in seconds}
