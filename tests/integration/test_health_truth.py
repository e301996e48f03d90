"""Health tells the truth from the first second, as a new user would try it: an OPC-UA source (a real asyncua
server on 127.0.0.1) that refuses the connection from the start, or that is killed later.

- /healthz answers 503 naming the source and why as soon as its connection attempt fails (not after
  ``source_silent_secs``, which stays about a connected transport that stops answering);
- every window in which the component got no reading at all raises ``window_missing`` for it, whether or not
  the source ever connected, and the status page counts it.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from agent.runtime.source_health import CONNECT_GRACE_SECS
from agent.runtime.status_data import collect_status
from tests.connectors.opcua_peer import OpcUaPeer
from tests.helpers import asset_header, http_get, journal_alarms, modbus_tcp_source
from tests.ports import free_port

pytestmark = pytest.mark.timeout(60)

T0 = parse_instant("2026-01-01T00:00:00Z")
SPEED = 120.0  # a PT5M window every 2.5 s of wall time


CURRENT = '{ sensor = "current", table = "holding", address = 0, type = "float32" }'


def asset(tmp_path: Path, endpoint: str, metrics_port: int, modbus_port: int | None = None) -> Path:
    path = tmp_path / "asset.toml"
    components = 'plant = ["flow"]' + ('\nmotor = ["current"]' if modbus_port else '')
    path.write_text(asset_header("pump", f"file://{tmp_path}/store/", components) + textwrap.dedent(f"""\
        [window]
        fill_limit = 0
        grace_secs = 5
        [health]
        source_silent_secs = 3000
        [metrics]
        enabled = true
        port = {metrics_port}
        [[sources]]
        name = "plc"
        kind = "opcua"
        endpoint = "{endpoint}"
        publishing_interval_ms = 200
        sampling_interval_ms = 100
        backoff_initial_secs = 0.2
        backoff_max_secs = 0.5
        timeout_secs = 2
        nodes = [ {{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }} ]
        """) + journal_alarms(tmp_path / "alarms.jsonl", ("missing", "window_missing"))
        + (modbus_tcp_source("drive", modbus_port, [CURRENT], timeout_secs=0.5) if modbus_port else ""))
    return path


def healthz(port: int) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}/healthz", timeout=5)


async def wait_until(predicate, timeout_secs: float, what: str) -> float:
    """Wait (bounded, wall time) for ``predicate``; returns the wall seconds it took."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < timeout_secs, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def missing_windows(tmp_path: Path) -> list[dict]:
    journal = tmp_path / "alarms.jsonl"
    return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []


async def test_a_source_refusing_from_the_start_is_unhealthy_at_once_and_its_windows_are_missing(tmp_path):
    metrics_port = free_port()
    # nothing listens at either address: an OPC-UA server and a Modbus TCP drive, both refusing
    path = asset(tmp_path, f"opc.tcp://127.0.0.1:{free_port()}/", metrics_port, modbus_port=free_port())
    clock = ScaledClock(T0 - 10, SPEED)
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)
    events = []
    runner.event_listeners.append(events.append)
    config = load(path)
    agent = Agent([runner], clock, metrics_config=config.metrics)
    task = asyncio.create_task(agent.run())
    try:
        async def unhealthy() -> bool:
            code, body = await asyncio.to_thread(healthz, metrics_port)
            return code == 503 and "plc (" in body and "drive (" in body and "not connected" in body

        took = await wait_until(unhealthy, 20, "/healthz 503 for the refused sources")
        assert took < CONNECT_GRACE_SECS - 1, took  # their first attempts failed: no grace waited out
        code, body = await asyncio.to_thread(healthz, metrics_port)
        assert code == 503 and "refused" in body.lower(), body

        async def two_missing() -> bool:
            return all(runner.closer.stats.windows_missing.get(c, 0) >= 2 for c in ("plant", "motor"))

        await wait_until(two_missing, 30, "two windows reported missing")

        async def alarmed() -> bool:
            return bool(missing_windows(tmp_path))

        await wait_until(alarmed, 10, "the window_missing alarm")
        status = collect_status([runner], clock.now())["assets"][0]
        assert status["windows"]["missing"]["plant"] >= 2 and status["windows"]["missing"]["motor"] >= 2
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)
    missing = [e for e in events if e.kind == "window_missing"]
    assert {e.subject for e in missing} == {"plant", "motor"}
    first_whole = -(-int(runner.closer.anchor) // 300) * 300  # the first whole window after the start
    assert missing[0].details["window_start"] == first_whole
    assert [a["state"] for a in missing_windows(tmp_path)][:1] == ["raised"]


async def test_a_source_killed_later_is_unhealthy_at_once_and_its_next_windows_are_missing(tmp_path):
    peer = await OpcUaPeer().start()
    metrics_port = free_port()
    path = asset(tmp_path, peer.endpoint, metrics_port)
    clock = ScaledClock(T0 - 10, SPEED)
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)
    events = []
    runner.event_listeners.append(events.append)
    agent = Agent([runner], clock, metrics_config=load(path).metrics)
    task = asyncio.create_task(agent.run())
    try:
        async def healthy() -> bool:
            code, body = await asyncio.to_thread(healthz, metrics_port)
            return (code, body.strip()) == (200, "ok")

        await wait_until(healthy, 15, "/healthz 200 while the server answers")

        async def one_written() -> bool:
            return runner.closer.stats.windows_written >= 1

        await wait_until(one_written, 20, "a window written while the server answers")
        assert runner.closer.stats.windows_missing == {}
        await peer.stop()
        killed_at = clock.now()

        async def unhealthy() -> bool:
            code, body = await asyncio.to_thread(healthz, metrics_port)
            return code == 503 and "plc" in body and "not connected" in body

        took = await wait_until(unhealthy, 20, "/healthz 503 after the server died")
        assert took < 8.0, took

        async def missing_after_kill() -> bool:
            return any(e.kind == "window_missing" and e.details["window_start"] >= killed_at for e in events)

        await wait_until(missing_after_kill, 30, "a window after the kill reported missing")
        status = collect_status([runner], clock.now())["assets"][0]
        assert status["windows"]["missing"].get("plant", 0) >= 1, status["windows"]
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)
        await peer.stop()
    assert all(e.subject == "plant" for e in events if e.kind == "window_missing")
