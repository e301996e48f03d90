"""A plant that reports by exception, served by a third-party OPC-UA server (node-opcua): rule 2a end to end.

Constant tags, a tag hidden by an absolute deadband and one hidden by a percent deadband (EURange) send one
notification each and then nothing: their windows must still be full. When the server dies, values hold up to
``fill_limit`` steps after the last answer and then stay empty until it is back; a Bad item behaves the same.
Liveness is the session's: a steady plant is healthy (/healthz, no source_silent alarm, watchdog pings).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import textwrap
import time
import urllib.error
from pathlib import Path

from agent.config import load
from agent.core.clock import ScaledClock, iso_utc, parse_instant
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.conftest import free_port
from tests.connectors.node_opcua_peer import NodeOpcUaPeer
from tests.helpers import journal_alarms, start_agent
from tests.integration.test_service_ops import NotifySocket, get, metric

T0 = parse_instant("2026-01-01T00:00:00Z")
SPEED = 60.0
SENSORS = ["setpoint", "valve", "drift", "absdb", "pctdb"]


def asset(path: Path, endpoint: str, store_dir: Path, extra: str = "", sensors=SENSORS) -> Path:
    source = textwrap.dedent(f"""\
        kind = "opcua"
        endpoint = "{endpoint}"
        publishing_interval_ms = 200
        sampling_interval_ms = 100
        backoff_initial_secs = 0.2
        backoff_max_secs = 0.5
        timeout_secs = 2
        """)
    nodes = {"setpoint": "Setpoint", "valve": "Valve", "drift": "Drift", "absdb": "AbsDb", "pctdb": "PctDb"}
    plc = [s for s in sensors if s in ("setpoint", "valve", "drift")]
    plc_nodes = ", ".join(f'{{ sensor = "{s}", node_id = "ns=1;s={nodes[s]}" }}' for s in plc)
    text = textwrap.dedent(f"""\
        asset = "steady"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 2
        sampling_rate = "PT1M"
        input = "file://{store_dir}/"
        [components]
        plant = {sensors!r}
        [window]
        fill_limit = 2
        grace_secs = 5
        """).replace("'", '"') + extra
    text += "[[sources]]\nname = \"plc\"\n" + source + f"nodes = [ {plc_nodes} ]\n"
    if "absdb" in sensors:
        text += ("[[sources]]\nname = \"abs\"\n" + source + 'deadband = { type = "absolute", value = 0.5 }\n'
                 'nodes = [ { sensor = "absdb", node_id = "ns=1;s=AbsDb" } ]\n')
    if "pctdb" in sensors:
        text += ("[[sources]]\nname = \"pct\"\n" + source + 'deadband = { type = "percent", value = 2.0 }\n'
                 'nodes = [ { sensor = "pctdb", node_id = "ns=1;s=PctDb" } ]\n')
    path.write_text(text)
    return path


def rows_by_time(store_dir: Path) -> dict[float, dict[str, str]]:
    store = FileStore(store_dir)
    out = {}
    for key in store.list():
        rows = list(csv.reader(io.StringIO(store.get(key).decode())))
        header = rows[0]
        for row in rows[1:]:
            out[parse_instant(row[0])] = dict(zip(header[1:], row[1:], strict=True))
    return out


async def wait_until(predicate, clock, what: str, timeout: float = 30.0) -> float:
    """Poll ``predicate`` (wall-clock bounded); returns the agent clock time at which it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return clock.now()


def grid_after(ts: float) -> float:
    """The first grid point (PT1M) at or after ``ts``."""
    return -(-ts // 60) * 60


async def test_steady_tags_fill_every_row_and_an_outage_follows_the_fill_rule(tmp_path):
    peer = await NodeOpcUaPeer().start()
    store_dir = tmp_path / "store"
    path = asset(tmp_path / "asset.toml", peer.endpoint, store_dir)
    clock = ScaledClock(T0 - 150, SPEED)  # 2.5 s of wall time to connect before T0
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)
    plc = runner.connectors[0]
    service = Agent([runner], clock)
    agent = asyncio.create_task(service.run())
    try:
        await clock.sleep_until(T0 + 15 * 60 + 30)
        await peer.kill()  # SIGKILL: the socket drops with no goodbye
        await wait_until(lambda: not any(c.stats.connected for c in runner.connectors), clock, "loss seen")
        # the values stop holding at the last instant each session answered (the markers' time)
        lost_at = {c.name: c.stats.last_alive_ts for c in runner.connectors}
        await clock.sleep(5 * 60)
        reconnects = {c.name: c.stats.reconnects for c in runner.connectors}
        await peer.start()
        up_at: dict[str, float] = {}  # when each session came up again (the connector's own record)
        # the initial notification of each new session vouches for the values again: when it arrived (it can
        # arrive before this poll sees the session up, so the session's start is the connector's, not ours)
        vouched_at: dict[str, float] = {}

        def all_vouched() -> bool:
            for c in runner.connectors:
                if c.stats.reconnects > reconnects[c.name]:
                    up_at.setdefault(c.name, c.stats.session_up_ts)
                    ts = c.stats.last_reading_ts
                    if ts is not None and ts >= up_at[c.name]:
                        vouched_at.setdefault(c.name, ts)
            return len(vouched_at) == len(runner.connectors)

        await wait_until(all_vouched, clock, "reconnect and initial notifications")
        await clock.sleep(5 * 60)
        bad_from = clock.now()
        await peer.command(bad="Setpoint")
        bad_seen = await wait_until(lambda: "setpoint" in plc.stats.bad_now, clock, "Bad seen")
        await clock.sleep(5 * 60)
        good_from = clock.now()
        await peer.command(good="Setpoint")
        good_seen = await wait_until(lambda: "setpoint" not in plc.stats.bad_now, clock, "Good seen")
        await clock.sleep_until((good_seen // 300 + 2) * 300 + 10)  # a full window after the item is good
        until = clock.now()
        service.request_stop()
        assert await asyncio.wait_for(agent, 90) == 0
    finally:
        if not agent.done():
            agent.cancel()
        await peer.stop()

    rows = rows_by_time(store_dir)
    # three steady windows: every row has every sensor, the deadband-hidden tags included
    steady = [T0 + 60 * k for k in range(1, 16)]
    for t in steady:
        assert all(rows[t][s] != "" for s in SENSORS), (iso_utc(t), rows[t])
    assert {rows[t]["setpoint"] for t in steady} == {"42.5"}
    assert {rows[t]["valve"] for t in steady} == {"1.0"}
    assert len({rows[t]["absdb"] for t in steady}) == 1  # one notification: the deadband hid every wobble
    assert len({rows[t]["pctdb"] for t in steady}) == 1
    assert len({rows[t]["drift"] for t in steady}) == 15  # the drifting tag moves every minute

    # the outage: held up to the last answer, carried fill_limit (2) steps, then empty until the session is back
    source_of = {"setpoint": "plc", "valve": "plc", "drift": "plc", "absdb": "abs", "pctdb": "pct"}
    for s in SENSORS:
        last_held = grid_after(lost_at[source_of[s]]) - 60
        assert all(rows[t][s] != "" for t in (last_held, last_held + 60, last_held + 120)), s
        # the drifting tag may also have a reading in the interval of the loss: an observation one step later
        first_empty = last_held + (240 if s == "drift" else 180)
        up = up_at[source_of[s]]
        gap = [t for t in rows if first_empty <= t < up]
        assert len(gap) >= 2 and all(rows[t][s] == "" for t in gap), (s, [rows[t][s] for t in gap])
        # back: the initial notification vouches for the unchanged value again, and it holds
        after = [t for t in rows if grid_after(vouched_at[source_of[s]]) <= t <= bad_from]
        assert len(after) >= 4 and all(rows[t][s] != "" for t in after), (s, [rows[t][s] for t in after])
    assert {rows[t]["setpoint"] for t in rows if grid_after(vouched_at["plc"]) <= t <= bad_from} == {"42.5"}

    # an item turning Bad ends its value's validity: fill_limit steps, then empty until it is good again
    assert rows[grid_after(bad_from) - 60]["setpoint"] == "42.5"
    bad_gap = [t for t in rows if grid_after(bad_seen) + 120 < t < good_from]
    assert len(bad_gap) >= 2 and all(rows[t]["setpoint"] == "" for t in bad_gap)
    assert all(rows[t]["valve"] == "1.0" for t in bad_gap)  # the other items of the session are not affected
    tail = [t for t in rows if grid_after(good_seen) <= t <= until - 60]
    assert len(tail) >= 5 and all(rows[t]["setpoint"] == "42.5" for t in tail)


def test_a_steady_plant_with_a_healthy_session_is_healthy(tmp_path):
    """Constant tags only, for three windows: /healthz stays 200, no source_silent alarm, watchdog pings go on."""
    peer_loop = asyncio.new_event_loop()
    peer = peer_loop.run_until_complete(NodeOpcUaPeer().start())
    store_dir = tmp_path / "store"
    alarms = tmp_path / "alarms.jsonl"
    port = free_port()
    extra = textwrap.dedent(f"""\
        [metrics]
        enabled = true
        port = {port}
        [health]
        source_silent_secs = 150
        """) + journal_alarms(alarms, ("silent", "source_silent"), hook="file")
    path = asset(tmp_path / "asset.toml", peer.endpoint, store_dir, extra, sensors=["setpoint", "valve", "absdb"])
    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    proc = start_agent(path, tmp_path / "state", clock_start=iso_utc(T0 - 150), speed=SPEED,
                       until=iso_utc(T0 + 15 * 60 + 10), env=env)
    codes = []
    try:
        deadline = time.monotonic() + 60
        while not notify.seen("READY=1"):
            assert time.monotonic() < deadline and proc.poll() is None, "no READY=1"
        base = f"http://127.0.0.1:{port}"
        # source_silent_secs = 150 is 2.5 s of wall time at 60x: room for the first connect on a loaded machine
        # (60 s, one wall second, was not); 4 s here is 4 min of clock, well past it with no new value from any tag
        time.sleep(4)
        pings = []
        while proc.poll() is None:
            try:
                code, body = get(base + "/healthz")
            except urllib.error.URLError:  # the run reached --until and the listener closed
                break
            codes.append((code, body))
            notify.drain()
            pings.append(sum("WATCHDOG=1" in m for _, m in notify.messages))
            time.sleep(0.5)
            if len(codes) == 4:
                status, text = get(base + "/metrics")
                assert status == 200 and metric(text, "l4e_source_alive") == 2.0  # plc and abs, both alive
    finally:
        try:  # the run ends by itself at --until
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
        peer_loop.run_until_complete(peer.stop())
        peer_loop.close()
        notify.sock.close()
    assert proc.returncode == 0, err[-2000:]
    assert len(codes) >= 10
    assert all(code == 200 for code, _ in codes), codes
    assert pings[-1] > pings[0] + 5  # pings kept coming while nothing changed
    assert not alarms.exists() or alarms.read_text() == ""
    assert "has not answered" not in err and "source_silent" not in err
    rows = rows_by_time(store_dir)
    steady = [T0 + 60 * k for k in range(1, 16)]
    assert all(rows[t]["setpoint"] == "42.5" and rows[t]["valve"] == "1.0" and rows[t]["absdb"] for t in steady)
