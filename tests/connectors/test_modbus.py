"""The Modbus connector against real pymodbus servers on 127.0.0.1 (TCP) and over a socat pair (RTU)."""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_peer import Gate, Reader, TickClock, serial_peer, sim_device, socat_pair, start_tcp, tcp_peer
from pydantic import ValidationError
from pymodbus.framer import FramerType
from test_modbus_codec import VECTORS

from agent.core.clock import ScaledClock, SystemClock
from agent.core.errors import ConnectionLost, ConnectorError
from connectors.modbus.config import ModbusSourceConfig
from connectors.modbus.connector import ModbusConnector
from connectors.modbus.planner import Span, plan_requests
from connectors.modbus.write_back import write_modbus
from tests.ports import free_port

pytestmark = pytest.mark.timeout(60)


def make_config(port, devices, **fields) -> ModbusSourceConfig:
    """A tcp source on 127.0.0.1:port; ``devices`` as config dicts."""
    raw = {
        "name": "plc1",
        "kind": "modbus",
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_ms": 10_000,
        "devices": devices,
    }
    raw.update(fields)
    return ModbusSourceConfig.model_validate(raw)


def connector(config, clock=None) -> ModbusConnector:
    return ModbusConnector(config, clock or SystemClock(), Path("."))


def values(batch) -> dict[str, float]:
    return {r.sensor: r.value for r in batch}




# ------------------------------------------------------------------------------------------ decoding over TCP


def vector_map():
    """Holding registers holding every (type, order) vector back to back, and the matching points."""
    registers: list[int] = []
    points, expected = [], {}
    for i, (type_, value, by_order) in enumerate(VECTORS):
        for order, regs in by_order.items():
            sensor = f"{type_}_{order}_{i}"
            points.append(
                {"sensor": sensor, "table": "holding", "address": len(registers), "type": type_, "order": order}
            )
            expected[sensor] = float(value)
            registers.extend(regs)
    return registers, points, expected


async def test_every_type_and_order_and_table_decodes_over_tcp():
    holding, points, expected = vector_map()
    bits_at = len(holding)
    holding.append(0b1000_0000_0000_0101)
    points += [
        {"sensor": "bit0", "table": "holding", "address": bits_at, "type": "bit", "bit": 0},
        {"sensor": "bit1", "table": "holding", "address": bits_at, "type": "bit", "bit": 1},
        {"sensor": "bit15", "table": "holding", "address": bits_at, "type": "bit", "bit": 15},
        {"sensor": "oil_temp", "table": "input", "address": 3, "type": "int16", "scale": 0.1, "offset": -40},
        {"sensor": "energy", "table": "input", "address": 4, "type": "uint32", "order": "CDAB", "scale": 0.5},
        {"sensor": "running", "table": "coil", "address": 2, "type": "bool"},
        {"sensor": "stopped", "table": "coil", "address": 0, "type": "bool"},
        {"sensor": "door", "table": "discrete", "address": 1, "type": "bool", "scale": 5, "offset": 1},
        {"sensor": "alarm", "table": "discrete", "address": 0, "type": "bool"},
    ]
    expected |= {
        "bit0": 1.0,
        "bit1": 0.0,
        "bit15": 1.0,
        "oil_temp": 25.0,
        "energy": 35.0,
        "running": 1.0,
        "stopped": 0.0,
        "door": 6.0,
        "alarm": 0.0,
    }
    gate = Gate()
    device = sim_device(
        1,
        holding={0: holding},
        input={3: [650, 70, 0]},  # energy: uint32 70 word-swapped -> [70, 0]
        coils={0: [False, False, True, False]},
        discrete={0: [False, True]},
        action=gate.action,
    )
    async with tcp_peer(device) as peer:
        conn = connector(make_config(peer.port, [{"device_id": 1, "points": points}]))
        reader = Reader(conn)
        try:
            batch = await reader.next()
        finally:
            await reader.stop()
    got = values(batch)
    assert got.keys() == expected.keys()
    for sensor, value in expected.items():
        assert got[sensor] == pytest.approx(value, rel=1e-12), sensor
    # one request per table: the planner merged 100-odd registers and the scattered bits
    assert gate.requests == 4
    assert conn.stats.readings["oil_temp"] == 1 and not conn.stats.read_errors
    assert all(r.ts == pytest.approx(time.time(), abs=5) for r in batch)


async def test_nan_is_bad_quality_not_a_reading():
    device = sim_device(1, holding={0: [0x7FC0, 0x0000, 42]})
    points = [
        {"sensor": "nan", "table": "holding", "address": 0, "type": "float32"},
        {"sensor": "ok", "table": "holding", "address": 2, "type": "uint16"},
    ]
    async with tcp_peer(device) as peer:
        conn = connector(make_config(peer.port, [{"points": points}]))
        reader = Reader(conn)
        try:
            batch = await reader.next()
        finally:
            await reader.stop()
    assert values(batch) == {"ok": 42.0}
    assert conn.stats.bad_quality["nan"] == 1


# ------------------------------------------------------------------------------------------ RTU over socat


async def test_rtu_over_a_serial_pair(tmp_path):
    device = sim_device(7, holding={0: [0xE979, 0x42F6]}, input={0: [0xFF38]}, coils={0: [True]})
    points = [
        {"sensor": "flow", "table": "holding", "address": 0, "type": "float32", "order": "CDAB"},
        {"sensor": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.5},
        {"sensor": "running", "table": "coil", "address": 0, "type": "bool"},
    ]
    async with socat_pair(tmp_path) as (tty_a, tty_b), serial_peer(device, tty_a):
        config = ModbusSourceConfig.model_validate(
            {
                "name": "line1",
                "kind": "modbus",
                "transport": "rtu",
                "port": tty_b,
                "baudrate": 115200,
                "parity": "N",
                "poll_interval_ms": 100,
                "devices": [{"device_id": 7, "points": points}],
            }
        )
        conn = connector(config)
        reader = Reader(conn)
        try:
            batches = [await reader.next() for _ in range(3)]
        finally:
            await reader.stop()
        await write_modbus(config, 7, "holding", 0, -2.5, "float32", "CDAB")
        await write_modbus(config, 7, "coil", 0, False)
        conn2 = connector(config)
        report = await conn2.probe()
    for batch in batches:
        assert values(batch) == {"flow": pytest.approx(123.456, rel=1e-6), "temp": -100.0, "running": 1.0}
    step = batches[2][0].ts - batches[1][0].ts
    assert step == pytest.approx(0.1, abs=0.05)
    assert report.ok
    assert [line.value for line in report.lines] == [-2.5, -100.0, 0.0]


@pytest.mark.parametrize(
    ("transport", "framer", "connections"),
    [
        ("tcp", FramerType.SOCKET, 2),  # a connection per device: one cannot stall another
        ("rtu_over_tcp", FramerType.RTU, 1),  # one converter, one line, one connection
    ],
)
async def test_links_per_transport(transport, framer, connections):
    opened = []
    devices = [sim_device(1, holding={0: [11]}), sim_device(2, holding={0: [22]})]
    config_devices = [
        {"device_id": d, "points": [{"sensor": f"d{d}", "table": "holding", "address": 0, "type": "uint16"}]}
        for d in (1, 2)
    ]
    async with tcp_peer(devices, framer=framer, trace_connect=opened.append) as peer:
        conn = connector(make_config(peer.port, config_devices, transport=transport))
        reader = Reader(conn)
        try:
            got = values(await reader.next()) | values(await reader.next())
        finally:
            await reader.stop()
    assert got == {"d1": 11.0, "d2": 22.0}
    assert opened.count(True) == connections


# ------------------------------------------------------------------------------------------ isolation


@pytest.mark.parametrize("failure", ["never answers", "not served"])
async def test_a_dead_device_behind_the_gateway_does_not_slow_the_live_one(failure):
    interval = 0.2
    dead = Gate(dead=True)
    live = sim_device(1, holding={0: [11]})
    devices = [live] if failure == "not served" else [live, sim_device(2, holding={0: [22]}, action=dead.action)]
    config_devices = [
        {
            "device_id": 1,
            "timeout_secs": 0.5,
            "retries": 0,
            "points": [{"sensor": "live", "table": "holding", "address": 0, "type": "uint16"}],
        },
        {
            "device_id": 2,
            "timeout_secs": 1.0,
            "retries": 0,
            "points": [{"sensor": "dead", "table": "holding", "address": 0, "type": "uint16"}],
        },
    ]
    async with tcp_peer(devices) as peer:
        conn = connector(make_config(peer.port, config_devices, poll_interval_ms=int(interval * 1000)))
        reader = Reader(conn)
        try:
            stamps = [(await reader.next())[0].ts for _ in range(11)]
        finally:
            await reader.stop()
            dead.release()
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    assert statistics.mean(steps[1:]) == pytest.approx(interval, rel=0.10)
    assert max(steps[1:]) < 2 * interval  # a stall behind the dead device's 1 s timeout would show here
    assert conn.stats.readings["live"] == 11 and conn.stats.readings["dead"] == 0
    assert conn.stats.read_errors["dead"] >= 1 and conn.stats.read_errors["live"] == 0
    if failure == "never answers":
        assert dead.requests >= 1


# ------------------------------------------------------------------------------------------ failures


async def test_busy_is_retried_then_counted():
    gate = Gate(busy_left=2)
    point = {"sensor": "p", "table": "input", "address": 0, "type": "uint16"}
    async with tcp_peer(sim_device(1, input={0: [5]}, action=gate.action)) as peer:
        conn = connector(make_config(peer.port, [{"retries": 2, "points": [point]}]))
        reader = Reader(conn)
        try:
            assert values(await reader.next()) == {"p": 5.0}
        finally:
            await reader.stop()
        assert gate.requests == 3 and not conn.stats.read_errors

        gate.busy_left, gate.requests = 2, 0
        conn = connector(make_config(peer.port, [{"retries": 1, "points": [point]}], poll_interval_ms=50))
        reader = Reader(conn)
        try:
            assert values(await reader.next()) == {"p": 5.0}  # the second poll
        finally:
            await reader.stop()
        assert gate.requests == 3 and conn.stats.read_errors["p"] == 1


async def test_illegal_address_splits_the_merged_request_and_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="connectors.modbus")
    # addresses 1..9 are holes; 30 does not exist at all
    device = sim_device(1, holding={0: [1], 10: [2]})
    points = [
        {"sensor": "a", "table": "holding", "address": 0, "type": "uint16"},
        {"sensor": "b", "table": "holding", "address": 10, "type": "uint16"},
        {"sensor": "c", "table": "holding", "address": 30, "type": "uint16"},
    ]
    async with tcp_peer(device) as peer:
        conn = connector(make_config(peer.port, [{"points": points}], poll_interval_ms=50))
        reader = Reader(conn)
        try:
            batches = [await reader.next() for _ in range(3)]
        finally:
            await reader.stop()
    assert [values(b) for b in batches] == [{"a": 1.0, "b": 2.0}] * 3
    assert conn.stats.read_errors["a"] == conn.stats.read_errors["b"] == 1  # only the merged first poll
    assert conn.stats.read_errors["c"] >= 4
    refused_c = [r for r in caplog.records if r.levelno == logging.WARNING and "30..30" in r.getMessage()]
    assert len(refused_c) == 1
    assert any("point by point" in r.getMessage() for r in caplog.records)


async def test_reconnects_after_the_server_goes_away_and_comes_back():
    clock = TickClock()
    port = free_port()
    device = sim_device(1, holding={0: [9]})
    point = {"sensor": "p", "table": "holding", "address": 0, "type": "uint16"}
    conn = connector(make_config(port, [{"points": [point]}], poll_interval_ms=100), clock)
    reader = Reader(conn)
    peer = None
    try:
        await clock.wait_ticks(3)  # polls against nothing: counted, never raised
        assert conn.stats.read_errors["p"] >= 2 and not conn.stats.connected
        peer = await start_tcp(device, port)
        assert values(await reader.next()) == {"p": 9.0}
        assert conn.stats.connected and conn.stats.reconnects == 0

        alive = conn.stats.last_alive_ts
        assert alive is not None
        await peer.stop()
        errors = conn.stats.read_errors["p"]
        await clock.wait_ticks(3)
        assert conn.stats.read_errors["p"] > errors
        # a failed poll ends the value's validity (rule 2a): one marker, not one per failed poll, and the
        # source's liveness stays at its last answer
        ended = await reader.next(where=lambda b: any(math.isnan(r.value) for r in b))
        assert [r.sensor for r in ended] == ["p"] and ended[0].ts > alive
        await clock.wait_ticks(2)
        assert conn.stats.last_alive_ts == alive
        later = []
        while not reader._batches.empty():
            later.extend(reader._batches.get_nowait())
        assert not any(math.isnan(r.value) for r in later)

        peer = await start_tcp(device, port)
        await peer.set(1, "holding", 0, [10])
        assert values(await reader.next(where=lambda b: b[0].value == 10)) == {"p": 10.0}
        assert conn.stats.reconnects == 1 and conn.stats.connected
    finally:
        await reader.stop()
        if peer:
            await peer.stop()
    assert not conn.stats.connected


async def test_cadence_and_timestamps_follow_a_scaled_clock():
    clock = ScaledClock(start=1_800_000_000.0, speed=10)
    async with tcp_peer(sim_device(1, holding={0: [1]})) as peer:
        points = [{"sensor": "p", "table": "holding", "address": 0, "type": "uint16"}]
        conn = connector(make_config(peer.port, [{"points": points}], poll_interval_ms=1000), clock)
        reader = Reader(conn)
        wall = time.monotonic()
        try:
            stamps = [(await reader.next())[0].ts for _ in range(5)]
        finally:
            await reader.stop()
        wall = time.monotonic() - wall
    assert wall < 2.0  # four clock seconds at 10x take 0.4 s
    for ts in stamps[1:]:
        assert ts - math.floor(ts) < 0.3  # polled on the clock's whole-second grid (30 ms of wall slack)
    assert all(b - a == pytest.approx(1.0, abs=0.3) for a, b in itertools.pairwise(stamps[1:]))


# ------------------------------------------------------------------------------------------ probe


async def test_probe_shows_raw_registers_and_every_order():
    device = sim_device(1, holding={0: [0xE979, 0x42F6, 0x0102]}, coils={0: [True]})
    points = [
        {"sensor": "flow", "table": "holding", "address": 0, "type": "float32", "order": "CDAB"},
        {"sensor": "word", "table": "holding", "address": 2, "type": "uint16"},
        {"sensor": "run", "table": "coil", "address": 0, "type": "bool"},
        {"sensor": "gone", "table": "holding", "address": 40, "type": "uint16"},
    ]
    async with tcp_peer(device) as peer:
        report = await connector(make_config(peer.port, [{"points": points}])).probe()
    flow, word, run, gone = report.lines
    assert flow.value == pytest.approx(123.456, rel=1e-6) and flow.status == "ok"
    assert flow.extra["raw"] == "0xE979 0x42F6"
    assert "CDAB=123.456" in flow.extra["float32"]
    assert all(f"{o}=" in flow.extra[t] for o in ("ABCD", "DCBA", "BADC", "CDAB") for t in ("int32", "uint32"))
    assert word.extra == {"raw": "0x0102", "int16": "ABCD=258 BADC=513", "uint16": "ABCD=258 BADC=513"}
    assert run.value == 1.0
    assert gone.error == "exception 2 (illegal data address)" and gone.value is None
    assert not report.ok and "1 of 4" in report.error
    assert "flow" in report.format()


async def test_probe_of_an_unreachable_endpoint_fails_every_point_quickly():
    points = [{"sensor": s, "table": "holding", "address": 0, "type": "uint16"} for s in ("a", "b")]
    report = await connector(make_config(free_port(), [{"points": points}])).probe()
    assert not report.ok
    assert all("cannot connect" in line.error for line in report.lines)


# ------------------------------------------------------------------------------------------ write-back


async def test_write_modbus_sets_coils_and_holding_registers():
    device = sim_device(3, holding={0: [0] * 6}, coils={0: [False] * 8})
    async with tcp_peer(device) as peer:
        config = make_config(
            peer.port,
            [{"device_id": 3, "points": [{"sensor": "p", "table": "holding", "address": 0, "type": "uint16"}]}],
        )
        await write_modbus(config, 3, "coil", 5, True)
        await write_modbus(config, 3, "holding", 0, 1234)
        await write_modbus(config, 3, "holding", 1, 123.456, "float32", "CDAB")
        await write_modbus(config, 3, "holding", 3, -2, "int16")
        assert await peer.get(3, "coil", 0, 8) == [False] * 5 + [True, False, False]
        assert await peer.get(3, "holding", 0, 4) == [1234, 0xE979, 0x42F6, 0xFFFE]

        with pytest.raises(ConnectorError, match="illegal data address"):
            await write_modbus(config, 3, "holding", 100, 1)
        with pytest.raises(ValueError, match="not writable"):
            await write_modbus(config, 3, "input", 0, 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="does not fit"):
            await write_modbus(config, 3, "holding", 0, 70000)
    with pytest.raises(ConnectionLost):
        await write_modbus(config, 3, "coil", 5, True)


# ------------------------------------------------------------------------------------------ config

POINT = {"sensor": "p", "table": "holding", "address": 0, "type": "uint16"}


def raw_config(**changes):
    raw = {
        "name": "plc1",
        "kind": "modbus",
        "transport": "tcp",
        "host": "10.0.0.5",
        "port": 502,
        "devices": [{"device_id": 1, "points": [dict(POINT)]}],
    }
    raw.update(changes)
    return raw


def test_the_documented_example_validates():
    config = ModbusSourceConfig.model_validate(
        raw_config(
            poll_interval_ms=1000,
            devices=[
                {
                    "device_id": 1,
                    "points": [
                        {"sensor": "flow", "table": "holding", "address": 0, "type": "float32", "order": "CDAB"},
                        {
                            "sensor": "oil_temp",
                            "table": "input",
                            "address": 3,
                            "type": "int16",
                            "scale": 0.1,
                            "offset": -40,
                        },
                        {"sensor": "running", "table": "coil", "address": 2, "type": "bool"},
                    ],
                }
            ],
        )
    )
    assert config.sensors(Path(".")) == ["flow", "oil_temp", "running"]
    device = config.devices[0]
    assert (device.max_registers_per_request, device.max_bits_per_request, device.max_gap_registers) == (125, 2000, 50)
    assert not device.one_request_per_point and config.endpoint == "10.0.0.5:502"
    assert all(f.description for f in ModbusSourceConfig.model_fields.values())


def test_tcp_port_defaults_to_502():
    raw = raw_config()
    del raw["port"]
    assert ModbusSourceConfig.model_validate(raw).tcp_port == 502


def point(**changes):
    return {"devices": [{"points": [dict(POINT, **changes)]}]}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (point(table="coil"), "holds bits; type must be 'bool'"),
        (point(table="discrete", type="int16"), "holds bits"),
        (point(type="bool"), "holds registers"),
        (point(type="bit"), "'bit' .* is required"),
        (point(type="bit", bit=16), "less than or equal to 15"),
        (point(bit=3), "only for it"),
        (point(address=65536), "less than or equal to 65535"),
        (point(address=65535, type="float32"), "runs past address 65535"),
        (point(order="ABDC"), "ABCD"),
        (point(type="float16"), "float32"),
        (point(unit="bar"), "Extra inputs"),
        ({"devices": [{"points": [POINT, dict(POINT, address=1)]}]}, "sensor 'p' appears more than once"),
        (
            {"devices": [{"device_id": 1, "points": [POINT]}, {"device_id": 1, "points": [dict(POINT, sensor="q")]}]},
            "device_id values must be unique",
        ),
        ({"devices": [{"points": [POINT], "max_registers_per_request": 126}]}, "less than or equal to 125"),
        ({"devices": [{"points": [POINT], "max_bits_per_request": 2001}]}, "less than or equal to 2000"),
        ({"devices": [{"points": []}]}, "at least 1 item"),
        ({"devices": []}, "at least 1 item"),
        ({"transport": "udp"}, "'tcp', 'rtu' or 'rtu_over_tcp'"),
        ({"host": None}, "needs 'host'"),
        ({"port": "/dev/ttyUSB0"}, "TCP port number"),
        ({"port": 70000}, "TCP port number"),
        ({"baudrate": 9600}, "takes no serial settings"),
        ({"transport": "rtu", "port": "/dev/ttyUSB0"}, "remove 'host'"),
        ({"transport": "rtu", "host": None, "port": 502}, "serial device path"),
        ({"poll_interval_ms": 5}, "greater than or equal to 10"),
        ({"kind": "opcua"}, "'modbus'"),
    ],
)
def test_config_errors_name_the_problem(changes, match):
    with pytest.raises(ValidationError, match=match):
        ModbusSourceConfig.model_validate(raw_config(**changes))


def test_rtu_and_rtu_over_tcp_shapes():
    rtu = ModbusSourceConfig.model_validate(
        raw_config(transport="rtu", host=None, port="/dev/ttyUSB0", baudrate=9600, parity="N", stopbits=2)
    )
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize, rtu.endpoint) == (9600, "N", 2, 8, "/dev/ttyUSB0")
    bridged = ModbusSourceConfig.model_validate(raw_config(transport="rtu_over_tcp", port=4001))
    assert bridged.endpoint == "10.0.0.5:4001"


# ------------------------------------------------------------------------------------------ planner

TABLES = ("coil", "discrete", "holding", "input")


@st.composite
def span_sets(draw):
    n = draw(st.integers(1, 40))
    spans = []
    for key in range(n):
        table = draw(st.sampled_from(TABLES))
        width = 1 if table in ("coil", "discrete") else draw(st.sampled_from((1, 2, 4)))
        spans.append(Span(table, draw(st.integers(0, 400)), width, key))
    return spans


@settings(max_examples=300, deadline=None)
@given(
    spans=span_sets(),
    max_registers=st.integers(4, 125),
    max_bits=st.integers(1, 64),
    gap=st.integers(0, 20),
    one=st.booleans(),
)
def test_planner_covers_every_point_whole_within_the_caps(spans, max_registers, max_bits, gap, one):
    plan = plan_requests(
        spans, max_registers=max_registers, max_bits=max_bits, max_gap_registers=gap, one_per_point=one
    )
    by_key = {s.key: s for s in spans}
    served = [k for r in plan for k in r.keys]
    assert sorted(served) == sorted(by_key)  # every point, exactly once
    for request in plan:
        bits = request.table in ("coil", "discrete")
        assert 1 <= request.count <= (max_bits if bits else max_registers)
        members = sorted((by_key[k] for k in request.keys), key=lambda s: s.address)
        assert all(s.table == request.table for s in members)
        assert all(request.address <= s.address and s.end <= request.address + request.count for s in members)
        assert request.address == members[0].address
        assert request.address + request.count == max(s.end for s in members)
        reach = members[0].end
        for s in members[1:]:  # no hole wider than the gap inside a request
            assert s.address - reach <= (gap * 16 if bits else gap)
            reach = max(reach, s.end)
    if one:
        assert len(plan) == len(spans)
        assert all(r.count == by_key[r.keys[0]].width for r in plan)
    order = [(TABLES.index(r.table), r.address) for r in plan]
    assert order == sorted(order)


def fewest_requests(widths: list[int], cap: int) -> int:
    """Optimum for a contiguous map, by dynamic programming over cut points (points stay whole)."""
    best = [0] + [math.inf] * len(widths)
    for end in range(1, len(widths) + 1):
        size = 0
        for start in range(end - 1, -1, -1):
            size += widths[start]
            if size > cap:
                break
            best[end] = min(best[end], best[start] + 1)
    return int(best[-1])


@settings(max_examples=300, deadline=None)
@given(
    widths=st.lists(st.sampled_from((1, 2, 4)), min_size=1, max_size=80),
    cap=st.integers(4, 125),
    start=st.integers(0, 1000),
    gap=st.integers(0, 50),
)
def test_planner_is_minimal_for_contiguous_maps(widths, cap, start, gap):
    spans, address = [], start
    for key, width in enumerate(widths):
        spans.append(Span("holding", address, width, key))
        address += width
    plan = plan_requests(spans, max_registers=cap, max_gap_registers=gap)
    assert len(plan) == fewest_requests(widths, cap)
    if sum(widths) <= cap:
        assert len(plan) == 1


def test_planner_respects_gap_and_opt_out():
    spans = [Span("holding", 0, 2, 0), Span("holding", 12, 2, 1), Span("holding", 100, 1, 2)]
    assert [(r.address, r.count) for r in plan_requests(spans, max_gap_registers=10)] == [(0, 14), (100, 1)]
    assert [(r.address, r.count) for r in plan_requests(spans, max_gap_registers=9)] == [(0, 2), (12, 2), (100, 1)]
    assert len(plan_requests(spans, max_gap_registers=125, one_per_point=True)) == 3
    bits = [Span("coil", 0, 1, 0), Span("coil", 160, 1, 1), Span("coil", 161, 1, 2)]
    assert [(r.address, r.count) for r in plan_requests(bits, max_gap_registers=10)] == [(0, 162)]
    assert [(r.address, r.count) for r in plan_requests(bits, max_gap_registers=9)] == [(0, 1), (160, 2)]
    with pytest.raises(ValueError, match="exceeds the request cap"):
        plan_requests([Span("holding", 0, 4, 0)], max_registers=3)
