"""What a new user reads in the log of a first run: each source's first connection, one line per written
window with its rows and empty cells, and the status page's address in the start-up line."""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.connectors.modbus_peer import sim_device, tcp_peer
from tests.connectors.opcua_peer import OpcUaPeer
from tests.helpers import asset_header

T0 = parse_instant("2026-01-01T00:00:00Z")


async def test_first_run_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    opcua = await OpcUaPeer().start()
    try:
        async with tcp_peer(sim_device(1, holding={0: [42]})) as modbus:
            path = tmp_path / "asset.toml"
            components = 'pump = ["flow", "setpt"]\nmotor = ["current"]'
            path.write_text(asset_header("line", f"file://{tmp_path}/store/", components, delay_offset_minutes=1)
                            + textwrap.dedent(f"""\
                [window]
                grace_secs = 5
                [metrics]
                enabled = true
                port = 0
                [[sources]]
                name = "plc"
                kind = "opcua"
                endpoint = "{opcua.endpoint}"
                nodes = [{{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }},
                         {{ sensor = "setpt", node_id = "ns=2;s=Pump07.Setpt" }}]
                [[sources]]
                name = "drive"
                kind = "modbus"
                transport = "tcp"
                host = "127.0.0.1"
                port = {modbus.port}
                poll_interval_ms = 200
                devices = [{{ points = [{{ sensor = "current", table = "holding", address = 0, type = "uint16" }}] }}]
                """))
            config = load(path)
            clock = ScaledClock(T0 - 30, 60.0)
            agent = Agent([AssetRunner(config, path, tmp_path / "state", clock)], clock,
                          metrics_config=config.metrics)
            await asyncio.wait_for(agent.run(until=T0 + 5 * 60 + 10), 60)
    finally:
        await opcua.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    # one line per source's first connection (with "(after N failures)" when a first attempt failed)
    assert len([m for m in lines if m.startswith(f"OPC-UA source plc: connected to {opcua.endpoint}")]) == 1
    assert len([m for m in lines if m.startswith(f"modbus drive: connected to 127.0.0.1:{modbus.port}")]) == 1
    started = [line for line in lines if line.startswith("agent started")]
    assert len(started) == 1
    assert re.fullmatch(r"agent started: 1 asset\(s\): line; status page http://127\.0\.0\.1:\d+/", started[0])
    windows = [line for line in lines if line.startswith("window ")]
    assert len(windows) == 2  # one line per window closed, whatever the number of components
    # each line's counts are those of the files written (how many cells are empty depends on how fast the
    # sources connected on this machine, 30 s of clock before the first window's end)
    store = FileStore(tmp_path / "store")
    for line, start in zip(windows, ("20251231235500", "20260101000000"), strict=True):
        m = re.fullmatch(r"window \(\S+, \S+\] written: (\d) file\(s\), 5 row\(s\), (\d+) of (\d+) cell\(s\) empty",
                         line)
        assert m, line
        texts = [store.get(key).decode() for key in store.list() if start in key]
        rows = [row.split(",")[1:] for text in texts for row in text.splitlines()[1:]]
        assert int(m.group(1)) == len(texts)
        assert int(m.group(2)) == sum(cell == "" for row in rows for cell in row)
        assert int(m.group(3)) == sum(len(row) for row in rows)
    assert windows[1].startswith("window (2026-01-01T00:00:00Z, 2026-01-01T00:05:00Z] written: ")
