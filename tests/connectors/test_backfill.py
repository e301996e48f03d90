"""History backfill against a real asyncua server that historizes its variables (tests/connectors/history_peer.py).

The drills run the agent on a clock at speed 1 whose timeline the server shares (the server stamps every value
with the agent's clock time, as a PLC synchronised with the gateway would), a window end a few seconds ahead,
PT1S rows, and the aggregate "last": the first live sample of a session is stamped at the session's start
(README, rule 2a), so with "mean" the cell after a reconnect would average two samples where the history has
one; "last" takes the latest, which is what the history holds at that grid point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from asyncua import Client, ua

from agent.pipeline.store import FileStore
from connectors.opcua.history_read import Done, Page, Span, read_raw
from tests.connectors.history_peer import HistoryPeer
from tests.helpers import parse_csv
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
FREQ = 300


def value_of(name: str, k: int, ts: float) -> float:
    """A distinct value per sensor and second (so a value from the wrong second is seen)."""
    return {"a": 1000.0, "b": 2000.0, "c": 3000.0}[name] + k % 100_000 + 0.25


def asset_toml(tmp_path: Path, endpoint: str, store: Path, sensors: str = "abc") -> Path:
    path = tmp_path / "asset.toml"
    nodes = ", ".join(f'{{ sensor = "{n}", node_id = "{HistoryPeer.node_id(n)}" }}' for n in sensors)
    path.write_text(textwrap.dedent(f"""\
        asset = "hist"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 2
        sampling_rate = "PT1S"
        input = "file://{store}/"
        [components]
        unit = {json.dumps(list(sensors))}
        [window]
        agg = "last"
        fill_limit = 2
        grace_secs = 1
        [spool]
        fsync_interval_ms = 200
        [[sources]]
        name = "plc"
        kind = "opcua"
        endpoint = "{endpoint}"
        publishing_interval_ms = 100
        sampling_interval_ms = 50
        queue_size = 20
        backfill = {{ max_age = "PT1H", values_per_request = 4 }}
        nodes = [{nodes}]
        """))
    return path


class Timeline:
    """The agent's clock (speed 1, anchored now) with a window end ``lead`` seconds ahead."""

    def __init__(self, state: Path, lead: float) -> None:
        now = time.time()
        self.end = (int(now + lead) // FREQ + 1) * FREQ    # the window end B, on the agent's timeline
        self.start = self.end - int(lead) - 1               # --clock-start S (whole seconds)
        self.anchor = now
        state.mkdir(parents=True, exist_ok=True)
        (state / "clock.json").write_text(json.dumps({"start": float(self.start), "speed": 1.0,
                                                      "anchor": self.anchor}))

    def now(self) -> float:
        return self.start + (time.time() - self.anchor)

    def iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start))


def start_agent(path: Path, state: Path, timeline: Timeline) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(state),
         "--clock-start", timeline.iso(), "--speed", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


async def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return False


def spool_has(state: Path, sensor: str, after: float) -> bool:
    from agent.pipeline.spool import Spool

    spool = Spool(state / "spool", FREQ)
    for end in spool.windows():
        cols = spool.read(end)
        if any(s == sensor and t > after for s, t in zip(cols.sensors(), cols.ts.tolist(), strict=True)):
            return True
    return False


def window_cells(store: FileStore, end: int) -> dict[str, dict[int, str]]:
    """sensor → grid point (Unix s) → cell text of the window file ending at ``end``."""
    name = "unit_" + time.strftime("%Y%m%d%H%M%S", time.gmtime(end - FREQ)) + ".csv"
    header, rows = parse_csv(store.get(name))
    out: dict[str, dict[int, str]] = {s: {} for s in header[1:]}
    for row in rows:
        t = round(time.mktime(time.strptime(row[0][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone)
        for sensor, cell in zip(header[1:], row[1:], strict=True):
            out[sensor][t] = cell
    return out


def store_has(store: FileStore, end: int) -> bool:
    name = "unit_" + time.strftime("%Y%m%d%H%M%S", time.gmtime(end - FREQ)) + ".csv"
    return name in set(store.list())


async def test_kill_9_gap_is_filled_from_the_servers_history(tmp_path):
    """kill -9 the agent while the server keeps writing, restart: the window covering the gap equals the server's
    history cell by cell; the node without history stays empty in the gap, with one log line."""
    state, store_dir = tmp_path / "state", tmp_path / "store"
    timeline = Timeline(state, lead=20)
    peer = await HistoryPeer(["a", "b"], plain=["c"]).start()
    writer = asyncio.create_task(peer.run_writer(timeline.now, 1.0, value_of))
    path = asset_toml(tmp_path, peer.endpoint, store_dir)
    store = FileStore(store_dir)
    first = second = None
    try:
        first = start_agent(path, state, timeline)
        # the first run holds live readings durably (a few seconds of them), then dies without a word
        assert await wait_until(lambda: any(spool_has(state, s, 0) for s in "ab"), 20, 0.2), "no live reading"
        first_live = timeline.now()
        assert await wait_until(lambda: spool_has(state, "a", first_live + 1.5), 10, 0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = timeline.now()
        await asyncio.sleep(5.0)   # the gap: the server keeps writing, nobody reads
        second = start_agent(path, state, timeline)
        assert await wait_until(lambda: store_has(store, timeline.end), timeline.end + 25 - timeline.now(), 0.2), \
            "window not written"
        # backfill done: no pending gap left (then the window's file is final)
        progress = state / "backfill" / "plc.json"
        assert await wait_until(lambda: progress.exists() and not json.loads(progress.read_text())["gaps"], 15)
        await asyncio.sleep(1.0)   # the last upload round
    finally:
        writer.cancel()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # the files are checked in the store; nothing else to wait for
        errs = [proc.communicate(timeout=20)[1] if proc is not None else "" for proc in (first, second)]
        await peer.stop()
    cells = window_cells(store, timeline.end)
    history = {n: dict((round(t), v) for t, v in peer.history(n)) for n in "ab"}
    # compared from the second after the first run's first live reading to the window end
    grid = [t for t in sorted(cells["a"]) if t > math.ceil(first_live) + 1]
    gap = [t for t in grid if killed + 1 < t < killed + 5]
    assert len(grid) >= 6 and len(gap) >= 2, ("the machine is too slow for this timeline", grid, killed)
    for sensor in "ab":
        for t in grid:
            assert cells[sensor][t] != "", f"{sensor} empty at {t} (gap {killed})"
            assert float(cells[sensor][t]) == history[sensor][t], (sensor, t)
    # the node without history: empty in the gap beyond the fill limit (2 steps), never invented
    assert any(cells["c"][t] == "" for t in gap), [cells["c"][t] for t in gap]
    log = errs[1]
    assert log.count("keeps no history") == 1 and "sensor c" in log, log[-3000:]
    # `l4e-agent status` shows it from the state folder (the command's text, without the API section)
    from agent.config import load
    from agent.lookout.status import status

    line = next(x for x in status(load(path), state, None).splitlines() if x.startswith("backfill plc: "))
    filled = int(line.split()[2])
    assert filled >= 2 * 4 and "0 gap(s) pending" in line and "no history: c" in line, line


# ---- the paged HistoryRead loop (connectors.opcua.history_read) against the same server, in-process


async def _read_all(client, spans, per_node, per_request):
    got, ends = {}, []
    async for item in read_raw(client, spans, per_node, per_request, 1e9):
        if isinstance(item, Page):
            got.setdefault(item.key, []).extend((dv.SourceTimestamp.timestamp(), dv.Value.Value) for dv in item.values)
        else:
            ends.append(item)
    return got, ends


async def test_history_read_pages_inside_the_open_gap_once_and_releases_what_it_abandons():
    """Continuation points (server pages of 7) and pages truncated without one (asyncua's server does that when
    NumValuesPerNode is reached) both deliver every value strictly inside (start, end), once, in order; a node
    without history ends with nothing. Stopping in the middle (shutdown, reconnect, the caller giving up) sends
    ReleaseContinuationPoints=true with the points the server still holds for us."""
    peer = await HistoryPeer(["a", "b"], plain=["c"], max_response=7).start()
    t0 = 1_800_000_000.0
    for name in "ab":
        await peer.fill(name, [(t0 + i, float(i)) for i in range(60)])
    manager = peer.server.iserver.history_manager
    seen = []
    real = manager.read_history

    async def recording(params):  # the real server's history service, watched
        seen.append((params.ReleaseContinuationPoints, [bool(n.ContinuationPoint) for n in params.NodesToRead]))
        return await real(params)

    manager.read_history = recording
    client = Client(peer.endpoint)
    await client.connect()
    try:
        ids = {n: ua.NodeId.from_string(HistoryPeer.node_id(n)) for n in "abc"}
        for per_node in (5, 20):  # 5: truncated pages, no continuation point; 20: continuation points
            spans = [Span("a", ids["a"], t0 + 2, t0 + 40), Span("b", ids["b"], t0 + 2.5, t0 + 50),
                     Span("c", ids["c"], t0, t0 + 50)]
            got, ends = await _read_all(client, spans, per_node, 2)
            assert got["a"] == [(t0 + i, float(i)) for i in range(3, 40)], per_node
            assert got["b"] == [(t0 + i, float(i)) for i in range(3, 50)], per_node
            assert "c" not in got
            assert sorted(e.key for e in ends if isinstance(e, Done)) == ["a", "b", "c"]
        assert not any(release for release, _ in seen)
        pages = read_raw(client, [Span("a", ids["a"], t0, t0 + 100)], 1000, 10, 1e9)
        first = await anext(pages)
        assert isinstance(first, Page) and len(first.values) == 6
        await pages.aclose()  # abandoned with a continuation point open
        assert seen[-1] == (True, [True]), seen[-3:]
    finally:
        await client.disconnect()
        await peer.stop()


async def test_link_drop_rewrites_the_window_written_during_it(tmp_path, caplog):
    """The link to the server drops (silently: no FIN, no RST) while the agent keeps running; the window covering
    the drop is written on time with what the agent had (the value stops holding, then the fill limit); after
    the link is back the gap is read from the history and that window is rewritten under the same key, once,
    equal to the server's history cell by cell."""
    import logging

    from agent.config import load
    from agent.core.clock import ScaledClock
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner
    from agent.runtime.metrics import render
    from agent.runtime.status_data import asset_status, collect_status
    from agent.runtime.status_page import render_page
    from agent.runtime.supervision import Supervision
    from tests.connectors.opcua_peer import CuttableLink

    caplog.set_level(logging.INFO)
    state, store_dir = tmp_path / "state", tmp_path / "store"
    timeline = Timeline(state, lead=12)
    clock = ScaledClock(timeline.start, 1.0, anchor=timeline.anchor)
    peer = await HistoryPeer(["a", "b"], plain=["c"]).start()
    link = await CuttableLink(peer.port).start()
    writer = asyncio.create_task(peer.run_writer(timeline.now, 1.0, value_of))
    path = asset_toml(tmp_path, link.endpoint, store_dir)
    text = path.read_text().replace('queue_size = 20\n', 'queue_size = 20\ntimeout_secs = 1\n'
                                    'backoff_initial_secs = 0.2\nbackoff_max_secs = 0.5\n')
    path.write_text(text)
    store = FileStore(store_dir)
    runner = AssetRunner(load(path), path, state, clock)
    end = timeline.end

    async def drop_link() -> tuple[float, float]:
        conn = runner.connectors[0]
        assert await wait_until(lambda: conn.stats.readings["a"] >= 1, 15, 0.02)
        first_live = clock.now()
        assert await wait_until(lambda: conn.stats.readings["a"] >= 3, 15, 0.02)
        cut = clock.now()
        link.cut()
        assert await wait_until(lambda: store_has(store, end), end + 15 - clock.now())  # written during the drop
        await asyncio.sleep(1.0)
        link.mend()
        assert await wait_until(lambda: runner.keeper.rewritten >= 1, 15), "the window was not rewritten"
        return first_live, cut

    try:
        agent = asyncio.create_task(Agent([runner], clock).run(until=end + 60))
        first_live, cut = await asyncio.wait_for(drop_link(), 45)
        await wait_until(lambda: not runner.outbox.entries(), 5)  # the rewritten file uploaded
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
    finally:
        writer.cancel()
        await link.stop()
    history = {n: dict((round(t), v) for t, v in peer.history(n)) for n in "ab"}
    await peer.stop()
    cells = window_cells(store, end)
    grid = [t for t in sorted(cells["a"]) if t > first_live + 1]
    assert len([t for t in grid if t > cut + 3]) >= 3, (grid, cut)  # cells the drop had left empty
    for sensor in "ab":
        for t in grid:
            assert cells[sensor][t] != "" and float(cells[sensor][t]) == history[sensor][t], (sensor, t, cut)
    rewritten = [r.message for r in caplog.records if "rewritten with backfilled readings" in r.getMessage()]
    assert len(rewritten) == 1 and runner.keeper.rewritten == 1, rewritten
    assert sum("keeps no history" in r.getMessage() for r in caplog.records) == 1
    # visible: the status data (page and /api/status) and /metrics
    source = asset_status(runner, clock.now())["sources"][0]["backfill"]
    assert source["values_total"] >= 2 * 3 and source["pending_gaps"] == 0 and source["no_history"] == ["c"]
    assert source["out_of_reach_gaps"] == 1  # c's gap: no history
    assert asset_status(runner, clock.now())["windows"]["rewritten_total"] == 1
    page = render_page(collect_status([runner], clock.now()))
    assert f'backfill plc: {source["values_total"]} values filled' in page and "no history: c" in page
    assert '<span class="rewritten-total">1</span> rewritten' in page
    text = render(Supervision([runner]).registry)
    assert f'l4e_backfill_values_total{{source="plc"}} {float(source["values_total"])}' in text
    assert 'l4e_backfill_gaps_pending{source="plc"} 0.0' in text
    assert 'l4e_backfill_out_of_reach_total{source="plc"} 1.0' in text
    assert 'l4e_windows_rewritten_total{asset="hist"} 1.0' in text


class _DiedAfterWrite(Exception):
    """The process dies here: the readings are durable, the progress file does not know yet."""


async def test_backfill_cut_between_write_and_progress_resumes_without_writing_twice(tmp_path):
    """kill -9 between the spool write and the progress file (the narrowest point of a backfill; a process
    cannot be killed there on demand, so the death is raised there): the next run asks the spool what it holds,
    resumes after it, and every history value inside the gap is in the spool exactly once."""
    from agent.config import load
    from agent.core.clock import SystemClock
    from agent.runtime.asset import AssetRunner

    peer = await HistoryPeer(["a", "b"], plain=["c"]).start()
    t0 = float(int(time.time()) - 200)
    for name in "ab":
        await peer.fill(name, [(t0 + i, value_of(name, i, t0 + i)) for i in range(120)])
    path = asset_toml(tmp_path, peer.endpoint, tmp_path / "store")
    state = tmp_path / "state"
    client = Client(peer.endpoint)
    await client.connect()
    ids = {n: ua.NodeId.from_string(HistoryPeer.node_id(n)) for n in "ab"}
    try:
        writes: list[int] = []

        def dying(real_write):
            def write_then_die(readings):
                real_write(readings)
                writes.append(len(readings))
                if len(writes) == 2:
                    raise _DiedAfterWrite
            return write_then_die

        for attempt in range(2):
            runner = AssetRunner(load(path), path, state, SystemClock())  # a new process: state from disk only
            backfill = runner.connectors[0].backfill
            backfill.commit_every = 20
            if attempt == 0:
                for name in "ab":
                    backfill.book.add(name, t0 + 10, t0 + 100)
                backfill.port.write = dying(backfill.port.write)
                with contextlib.suppress(_DiedAfterWrite):
                    await backfill._fill(client, ids)
                assert len(writes) == 2
                assert json.loads((state / "backfill" / "plc.json").read_text())["writing"], "not cut mid-way"
            else:
                await backfill._fill(client, ids)
                assert not backfill.book.gaps
            runner.spool.close()
        from agent.pipeline.spool import Spool

        spool = Spool(state / "spool", FREQ)
        cols = [spool.read(end) for end in spool.windows()]
        held = {n: sorted(t for c in cols for s, t in zip(c.sensors(), c.ts.tolist(), strict=True) if s == n)
                for n in "ab"}
        for name in "ab":
            assert held[name] == [t0 + i for i in range(11, 100)], name  # all of (start, end), each once
    finally:
        await client.disconnect()
        await peer.stop()


def test_gap_runs_from_the_last_reading_held_to_the_first_live_one_cut_at_max_age(tmp_path):
    """At the first session the gap of a node starts at the last reading the agent holds durably (here: the
    progress file of windows already written, as a run killed long ago leaves it) and ends at the first live
    reading; what is older than max_age (PT1H) is cut and counted out of reach; a node never read has no gap."""
    from agent.config import load
    from agent.core.clock import SystemClock
    from agent.core.model import Reading
    from agent.runtime.asset import AssetRunner

    now = float(int(time.time()))
    state = tmp_path / "state"
    state.mkdir()
    (state / "progress.json").write_text(json.dumps({"last_written": int(now - 7200) // FREQ * FREQ, "carry": {},
                                                      "last_ts": {"a": now - 7200, "b": now - 100}}))
    path = asset_toml(tmp_path, "opc.tcp://127.0.0.1:4840/", tmp_path / "store")
    runner = AssetRunner(load(path), path, state, SystemClock())
    backfill = runner.connectors[0].backfill
    backfill.session_up(["a", "b", "c"], first=True)
    backfill.observe([Reading("a", 1.0, now), Reading("b", 2.0, now + 0.5), Reading("c", 3.0, now)])
    gaps = backfill.book.gaps
    assert set(gaps) == {"a", "b"}
    start, end, done = gaps["a"][0]
    assert abs(start - (now - 3600)) < 5 and end == now and done == start
    assert gaps["b"] == [[now - 100, now + 0.5, now - 100]]
    assert backfill.stats.out_of_reach_gaps == 1 and abs(backfill.stats.out_of_reach_secs - 3600) < 5
    assert backfill.may_reach(connected=True)  # windows written now are kept: the gaps are pending
    runner.spool.close()


async def test_server_restart_in_the_middle_of_a_backfill(tmp_path):
    """The server restarts while an hour-long gap is being read (paged, rate limited): the session is rebuilt, the
    backfill resumes from its durable progress, and every history value of the gap is held exactly once (in the
    spool or, for windows already written, beside their kept raw readings)."""
    from agent.config import load
    from agent.core.clock import SystemClock
    from agent.pipeline.columns import read_file
    from agent.pipeline.spool import Spool
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner

    now = float(int(time.time()))
    start = now - 3000
    peer = await HistoryPeer(["a", "b"]).start()
    for name in "ab":
        await peer.fill(name, [(start + i, value_of(name, i, start + i)) for i in range(3000)])
    state = tmp_path / "state"
    state.mkdir()
    (state / "progress.json").write_text(json.dumps({"last_written": int(start) // FREQ * FREQ, "carry": {},
                                                      "last_ts": {"a": start, "b": start}}))
    path = asset_toml(tmp_path, peer.endpoint, tmp_path / "store", sensors="ab")
    path.write_text(path.read_text()
                    .replace('nodes = [', 'backoff_initial_secs = 0.2\nbackoff_max_secs = 0.5\nnodes = [')
                    .replace("values_per_request = 4", "values_per_request = 100, values_per_second = 1500"))
    clock = SystemClock()
    runner = AssetRunner(load(path), path, state, clock)
    backfill = runner.connectors[0].backfill
    backfill.commit_every = 200
    agent = asyncio.create_task(Agent([runner], clock).run(until=now + 120))
    try:
        assert await wait_until(lambda: backfill.stats.values >= 400, 20, 0.02), backfill.stats
        assert backfill.stats.values < 5000, "too late: the backfill is almost done"
        await peer.restart()
        assert await wait_until(lambda: backfill.book is not None and not backfill.book.gaps
                                and backfill.stats.values >= 5998, 30), (backfill.stats, backfill.book.gaps)
        assert runner.connectors[0].stats.reconnects >= 1
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
        await peer.stop()
    held: dict[str, list[float]] = {"a": [], "b": []}
    spool = Spool(state / "spool", FREQ)
    parts = [spool.read(end) for end in spool.windows()]
    parts += [read_file(p)[0] for p in sorted((state / "kept").glob("*/*.l4es"))]
    for cols in parts:
        for sensor, ts, value in zip(cols.sensors(), cols.ts.tolist(), cols.value.tolist(), strict=True):
            if sensor in held and ts < now and value == value:
                held[sensor].append(ts)
    for name in "ab":
        assert sorted(held[name]) == [start + i for i in range(1, 3000)], name


async def test_node_opcua_historian_pages_and_a_node_without_history(tmp_path):
    """node-opcua's historian (installHistoricalDataNode) answers with real continuation points: the loop reads
    every value strictly inside the gap once; its nodes say HistoryRead in AccessLevel, the plain node does not,
    and reading the plain node's history ends as NoHistory (its gap stays empty)."""
    import shutil

    from connectors.opcua.history_read import NoHistory
    from tests.connectors.node_opcua_peer import PEER_DIR

    node = shutil.which("node")
    assert node and (PEER_DIR / "node_modules" / "node-opcua-server").is_dir(), "run `make system-deps`"
    port = free_port()
    t0 = 1_800_000_000.0
    proc = await asyncio.create_subprocess_exec(
        node, str(PEER_DIR / "history_server.js"), str(port), str(t0), "300", cwd=PEER_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    client = Client(f"opc.tcp://127.0.0.1:{port}/l4e")
    try:
        async def ready() -> None:  # node-opcua may print a warning (its Node version) before READY
            while not (line := await proc.stdout.readline()).startswith(b"READY"):
                assert line, "history_server.js exited"

        await asyncio.wait_for(ready(), 60)
        await client.connect()
        ids = {n: ua.NodeId.from_string(f"ns=1;s={n}") for n in ("HistA", "HistB", "Plain")}
        access = await client.uaclient.read_attributes(list(ids.values()), ua.AttributeIds.AccessLevel)
        assert [bool(a.Value.Value & ua.AccessLevel.HistoryRead.mask) for a in access] == [True, True, False]
        spans = [Span("a", ids["HistA"], t0 + 10, t0 + 250), Span("b", ids["HistB"], t0 + 10.5, t0 + 299.5),
                 Span("p", ids["Plain"], t0, t0 + 300)]
        got, ends = await _read_all(client, spans, 7, 3)
        assert got["a"] == [(t0 + i, float(i)) for i in range(11, 250)]
        assert got["b"] == [(t0 + i, float(i)) for i in range(11, 300)]
        assert [e.key for e in ends if isinstance(e, NoHistory)] == ["p"] and "p" not in got
        # abandoned in the middle: the continuation point is released (the server answers the release)
        pages = read_raw(client, [Span("a", ids["HistA"], t0, t0 + 300)], 7, 1, 1e9)
        assert isinstance(await anext(pages), Page)
        await pages.aclose()
        got, _ = await _read_all(client, [Span("a", ids["HistA"], t0 + 290, t0 + 300)], 7, 1)
        assert got["a"] == [(t0 + i, float(i)) for i in range(291, 300)]  # the session is still fine
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
        proc.kill()
        await proc.wait()
