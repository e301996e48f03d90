"""A source that answers but whose every item is bad is "bad quality", not silent: its own alarm, /healthz 503
with that reason, and the watchdog (liveness) unaffected; good values again clear it."""

from __future__ import annotations

import asyncio

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.connectors.modbus_peer import sim_device, tcp_peer
from tests.helpers import asset_header, journal_alarms, modbus_tcp_source

T0 = parse_instant("2026-01-01T00:00:00Z")
NAN32 = [0x7FC0, 0x0000]  # a float32 NaN: the device saying "no value"
POINTS = ('{ sensor = "a", table = "holding", address = 0, type = "float32" }',
          '{ sensor = "b", table = "holding", address = 2, type = "float32" }')


async def test_every_item_bad_is_bad_quality_not_silence(tmp_path):
    device = sim_device(1, holding={0: [0x4148, 0x0000, 0x4120, 0x0000]})  # 12.5 and 10.0
    async with tcp_peer(device) as peer:
        path = tmp_path / "asset.toml"
        alarms = journal_alarms(tmp_path / "alarms.jsonl", ("quality", "source_bad_quality"),
                                ("silent", "source_silent"), hook="file")
        path.write_text(asset_header("pump", f"file://{tmp_path}/store/", 'pump = ["a", "b"]')
                        + "[health]\nsource_silent_secs = 30\n" + alarms
                        + modbus_tcp_source("plc", peer.port, POINTS, poll_interval_ms=1000))
        clock = ScaledClock(T0, 20.0)
        runner = AssetRunner(load(path), path, tmp_path / "state", clock)
        events = []
        runner.event_listeners.append(events.append)
        agent = Agent([runner], clock)
        task = asyncio.create_task(agent.run())
        try:
            await clock.sleep(60)
            assert agent.supervision.health() == (True, "ok")
            await peer.set(1, "holding", 0, [*NAN32, *NAN32])  # both items bad; the device still answers
            await clock.sleep(120)
            assert runner.bad_quality_sources() == {"plc"}
            assert runner.silent_sources() == set()
            ok, reason = agent.supervision.health()
            assert not ok and "bad quality" in reason and "plc" in reason
            assert agent.supervision.liveness() == (True, "ok")  # a restart would not mend bad values
            await peer.set(1, "holding", 0, [0x4148, 0x0000, *NAN32])  # one good item again
            await clock.sleep(120)
            assert runner.bad_quality_sources() == set()
        finally:
            agent.request_stop()
            await asyncio.wait_for(task, 60)
    kinds = [e.kind for e in events if e.kind.startswith("source_")]
    assert kinds == ["source_bad_quality", "source_quality_recovered"]
    alarms = (tmp_path / "alarms.jsonl").read_text().splitlines()
    assert len(alarms) == 2 and '"raised"' in alarms[0] and '"cleared"' in alarms[1]
    assert all('"quality"' in line for line in alarms)
