"""The plant simulator: the pump model's contract (deterministic, correlated, faults that show) and the
OPC-UA and Modbus servers read back by real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import socket
import struct
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from agent.core.clock import ScaledClock, parse_instant
from agent.demo.pump_model import SENSORS, PumpModel, history_frame
from agent.demo.simulate import _parse_fault, simulate_main
from agent.demo.simulator import (
    MODBUS_ALARM_COIL,
    MODBUS_FAULT_COILS,
    MODBUS_MAP,
    OPCUA_BROWSE_NAMES,
    OPCUA_NODES,
    PlantSimulator,
)
from connectors.modbus.config import ModbusSourceConfig
from connectors.opcua.config import OpcUaSourceConfig

ROOT = Path(__file__).resolve().parents[2]
T0 = parse_instant("2026-03-02T00:00:00Z")
DAY = 86400.0


def _running(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at (near) full operation: running and past the spin-up."""
    return frame[(frame.running == 1.0) & (frame.speed > 1000.0)]


# ------------------------------------------------------------------------------------------ the model


def test_same_seed_and_time_give_the_same_values_whatever_the_call_history():
    a, b = PumpModel(11), PumpModel(11)
    times = [T0 + k * 37.3 for k in range(50)]
    first = [a.sample(t) for t in times]
    b.sample(T0 + 12345.0)  # unrelated calls must not change anything
    assert [b.sample(t) for t in reversed(times)] == first[::-1]
    assert PumpModel(12).sample(times[3]) != first[3]


def test_history_frame_equals_sample_on_its_grid():
    model = PumpModel(4)
    frame = history_frame(model, T0, T0 + 3600.0, 60.0)
    assert list(frame.columns) == list(SENSORS)
    assert len(frame) == 60
    assert str(frame.index.tz) == "UTC" and frame.index[0] == pd.Timestamp("2026-03-02T00:00:00Z")
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    for ts, row in frame.iloc[::7].iterrows():
        assert row.to_dict() == model.sample(ts.timestamp())


def test_signals_are_correlated_and_plausible_with_a_few_stops_a_day():
    frame = history_frame(PumpModel(7), T0, T0 + 7 * DAY, 60.0)
    run = _running(frame)
    assert run.flow.corr(run.speed) > 0.8
    assert run.motor_current.corr(run.flow) > 0.8
    assert run.vibration.corr(run.speed) > 0.5
    assert run.suction_pressure.corr(run.flow) < -0.5  # suction-line losses grow with flow
    stops_per_day = (frame.running.diff() == -1.0).sum() / 7
    assert 1.0 <= stops_per_day <= 6.0
    assert 0.7 < frame.running.mean() < 0.98
    assert 1300 < run.speed.median() < 1520 and 90 < run.flow.median() < 140
    assert (run.discharge_pressure > run.suction_pressure + 3.0).all()
    stopped = frame[frame.running == 0.0]
    assert stopped.motor_current.max() == 0.0
    # Temperatures lag the load: hotter while running than while stopped, never below ambient lows.
    assert run.winding_temp.mean() > stopped.winding_temp.mean() + 5.0
    assert frame.bearing_temp.min() > 10.0


def _compare(fault_model: PumpModel, start: float, end: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Running rows of the faulty and a healthy model (same seed) over [start, end), aligned."""
    healthy = _running(history_frame(PumpModel(fault_model.seed), start, end, 60.0))
    faulty = history_frame(fault_model, start, end, 60.0).loc[healthy.index]
    return healthy, faulty


def test_bearing_wear_raises_vibration_and_bearing_temperature_progressively():
    model = PumpModel(7)
    model.schedule_fault("bearing_wear", T0 + DAY, T0 + 3 * DAY)
    healthy, faulty = _compare(model, T0 + DAY, T0 + 3 * DAY)
    rise = faulty - healthy
    assert rise.vibration.mean() > 1.0
    assert rise.bearing_temp.mean() > 5.0
    for unaffected in ("flow", "speed", "suction_pressure", "discharge_pressure", "winding_temp"):
        assert rise[unaffected].abs().max() == 0.0, unaffected
    first_day, second_day = rise.vibration.iloc[: len(rise) // 2], rise.vibration.iloc[len(rise) // 2 :]
    assert second_day.mean() > first_day.mean() + 0.5  # progressive from the fault start
    # Before the fault and after the repair the plant is healthy again.
    for start in (T0, T0 + 3 * DAY):
        before_h, before_f = _compare(model, start, start + DAY / 2)
        pd.testing.assert_frame_equal(before_f, before_h)


def test_cavitation_drops_suction_pressure_and_makes_flow_and_vibration_noisy():
    model = PumpModel(7)
    start, end = T0 + DAY, T0 + DAY + 6 * 3600
    model.schedule_fault("cavitation", start, end)
    healthy, faulty = _compare(model, start + 300.0, end)
    assert (healthy.suction_pressure - faulty.suction_pressure).mean() > 0.4
    assert (healthy.discharge_pressure - faulty.discharge_pressure).mean() > 0.3
    assert (healthy.flow - faulty.flow).mean() > 5.0
    assert (faulty.vibration - healthy.vibration).mean() > 0.8
    for sensor in ("vibration", "flow", "discharge_pressure"):
        assert faulty[sensor].diff().std() > 2.0 * healthy[sensor].diff().std(), sensor
    after_h, after_f = _compare(model, end, end + 3600.0)
    pd.testing.assert_frame_equal(after_f, after_h)


def test_set_fault_at_run_time_changes_only_the_future():
    model, healthy = PumpModel(3), PumpModel(3)
    now = T0 + DAY + 1800.0
    before = [now - 600.0, now - 1.0]
    model.set_fault("cavitation", True, now)
    model.set_fault("cavitation", True, now + 10.0)  # already on: no second interval
    assert len(model.faults) == 1
    assert [model.sample(t) for t in before] == [healthy.sample(t) for t in before]
    model.set_fault("cavitation", False, now + 3600.0)
    assert model.faults[0].end_ts == now + 3600.0
    assert model.sample(now + 4000.0) == healthy.sample(now + 4000.0)
    with pytest.raises(ValueError, match="unknown fault kind"):
        model.schedule_fault("misalignment", now)
    with pytest.raises(ValueError, match="end_ts"):
        model.schedule_fault("bearing_wear", now, now)


# ------------------------------------------------------------------------------------------ the servers


def test_every_sensor_is_served_by_exactly_one_protocol():
    assert sorted([*OPCUA_NODES, *MODBUS_MAP]) == sorted(SENSORS)
    assert OPCUA_NODES["flow"] == "ns=2;s=Pump07.Flow"


def _decode(sensor: str, registers: list[int]) -> float:
    """Independent of the simulator's encoder: struct on the wire words."""
    point = MODBUS_MAP[sensor]
    if point["type"] == "float32":
        assert point["order"] == "CDAB"
        return struct.unpack(">f", struct.pack(">HH", registers[1], registers[0]))[0]
    assert point["type"] == "int16"
    return struct.unpack(">h", struct.pack(">H", registers[0]))[0] * float(point["scale"])


async def _read_modbus(port: int) -> dict[str, float]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3)
    assert await client.connect()
    try:
        holding = await client.read_holding_registers(0, count=4, device_id=1)
        inputs = await client.read_input_registers(0, count=2, device_id=1)
        coil = await client.read_coils(0, count=1, device_id=1)
        discrete = await client.read_discrete_inputs(0, count=1, device_id=1)
    finally:
        client.close()
    assert not any(r.isError() for r in (holding, inputs, coil, discrete))
    assert coil.bits[0] == discrete.bits[0]
    return {
        "motor_current": _decode("motor_current", holding.registers[0:2]),
        "vibration": _decode("vibration", holding.registers[2:4]),
        "bearing_temp": _decode("bearing_temp", inputs.registers[0:1]),
        "winding_temp": _decode("winding_temp", inputs.registers[1:2]),
        "running": 1.0 if coil.bits[0] else 0.0,
    }


def _tolerance(sensor: str) -> float:
    point = MODBUS_MAP[sensor]
    if point["type"] == "int16":
        return float(point["scale"]) / 2 + 1e-9
    return 1e-5 * 100.0  # float32 keeps ~7 digits; values stay below 100


async def _switch_cavitation_over_modbus(sim: PlantSimulator, model: PumpModel, clock: ScaledClock) -> None:
    """The fault coils are a test panel: writing one switches the fault now; the alarm coil keeps a write."""
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=3)
    assert await client.connect()
    coil = MODBUS_FAULT_COILS["cavitation"]
    try:
        assert not (await client.write_coil(coil, True, device_id=1)).isError()
        assert model.fault_active("cavitation", clock.now())
        await clock.sleep(3 * sim.update_interval_secs)  # an update must not switch it back
        assert (await client.read_coils(coil, count=1, device_id=1)).bits[0] is True
        switched_on = model.faults[-1].start_ts
        assert not (await client.write_coil(coil, False, device_id=1)).isError()
        assert not model.fault_active("cavitation", clock.now())
        assert model.faults[-1].start_ts == switched_on and model.faults[-1].end_ts is not None
        await clock.sleep(3 * sim.update_interval_secs)
        assert (await client.read_coils(coil, count=1, device_id=1)).bits[0] is False
        assert not (await client.write_coil(MODBUS_ALARM_COIL, True, device_id=1)).isError()
        await clock.sleep(3 * sim.update_interval_secs)
        assert (await client.read_coils(MODBUS_ALARM_COIL, count=1, device_id=1)).bits[0] is True
    finally:
        client.close()


@pytest.mark.timeout(30)
async def test_servers_serve_model_values_at_clock_time_and_release_ports():
    model = PumpModel(5)
    model.schedule_fault("bearing_wear", T0 - DAY)  # worn: every sensor moves, nothing is constant
    clock = ScaledClock(T0 + 9 * 3600.0, speed=60.0)
    interval = 2.0
    sim = PlantSimulator(model, clock, opcua_port=0, modbus_port=0, update_interval_secs=interval)
    await sim.start()
    try:
        assert sim.opcua_port > 0 and sim.modbus_port > 0
        assert sim.opcua_endpoint == f"opc.tcp://127.0.0.1:{sim.opcua_port}"

        async with Client(sim.opcua_endpoint, timeout=5) as client:
            pump = await client.nodes.objects.get_child("2:Pump07")
            for sensor, node_text in OPCUA_NODES.items():
                node = client.get_node(node_text)
                by_path = await pump.get_child(f"2:{OPCUA_BROWSE_NAMES[sensor]}")
                assert by_path.nodeid == node.nodeid
                dv = await node.read_data_value()
                src = dv.SourceTimestamp.timestamp()
                assert abs(src - clock.now()) < 2 * interval + 60.0  # clock time, not wall time
                assert dv.ServerTimestamp == dv.SourceTimestamp
                assert dv.Value.Value == pytest.approx(model.sample(src)[sensor], rel=1e-12)
            first = (await client.get_node(OPCUA_NODES["flow"]).read_data_value()).SourceTimestamp
            await clock.sleep(30.0)
            later = (await client.get_node(OPCUA_NODES["flow"]).read_data_value()).SourceTimestamp
            assert (later - first).total_seconds() >= 20.0  # the update task keeps values fresh

        before = math.floor(clock.now() / interval) * interval - interval
        served = await _read_modbus(sim.modbus_port)
        after = clock.now()
        grid = np.arange(before, after + interval, interval)
        candidates = [model.sample(t) for t in grid]
        for sensor, value in served.items():
            assert any(abs(value - c[sensor]) <= _tolerance(sensor) for c in candidates), (sensor, value)
        assert served["vibration"] > 1.0

        await _switch_cavitation_over_modbus(sim, model, clock)
    finally:
        await sim.stop()
    await sim.stop()  # idempotent
    for port in (sim.opcua_port, sim.modbus_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do; refused while listening
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_parse_fault():
    assert _parse_fault("bearing_wear@2026-03-02T00:00:00Z") == ("bearing_wear", T0, None)
    assert _parse_fault("cavitation@2026-03-02T00:00:00/2026-03-03T00:00:00") == ("cavitation", T0, T0 + DAY)
    with pytest.raises(Exception, match="KIND@START"):
        _parse_fault("misalignment@2026-03-02T00:00:00Z")


@pytest.mark.timeout(30)
async def test_simulate_command_serves_until_sigterm():
    code = "import sys; from agent.demo.simulate import simulate_main; sys.exit(simulate_main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--opcua-port", "0", "--modbus-port", "0", "--seed", "3",
        "--clock-start", "2026-03-02T00:00:00Z", "--speed", "60",
        "--fault", "bearing_wear@2026-03-01T00:00:00Z",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"Modbus tcp://127\.0\.0\.1:(\d+)", line)
        assert match, line
        served = await _read_modbus(int(match.group(1)))
        assert served["vibration"] > 1.0 or served["running"] == 0.0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_simulate_command_fails_cleanly_when_a_port_is_taken(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert simulate_main(["--opcua-port", "0", "--modbus-port", str(port)]) == 1
    assert "Modbus" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ demo config


def test_demo_config_matches_the_simulator():
    config = tomllib.loads((ROOT / "config/demo/pump-07.toml").read_text())
    opcua, modbus = config["sources"]
    assert opcua["endpoint"] == "opc.tcp://127.0.0.1:4841"
    nodes = {n["sensor"]: n["node_id"] for n in opcua["nodes"]}
    assert nodes == OPCUA_NODES
    assert (modbus["host"], modbus["port"]) == ("127.0.0.1", 5021)
    [device] = modbus["devices"]
    assert device["device_id"] == 1
    defaults = {"order": "ABCD", "scale": 1.0}
    for point in device["points"]:
        expected = MODBUS_MAP[point["sensor"]]
        assert {**defaults, **{k: v for k, v in point.items() if k != "sensor"}} == expected
    wanted = {s for sensors in config["components"].values() for s in sensors}
    assert wanted == set(nodes) | {p["sensor"] for p in device["points"]}
    # The connectors' own models accept the sections as written.
    assert OpcUaSourceConfig(**opcua).nodes[0].node_id == OPCUA_NODES["flow"]
    assert ModbusSourceConfig(**modbus).devices[0].points[0].order == "CDAB"
