"""A plant on loopback: the pump model served over OPC-UA and Modbus TCP, for the demo and for tests.

``PlantSimulator`` runs an asyncua server and a pymodbus TCP server and refreshes every value from
``PumpModel.sample(t)`` every ``update_interval_secs`` of clock time, ``t`` being the clock time rounded down
to that interval (so every served value is ``model.sample`` at a point of a known grid).

OPC-UA (line instrumentation), namespace ``urn:l4e:sim`` (index 2), under ``Objects/Pump07``: see
``OPCUA_NODES``. Values are Double; SourceTimestamp and ServerTimestamp are the sample's clock time (the
simulated plant's server lives on the simulated timeline, so both timestamp policies work on a ScaledClock).

Modbus TCP (motor PLC), device id 1, separate tables (coil/discrete addresses are bit numbers): see
``MODBUS_MAP``. Discrete input 0 mirrors ``running`` (coil 0). Registers are not write-protected, but the
next update overwrites anything a client writes there. Besides the sensors, the coil table has:

- ``MODBUS_FAULT_COILS``: a test panel. Writing 1/0 (function 5 or 15) switches that fault on/off at the
  current clock time (``PumpModel.set_fault``); reading tells whether the fault is active.
- ``MODBUS_ALARM_COIL``: free for the agent's alarm write-back; the simulator keeps what is written.

Coils between the used ones read as 0; other unmapped addresses answer ILLEGAL_ADDRESS.

``l4e-agent simulate`` (agent.demo.simulate) serves it from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from datetime import UTC, datetime

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from agent.core.clock import Clock
from agent.demo.pump_model import PumpModel
from connectors.modbus.codec import encode

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:l4e:sim"
OPCUA_OBJECT = "Pump07"

OPCUA_NAMESPACE_INDEX = 2  # what register_namespace gives the first namespace of a fresh asyncua server
# sensor → BrowseName of its variable under Objects/Pump07 (qualified with the simulator's namespace)
OPCUA_BROWSE_NAMES: dict[str, str] = {
    "flow": "Flow",
    "suction_pressure": "SuctionPressure",
    "discharge_pressure": "DischargePressure",
    "speed": "Speed",
}
# sensor → NodeId string, e.g. "ns=2;s=Pump07.Flow"
OPCUA_NODES: dict[str, str] = {
    sensor: f"ns={OPCUA_NAMESPACE_INDEX};s={OPCUA_OBJECT}.{name}"
    for sensor, name in OPCUA_BROWSE_NAMES.items()
}

# sensor → Modbus point of device 1. table: "coil" | "discrete" | "holding" | "input"; address: 0-based
# (as in requests); type and order as in connectors.modbus.codec; engineering value = raw * scale.
MODBUS_DEVICE_ID = 1
MODBUS_MAP: dict[str, dict[str, object]] = {
    "motor_current": {"table": "holding", "address": 0, "type": "float32", "order": "CDAB", "scale": 1.0},
    "vibration": {"table": "holding", "address": 2, "type": "float32", "order": "CDAB", "scale": 1.0},
    "bearing_temp": {"table": "input", "address": 0, "type": "int16", "order": "ABCD", "scale": 0.1},
    "winding_temp": {"table": "input", "address": 1, "type": "int16", "order": "ABCD", "scale": 0.1},
    "running": {"table": "coil", "address": 0, "type": "bool", "order": "ABCD", "scale": 1.0},
}
_MIRROR_DISCRETE_ADDRESS = 0  # discrete input mirroring `running`; also keeps pymodbus's 4-table layout valid
MODBUS_FAULT_COILS: dict[str, int] = {"bearing_wear": 100, "cavitation": 101}  # fault kind → coil
MODBUS_ALARM_COIL = 200
_FAULT_BY_COIL = {coil: kind for kind, coil in MODBUS_FAULT_COILS.items()}
_CLIENT_WRITE_FCS = (5, 15)  # write single/multiple coils; our own updates use the read codes below

# Function codes for writing our own tables through the server's datastore (a code only selects the table).
_TABLE_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

DEFAULT_OPCUA_PORT = 4841
DEFAULT_MODBUS_PORT = 5021
MAX_UPDATES_PER_WALL_SEC = 10.0


def default_update_interval(clock: Clock) -> float:
    """Clock seconds between updates: 1 s, or longer so there are at most 10 updates per wall second."""
    return max(1.0, clock.speed / MAX_UPDATES_PER_WALL_SEC)


def _free_port(host: str) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS's choice for port 0)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        return sock.getsockname()[1]


def _registers_for(sensor: str, value: float) -> list[int] | list[bool]:
    """What ``MODBUS_MAP[sensor]`` holds for the engineering ``value``: registers, or one bit for a bool."""
    point = MODBUS_MAP[sensor]
    if point["type"] == "bool":
        return [value >= 0.5]
    raw = value / float(point["scale"])
    if point["type"] != "float32":
        raw = round(raw)  # integer registers carry the value in steps of `scale`
    return encode(raw, str(point["type"]), str(point["order"]))


def _modbus_device(action: SimAction) -> SimDevice:
    """Device 1 with the four tables sized for ``MODBUS_MAP`` and the extra coils, all zero until the first
    update; ``action`` sees every access (pymodbus calls it before applying a write)."""
    tables: dict[str, list[SimData]] = {"coil": [], "discrete": [], "holding": [], "input": []}
    for sensor, point in MODBUS_MAP.items():
        table, address = str(point["table"]), int(point["address"])
        if table in ("coil", "discrete"):
            tables[table].append(SimData(address, values=[False], datatype=DataType.BITS))
        else:
            width = len(_registers_for(sensor, 0.0))
            tables[table].append(SimData(address, count=width, values=0, datatype=DataType.REGISTERS))
    tables["discrete"].append(SimData(_MIRROR_DISCRETE_ADDRESS, values=[False], datatype=DataType.BITS))
    for coil in (*MODBUS_FAULT_COILS.values(), MODBUS_ALARM_COIL):
        tables["coil"].append(SimData(coil, values=[False], datatype=DataType.BITS))
    return SimDevice(
        id=MODBUS_DEVICE_ID,
        simdata=(tables["coil"], tables["discrete"], tables["holding"], tables["input"]),
        action=action,
    )


class PlantSimulator:
    """OPC-UA and Modbus TCP servers presenting ``model`` on ``host``, refreshed on ``clock``.

    Ports 0 pick free ports. After ``start()``: ``opcua_port``, ``modbus_port`` hold the bound ports and
    ``opcua_endpoint`` the endpoint URL. ``update_interval_secs`` is in clock seconds (default:
    ``default_update_interval(clock)``). ``stop()`` closes both servers and releases the ports.
    ``host`` should be an IP address: a name resolving to several addresses would give the Modbus server
    one port per address when asked for port 0.
    """

    def __init__(
        self,
        model: PumpModel,
        clock: Clock,
        host: str = "127.0.0.1",
        opcua_port: int = 0,
        modbus_port: int = 0,
        update_interval_secs: float | None = None,
    ) -> None:
        if update_interval_secs is not None and update_interval_secs <= 0:
            raise ValueError("update_interval_secs must be > 0")
        self.model = model
        self.clock = clock
        self.host = host
        self.opcua_port = opcua_port
        self.modbus_port = modbus_port
        self.update_interval_secs = update_interval_secs or default_update_interval(clock)
        self.opcua_endpoint = ""
        self.last_update_ts: float | None = None  # clock time of the values now served
        self._opcua: Server | None = None
        self._opcua_nodes: dict[str, ua.NodeId] = {}
        self._modbus: ModbusTcpServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start both servers, publish the first values, then keep them fresh.

        Raises OSError if a port is taken; nothing is left running then. One start per stop.
        """
        if self._opcua is not None or self._modbus is not None:
            raise RuntimeError("PlantSimulator already started")
        try:
            await self._start_opcua()
            await self._start_modbus()
            await self._update(self._grid_now())
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._update_loop(), name="plant-simulator-update")

    async def stop(self) -> None:
        """Stop updating and close both servers (idempotent). Re-raises an error the update task died of."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        modbus, self._modbus = self._modbus, None
        if modbus is not None:
            await modbus.shutdown()
        opcua, self._opcua = self._opcua, None
        if opcua is not None:
            await opcua.stop()

    def set_fault(self, kind: str, active: bool) -> None:
        """Switch a fault on/off now (clock time); the next update serves it."""
        self.model.set_fault(kind, active, self.clock.now())

    # ---------------------------------------------------------------- servers

    async def _start_opcua(self) -> None:
        # asyncua binds port 0 fine but would advertise port 0 in its endpoints; pick a free port instead and
        # retry if someone takes it between the check and the bind.
        attempts = 1 if self.opcua_port else 5
        for attempt in range(attempts):
            port = self.opcua_port or _free_port(self.host)
            try:
                self._opcua = await self._opcua_server(port)
            except OSError:
                if attempt + 1 == attempts:
                    raise
                continue
            self.opcua_port = port
            self.opcua_endpoint = f"opc.tcp://{self.host}:{port}"
            return

    async def _opcua_server(self, port: int) -> Server:
        """A started asyncua server on ``port`` with the Pump07 variables (filled in ``_opcua_nodes``)."""
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{port}")
        server.set_server_name("l4e plant simulator")
        # Not NAMESPACE_URI: the application URI takes namespace 1, ours must stay at index 2.
        await server.set_application_uri("urn:l4e:sim:server")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])  # a plain plant: no users, no certificates
        ns = await server.register_namespace(NAMESPACE_URI)
        if ns != OPCUA_NAMESPACE_INDEX:  # the documented NodeIds would lie
            raise RuntimeError(f"namespace {NAMESPACE_URI} got index {ns}, expected {OPCUA_NAMESPACE_INDEX}")
        pump = await server.nodes.objects.add_object(
            ua.NodeId(OPCUA_OBJECT, ns), ua.QualifiedName(OPCUA_OBJECT, ns)
        )
        self._opcua_nodes = {}
        for sensor, name in OPCUA_BROWSE_NAMES.items():
            node_id = ua.NodeId(f"{OPCUA_OBJECT}.{name}", ns)
            var = await pump.add_variable(
                node_id, ua.QualifiedName(name, ns), 0.0, varianttype=ua.VariantType.Double
            )
            self._opcua_nodes[sensor] = var.nodeid
        await server.start()
        return server

    async def _start_modbus(self) -> None:
        server = ModbusTcpServer(_modbus_device(self._on_modbus_access), address=(self.host, self.modbus_port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus reports a failed bind this way
            raise OSError(f"Modbus server cannot listen on {self.host}:{self.modbus_port}: {exc}") from None
        self._modbus = server
        self.modbus_port = server.transport.sockets[0].getsockname()[1]

    async def _on_modbus_access(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus action hook: a client's write to a fault coil switches that fault now."""
        if set_values is None or function_code not in _CLIENT_WRITE_FCS:
            return None
        for offset, value in enumerate(set_values):
            kind = _FAULT_BY_COIL.get(address + offset)
            if kind is not None:
                self.model.set_fault(kind, bool(value), self.clock.now())
                log.info("fault %s switched %s by a Modbus client", kind, "on" if value else "off")
        return None

    # ---------------------------------------------------------------- updates

    def _grid_now(self) -> float:
        """Clock time rounded down to the update grid."""
        step = self.update_interval_secs
        return math.floor(self.clock.now() / step) * step

    async def _update_loop(self) -> None:
        while True:
            # A late wake (slow loop, suspended host) skips to the current grid point: the plant is "live".
            next_ts = max(self.last_update_ts + self.update_interval_secs, self._grid_now())
            await self.clock.sleep_until(next_ts)
            await self._update(next_ts)

    async def _update(self, ts: float) -> None:
        """Serve ``model.sample(ts)`` on both servers."""
        values = self.model.sample(ts)
        stamp = datetime.fromtimestamp(ts, UTC)
        for sensor, node_id in self._opcua_nodes.items():
            variant = ua.Variant(values[sensor], ua.VariantType.Double)
            await self._opcua.write_attribute_value(
                node_id, ua.DataValue(variant, SourceTimestamp=stamp, ServerTimestamp=stamp)
            )
        for sensor, point in MODBUS_MAP.items():
            fc = _TABLE_FC[str(point["table"])]
            await self._modbus.async_setValues(MODBUS_DEVICE_ID, fc, int(point["address"]),
                                               _registers_for(sensor, values[sensor]))
        running = [values["running"] >= 0.5]
        await self._modbus.async_setValues(
            MODBUS_DEVICE_ID, _TABLE_FC["discrete"], _MIRROR_DISCRETE_ADDRESS, running
        )
        # Fault state at the current time, not at `ts`: a switch written just now must read back at once.
        now = self.clock.now()
        for kind, coil in MODBUS_FAULT_COILS.items():
            active = self.model.fault_active(kind, now)
            await self._modbus.async_setValues(MODBUS_DEVICE_ID, _TABLE_FC["coil"], coil, [active])
        self.last_update_ts = ts
