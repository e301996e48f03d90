"""The status page of a running agent, in a real browser, fed by real OPC-UA and Modbus peers.

One agent (in this process, on a 60× clock) reads an asyncua server and a pymodbus TCP server, and a third
source points at a port where nobody listens. A results object in the output prefix (listing mode) makes the
anomaly rule raise; the dead source raises source_silent. Headless Chromium loads ``GET /`` over the DevTools
protocol; the test checks what a person sees (sensor names and values equal to the peers', the sources'
states, the windows written, the open alarms, the execution and its score) and that the console stayed
clean. ``GET /api/status`` is checked against /metrics and the state directory, read before and after it.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.commands.run import make_runner
from agent.config import load
from agent.core.clock import ScaledClock, iso_utc, parse_instant
from agent.runtime.agent import Agent
from tests.conftest import free_port
from tests.connectors.modbus_peer import sim_device, start_tcp
from tests.connectors.opcua_peer import OpcUaPeer
from tests.helpers import http_get, journal_alarms, modbus_tcp_source
from tests.integration import browser

T0 = parse_instant("2026-01-01T00:00:00Z")
SPEED = 60.0
OPCUA_VALUES = {"flow": 1.5, "count": 7.0, "setpt": 10.0}
PRESSURE_RAW, TEMP_RAW = 1234, 250  # holding 0 (uint16, scale 0.01), input 0 (int16, scale 0.1)
MODBUS_VALUES = {"pressure": PRESSURE_RAW * 0.01, "temp": TEMP_RAW * 0.1}
SECRETS = ("SECRET-HOOK-HEADER", "SECRET-QUERY")


class Rows(HTMLParser):
    """Table rows (attributes + cell texts) and the text of elements carrying a class, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, list[str]]] = []
        self.by_class: dict[str, list[str]] = {}
        self._row: tuple[dict, list[str]] | None = None
        self._cell: list[str] | None = None
        self._open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = (attrs, [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        if tag == "span" and attrs.get("class"):
            self._open.append((attrs["class"], []))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "span" and self._open:
            cls, text = self._open.pop()
            for name in cls.split():
                self.by_class.setdefault(name, []).append("".join(text).strip())
            if self._open:
                self._open[-1][1].extend(text)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._open:
            self._open[-1][1].append(data)

    def table(self, cls: str, key: str) -> dict[str, list[str]]:
        return {a[key]: cells for a, cells in self.rows if a.get("class") == cls}


PLC_POINTS = ('{ sensor = "pressure", table = "holding", address = 0, type = "uint16", scale = 0.01 }',
              '{ sensor = "temp", table = "input", address = 0, type = "int16", scale = 0.1 }')
VIB = '{ sensor = "vib", table = "holding", address = 0, type = "uint16" }'


def opc_poll_source(endpoint: str, poll_interval_ms: int) -> str:
    """The OPC-UA source "opc" polling the peer's flow, count and setpt."""
    return textwrap.dedent(f"""\
        [[sources]]
        name = "opc"
        kind = "opcua"
        endpoint = "{endpoint}"
        mode = "poll"
        poll_interval_ms = {poll_interval_ms}
        nodes = [
            {{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }},
            {{ sensor = "count", node_id = "ns=2;s=Pump07.Count" }},
            {{ sensor = "setpt", node_id = "ns=2;s=Pump07.Setpt" }},
        ]
        """)


def write_asset(tmp: Path, opcua_endpoint: str, modbus_port: int, dead_port: int, metrics_port: int) -> Path:
    path = tmp / "asset.toml"
    path.write_text(textwrap.dedent(f"""\
        asset = "line-3"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 1
        sampling_rate = "PT1M"
        input = "file://{tmp}/store/"
        output = "file://{tmp}/output/"
        [components]
        pump = ["flow", "count", "setpt"]
        motor = ["pressure", "temp", "vib"]
        [window]
        fill_limit = 2
        grace_secs = 5
        [health]
        source_silent_secs = 120
        [metrics]
        enabled = true
        port = {metrics_port}
        [alarms.hooks.journal]
        kind = "file"
        path = "{tmp}/alarms.jsonl"
        [alarms.hooks.ops]
        kind = "webhook"
        url = "http://127.0.0.1:9/hook?key={SECRETS[1]}"
        headers = {{ Authorization = "Bearer {SECRETS[0]}" }}
        [[alarms.rules]]
        name = "anomaly"
        kind = "anomaly"
        min_consecutive = 2
        score_threshold = 0.9
        hooks = ["journal"]
        [[alarms.rules]]
        name = "source-silent"
        kind = "source_silent"
        hooks = ["journal"]
        """) + opc_poll_source(opcua_endpoint, 200)
        + modbus_tcp_source("plc", modbus_port, PLC_POINTS, poll_interval_ms=5000)
        + modbus_tcp_source("dead-plc", dead_port, [VIB], poll_interval_ms=5000, timeout_secs=0.2))
    return path


def write_results(tmp: Path) -> None:
    """One execution's results.jsonl for the window (23:55, 00:00]: two normal rows, then two abnormal."""
    start = T0 - 300
    rows = []
    for i, (score, pred) in enumerate([(0.1, 0), (0.2, 0), (0.95, 1), (0.97, 1)]):
        diag = [{"name": "pump\\flow", "value": 0.7}, {"name": "motor\\temp", "value": 0.2},
                {"name": "pump\\count", "value": 0.1}]
        rows.append(json.dumps({"timestamp": iso_utc(start + 60 * (i + 2)).replace("Z", ".000000"),
                                "prediction": pred, "anomaly_score": score, "diagnostics": diag,
                                "prediction_reason": "ANOMALY_DETECTED" if pred else "NO_ANOMALY_DETECTED"}))
    folder = tmp / "output" / iso_utc(start)
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("\n".join(rows) + "\n")


def get(url: str) -> tuple[int, str]:
    return http_get(url, timeout=10)


def metric(body: str, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def disk(state: Path) -> dict:
    progress = json.loads((state / "progress.json").read_text())
    alarms = json.loads((state / "alarms" / "alarms.json").read_text())
    open_ids = {st["episode"]["id"] for st in alarms["anomaly"].values() if st.get("episode", {}) and
                st["episode"].get("raised")}
    open_ids |= {o["id"] for opened in alarms["events"].values() for o in opened.values()}
    cursor = json.loads((state / "results_cursor.json").read_text())["last_start"]
    outbox = len(list((state / "outbox").glob("[0-9]*/*.csv")))
    return {"last_written": progress["last_written"], "open": open_ids, "cursor": cursor, "outbox": outbox}


async def wait_for(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_status_page_in_a_browser_shows_what_the_peers_hold(tmp_path):
    opc = await OpcUaPeer().start()
    plc = await start_tcp(sim_device(1, holding={0: [PRESSURE_RAW]}, input={0: [TEMP_RAW]}))
    port, dead_port = free_port(), free_port()
    path = write_asset(tmp_path, opc.endpoint, plc.port, dead_port, port)
    write_results(tmp_path)

    async def plant() -> None:
        """The PLC re-stamps its constant values every half second (a new sample each time: the polled source
        delivers it, so it never falls silent)."""
        while True:
            for key, value in OPCUA_VALUES.items():
                await opc.set(key, int(value) if key != "flow" else value, source_ts=datetime.now(UTC))
            await asyncio.sleep(0.5)

    config = load(path)
    state = tmp_path / "state"
    clock = ScaledClock(T0 - 30, SPEED)
    agent = Agent([make_runner(config, path, state, clock)], clock, metrics_config=config.metrics)
    writer = asyncio.create_task(plant())
    run = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            code, body = get(base + "/api/status")
            if code != 200:
                return False
            a = json.loads(body)["assets"][0]
            states = {s["name"]: s["state"] for s in a["sources"]}
            return (a["windows"]["written_total"] >= 2 and {o["rule"] for o in a["alarms"]["open"]} ==
                    {"anomaly", "source-silent"} and states == {"opc": "connected", "plc": "connected",
                                                                "dead-plc": "down"}
                    and a["alarms"]["pending_deliveries"] == 0
                    and all(s["history"] for s in a["sensors"] if s["name"] != "vib"))

        await wait_for(ready, 60, "two windows, both alarms, the dead source down")
        written_before = json.loads((state / "progress.json").read_text())["last_written"]
        page = await asyncio.to_thread(browser.load, base + "/")
        written_after = json.loads((state / "progress.json").read_text())["last_written"]

        # what a person sees
        assert page.problems == []
        dom = Rows()
        dom.feed(page.dom)
        sensors = dom.table("sensor", "data-sensor")
        assert set(sensors) == {"flow", "count", "setpt", "pressure", "temp", "vib"}
        header = next(cells for a, cells in dom.rows if cells and cells[0] == "sensor")
        value_col, quality_col, holds_col = header.index("last value"), header.index("quality"), header.index("holds")
        for name, expected in {**OPCUA_VALUES, **MODBUS_VALUES}.items():
            cells = sensors[name]
            assert abs(float(cells[value_col]) - expected) <= 1e-9 * max(1.0, abs(expected)), (name, cells)
            assert cells[quality_col] == "good" and cells[holds_col] == "yes", (name, cells)
        assert sensors["vib"][value_col] == "—" and sensors["vib"][quality_col] == "none"
        assert 'aria-label="last hour 1.5 to 1.5"' in page.dom  # the flow sparkline drew the grid's values
        sources = dom.table("source", "data-source")
        state_col = next(cells for a, cells in dom.rows if cells and cells[0] == "source").index("state")
        assert {n: c[state_col] for n, c in sources.items()} == {"opc": "connected", "plc": "connected",
                                                                 "dead-plc": "down"}
        assert sources["opc"][2] == opc.endpoint and sources["plc"][2] == f"127.0.0.1:{plc.port}"
        shown = dom.by_class["last-written"][0]
        assert re.fullmatch(r"\S+ \S+Z … \S+ \S+Z", shown)
        shown_end = parse_instant(shown.split(" … ")[1].replace(" ", "T"))
        # the page shows what the agent held while the browser loaded it (windows close every 5 s of wall time,
        # and a first start of Chromium can take longer than that)
        assert written_before <= shown_end <= written_after
        assert int(dom.by_class["written-total"][0]) >= 2
        assert {a["data-rule"] for a, _ in dom.rows if a.get("class") == "open-alarm"} == {"anomaly", "source-silent"}
        executions = [cells for a, cells in dom.rows if a.get("class") == "execution"]
        assert len(executions) == 1 and executions[0][1] == "SUCCESS" and executions[0][2] == "0.97"
        assert executions[0][3] == "2 / 4"
        assert "pump\\flow 0.700" in page.text  # top diagnostic of the latest abnormal row
        assert "threshold 0.9" in page.dom  # the rule's threshold drawn on the score trend
        transitions = [cells for a, cells in dom.rows if a.get("class") == "transition"]
        assert {(c[1], c[2]) for c in transitions} == {("anomaly", "raised"), ("source-silent", "raised")}
        for secret in SECRETS:
            assert secret not in page.dom

        # the JSON against /metrics and the state directory, each read before and after it; counters that
        # move with every reading must lie between the two reads, the rest must equal them (a window written
        # in between makes the attempt start again)
        written = "l4e_windows_written_total"
        for _ in range(10):
            # the agent serves from this event loop: HTTP from a thread
            metrics_before, disk_before = (await asyncio.to_thread(get, base + "/metrics"))[1], disk(state)
            code, body = await asyncio.to_thread(get, base + "/api/status")
            metrics_after, disk_after = (await asyncio.to_thread(get, base + "/metrics"))[1], disk(state)
            if disk_before == disk_after and metric(metrics_before, written) == metric(metrics_after, written):
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError("the state kept changing under every attempt")
        assert code == 200
        for secret in SECRETS:
            assert secret not in body
        a = json.loads(body)["assets"][0]

        def between(name: str, value: float, **labels: str) -> None:
            low, high = metric(metrics_before, name, **labels), metric(metrics_after, name, **labels)
            assert low <= value <= high, (name, labels, low, value, high)

        for s in a["sources"]:
            between("l4e_readings_total", s["readings_total"], source=s["name"])
            between("l4e_read_errors_total", s["read_errors_total"], source=s["name"])
            between("l4e_source_connected", 1.0 if s["state"] == "connected" else 0.0, source=s["name"])
        for s in a["sensors"]:
            between("l4e_readings_total", s["readings_total"], sensor=s["name"])
        assert next(s for s in a["sources"] if s["name"] == "dead-plc")["readings_total"] == 0
        w = a["windows"]
        assert w["written_total"] == metric(metrics_before, written, asset="line-3")
        assert w["late_total"] == metric(metrics_before, "l4e_windows_late_total", asset="line-3")
        assert w["outbox"]["files"] == metric(metrics_before, "l4e_outbox_backlog", asset="line-3")
        assert w["spool"]["bytes"] >= 0 and w["budget"]["used_bytes"] >= w["spool"]["bytes"]
        assert a["lookout"]["results_processed"] == 4
        assert metric(metrics_before, "l4e_results_processed_total", asset="line-3") == 4
        assert w["last_written"]["end"] == disk_before["last_written"]
        assert w["outbox"]["files"] == disk_before["outbox"]
        assert {o["id"] for o in a["alarms"]["open"]} == disk_before["open"]
        assert a["lookout"]["cursor"] == disk_before["cursor"] == T0 - 300
        assert a["lookout"]["mode"] == "listing" and a["lookout"]["status"] == "ok"
        assert metric(metrics_before, "l4e_alarms_raised_total", asset="line-3", rule="anomaly") == 1
        for name, expected in {**OPCUA_VALUES, **MODBUS_VALUES}.items():
            sensor = next(s for s in a["sensors"] if s["name"] == name)
            assert sensor["value"] == expected and sensor["holds"] is True
        hooks = {h["name"]: h for h in a["alarms"]["hooks"]}
        assert len((tmp_path / "alarms.jsonl").read_text().splitlines()) == 2
        assert hooks["journal"] == {"name": "journal", "kind": "file", "delivered": 2, "failures": 0, "pending": 0}
        assert hooks["ops"] == {"name": "ops", "kind": "webhook", "delivered": 0, "failures": 0, "pending": 0}
    finally:
        agent.request_stop()
        await asyncio.wait_for(run, 60)
        writer.cancel()
        await plc.stop()
        await opc.stop()
    assert run.result() == 0


def test_the_browser_harness_reports_console_errors(tmp_path):
    """The "no console errors" check above can fail: a page with a script error, a console.error, a broken
    SVG path and a missing image yields one problem each."""
    import functools
    import http.server
    import threading

    (tmp_path / "index.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>hi</p>'
        '<script>console.error("boom"); notDefined();</script><svg><path d="M1 2 M M"/></svg>'
        '<img src="/missing.png"></body></html>')
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = browser.load(f"http://127.0.0.1:{server.server_address[1]}/index.html")
    finally:
        server.shutdown()
        server.server_close()
    assert page.text.strip() == "hi"
    kinds = sorted(p.split(":", 1)[0] for p in page.problems)
    assert kinds == ["console.error", "exception", "log.error (network)", "log.error (rendering)"], page.problems


def write_stopping_asset(tmp: Path, opcua_endpoint: str, metrics_port: int) -> Path:
    path = tmp / "asset.toml"
    path.write_text(textwrap.dedent(f"""\
        asset = "line-4"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 1
        sampling_rate = "PT1M"
        input = "file://{tmp}/store/"
        [components]
        pump = ["flow", "count", "setpt"]
        [window]
        fill_limit = 1
        grace_secs = 5
        [health]
        source_silent_secs = 30
        [metrics]
        enabled = true
        port = {metrics_port}
        """) + opc_poll_source(opcua_endpoint, 100)
        + journal_alarms(tmp / "alarms.jsonl", ("source-silent", "source_silent")))
    return path


async def test_a_stopped_server_leaves_the_last_reading_ended_with_health_on_top(tmp_path):
    """The OPC-UA server's flow swings between 1 and 3 (the grid's cells hold their mean), then reads 5 and the
    server goes away. The page keeps flow's last reading (5, with that reading's time and age, not a grid
    cell), marks it "ended" in amber (not green), says at the top that the source does not answer and that
    source-silent is open (with its age), and each drawn sparkline shows its min/max scale."""
    opc = await OpcUaPeer().start()
    port = free_port()
    path = write_stopping_asset(tmp_path, opc.endpoint, port)

    async def swing() -> None:
        for k in range(10_000):  # bounded: cancelled long before
            await opc.set("flow", 1.0 if k % 2 else 3.0, source_ts=datetime.now(UTC))
            await asyncio.sleep(0.15)

    config = load(path)
    clock = ScaledClock(T0 - 30, SPEED)
    agent = Agent([make_runner(config, path, tmp_path / "state", clock)], clock, metrics_config=config.metrics)
    writer = asyncio.create_task(swing())
    run = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{port}"

    def asset() -> dict | None:
        code, body = get(base + "/api/status")
        return json.loads(body)["assets"][0] if code == 200 else None

    def flow(a: dict) -> dict:
        return next(s for s in a["sensors"] if s["name"] == "flow")

    try:
        def swung() -> bool:
            a = asset()
            return bool(a and a["windows"]["written_total"] >= 1 and len({v for _, v in flow(a)["history"]
                                                                          if v is not None}) >= 2)

        await wait_for(swung, 60, "a written window with flow's swings on the grid")
        writer.cancel()
        await opc.set("flow", 5.0, source_ts=datetime.now(UTC))
        last: list[dict] = []

        def five() -> bool:
            a = asset()
            if a and flow(a)["value"] == 5.0:
                last.append(flow(a))
            return bool(last)

        await wait_for(five, 30, "flow reading 5 while connected")
        await opc.stop()

        def gone() -> bool:
            a = asset()
            return bool(a and flow(a)["quality"] != "good" and {o["rule"] for o in a["alarms"]["open"]}
                        == {"source-silent"})

        await wait_for(gone, 60, "flow no longer vouched for and source-silent open")
        doc = json.loads((await asyncio.to_thread(get, base + "/api/status"))[1])
        shown = flow(doc["assets"][0])
        # the last reading received, not a grid cell: its value, its own (off-grid) time, its age from that time
        assert (shown["value"], shown["ts"], shown["quality"]) == (5.0, last[0]["ts"], "ended"), shown
        assert shown["age_secs"] == doc["now"] - shown["ts"]
        assert shown["ts"] % 60 != 0

        page = await asyncio.to_thread(browser.load, base + "/")
        assert page.problems == []
        dom = Rows()
        dom.feed(page.dom)
        header = next(cells for a_, cells in dom.rows if cells and cells[0] == "sensor")
        cells = dom.table("sensor", "data-sensor")["flow"]
        assert float(cells[header.index("last value")]) == 5.0 and cells[header.index("quality")] == "ended"
        row = re.search(r'<tr class="sensor" data-sensor="flow">.*?</tr>', page.dom).group(0)
        assert '<td class="quality warn">ended</td>' in row  # amber, not the green of "good"
        # the health summary comes before the first asset section
        assert page.dom.index('class="health-summary"') < page.dom.index('class="asset"')
        assert dom.by_class["health-sources"][0].startswith("1 of 1 source(s) do not answer: opc (")
        assert dom.by_class["health-alarms"] == ["1 open alarm"]
        assert re.search(r'<li class="health-alarm" data-rule="source-silent"><b>source-silent</b> opc, open for '
                         r'<span class="alarm-age">\d+ s</span>', page.dom)
        values = [v for _, v in shown["history"] if v is not None]
        spark = re.search(r'<span class="scale-max">([^<]*)</span><br><span class="scale-min">([^<]*)</span>',
                          row)
        assert spark and (float(spark.group(1)), float(spark.group(2))) == pytest.approx(
            (max(values), min(values)), rel=1e-3)
    finally:
        writer.cancel()
        agent.request_stop()
        await asyncio.wait_for(run, 60)
        await opc.stop()
    assert run.result() == 0
