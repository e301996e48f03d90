"""End to end with an OPC-UA source: values written on a real asyncua server land in the right window files."""

from __future__ import annotations

import asyncio
import csv
import io
import textwrap

from asyncua import ua

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.connectors.opcua_peer import OpcUaPeer
from tests.helpers import asset_header

T0 = parse_instant("2026-01-01T00:00:00Z")
SPEED = 60.0


async def test_opcua_values_land_in_their_windows(tmp_path):
    peer = await OpcUaPeer().start()
    clock = ScaledClock(T0 - 30, SPEED)

    async def plant() -> None:
        """The PLC: Flow holds the clock time (s after T0) at which it was written, every 2 s of clock."""
        while True:
            await peer.nodes["flow"].write_value(ua.DataValue(ua.Variant(clock.now() - T0, ua.VariantType.Double)))
            await clock.sleep(2.0)

    path = tmp_path / "asset.toml"
    store_dir = tmp_path / "store"
    path.write_text(asset_header("line", f"file://{store_dir}/", 'pump = ["flow"]', delay_offset_minutes=1)
                    + textwrap.dedent(f"""\
        [window]
        fill_limit = 0
        grace_secs = 5
        [[sources]]
        name = "plc"
        kind = "opcua"
        endpoint = "{peer.endpoint}"
        publishing_interval_ms = 100
        sampling_interval_ms = 50
        queue_size = 10
        nodes = [ {{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }} ]
        """))
    writer = asyncio.create_task(plant())
    try:
        runner = AssetRunner(load(path), path, tmp_path / "state", clock)
        await asyncio.wait_for(Agent([runner], clock).run(until=T0 + 15 * 60 + 10), 60)
    finally:
        writer.cancel()
        await peer.stop()
    store = FileStore(store_dir)
    keys = list(store.list())
    # the clock starts 30 s before T0: the window (23:55, 00:00] has its last rows too
    assert keys == ["pump_20251231235500.csv", "pump_20260101000000.csv", "pump_20260101000500.csv",
                    "pump_20260101001000.csv"]
    checked = 0
    for key in keys:
        rows = list(csv.reader(io.StringIO(store.get(key).decode())))
        assert rows[0] == ["Timestamp", "flow"]
        for stamp, value in rows[1:]:
            g = parse_instant(stamp) - T0
            if g <= -30:
                assert value == ""  # before the agent started
                continue
            assert value != "", (key, stamp)  # a value every 2 s of clock: no empty minute
            # the mean of values written within (g − 60, g]; the reading is stamped when received, so allow
            # the publishing delay (100 ms wall = 6 s of clock) on top
            assert g - 60 - 8 <= float(value) <= g, (key, stamp, value)
            checked += 1
    assert checked == 16
