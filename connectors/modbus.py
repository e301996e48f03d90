"""Modbus source: TCP, RTU (serial) and RTU over TCP. The only module that uses pymodbus's client API.

Shape of one poll cycle:

    config ──plan_requests()──▶ per device: a few merged read requests (fewest that respect the caps)
    one task per device: at every tick of ``poll_interval_ms`` on the injected Clock, send its requests,
    decode each point (connectors.modbus_codec) and put one batch of Readings on a queue; ``readings()``
    yields the batches.

Isolation. Each device has its own task and its own failure state. Over TCP each device also has its own
connection (pymodbus serialises requests per client), so a device that stops answering behind a gateway never
delays another one. RTU and RTU over TCP share one client per line because the line itself is shared: there
a dead device still costs bus time, so after it fails to answer its polls are spaced out with capped backoff.

Failures. A lost or refused connection is retried with capped backoff (agent.clock.Backoff) without blocking
the tick; "device busy" (exception 6) is repeated up to ``retries`` times; any other exception answer or a
timeout marks the affected points missing for that poll, counts them in ``stats.read_errors``, and is logged
once per transition (agent.errors.TransitionLog). An "illegal data address" (exception 2) answer to a merged
request splits it into one request per point for the rest of the run, so one unreadable hole does not
blind its neighbours.

Validity and liveness (rule 2a). A polled value holds until the next poll; a failed request (no connection, no
answer, an exception answer) or a NaN from a float register ends the validity of its points: one validity-end
marker per sensor at the poll's time, not repeated until the sensor reads again. ``stats.last_alive_ts`` moves
with every answered request: a steady plant whose device answers is alive.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from agent.clock import Backoff, Clock
from agent.errors import ConnectionLost, ConnectorError, TransitionLog
from agent.model import Quality, Reading, validity_end
from connectors import modbus_codec as codec
from connectors.base import ProbeLine, ProbeReport, SourceConfig, SourceStats

log = logging.getLogger(__name__)

Table = Literal["coil", "discrete", "holding", "input"]
BIT_TABLES: tuple[str, ...] = ("coil", "discrete")
REGISTER_TABLES: tuple[str, ...] = ("holding", "input")
TABLE_ORDER: tuple[str, ...] = ("coil", "discrete", "holding", "input")
PointType = Literal["bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
Order = Literal["ABCD", "DCBA", "BADC", "CDAB"]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
BUSY = 6
ILLEGAL_ADDRESS = 2
BUSY_DELAY_MIN_S = 0.05  # a busy device needs a moment; never hammer it faster than this
SHARED_LINE_MAX_NO_RESPONSES = 1_000_000  # a dead device must not make pymodbus close a shared line
# Reconnecting a lost or refused link (wall seconds): quick first retry, then at most every 30 s.
LINK_BACKOFF_INITIAL_SECS = 0.5
LINK_BACKOFF_MAX_SECS = 30.0
# A device that stops answering on a live link: its polls are spaced from its poll interval (at least this)
# up to this (or the poll interval, when longer), so a dead device costs little bus time.
DEVICE_BACKOFF_MIN_SECS = 0.1
DEVICE_BACKOFF_MAX_SECS = 30.0


# --------------------------------------------------------------------------------------------- config


class ModbusPoint(BaseModel):
    """One sensor read from one place of a device's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str = Field(min_length=1, description="Sensor name (the CSV column) this point provides.")
    table: Table = Field(description="Modbus table: coil, discrete (input), holding (register), input (register).")
    address: int = Field(ge=0, le=65535, description="Zero-based protocol address of the first register or bit.")
    type: PointType = Field(
        description="bool (coil/discrete only); bit (one bit of a register); int16, uint16 (1 register); "
        "int32, uint32, float32 (2 registers); int64, uint64, float64 (4 registers)."
    )
    order: Order = Field(
        "ABCD",
        description="Byte order of multi-byte values: ABCD big-endian words and bytes; CDAB word swap; BADC "
        "byte swap in each word; DCBA fully little-endian. Ignored for bool and bit.",
    )
    bit: int | None = Field(None, ge=0, le=15, description="Bit index (0 = least significant) for type 'bit'.")
    scale: float = Field(1.0, description="The reading is raw * scale + offset (booleans are 0/1).")
    offset: float = Field(0.0, description="Added after scale: raw * scale + offset.")

    @model_validator(mode="after")
    def _check_type_fits_table(self) -> ModbusPoint:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"point {self.sensor!r}: table {self.table} holds bits; type must be 'bool'")
        if self.table in REGISTER_TABLES and self.type == "bool":
            raise ValueError(
                f"point {self.sensor!r}: table {self.table} holds registers; type must be one of "
                f"{', '.join(codec.REGISTER_TABLE_TYPES)} (use 'bit' for one bit of a register)"
            )
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError(f"point {self.sensor!r}: 'bit' (0..15) is required for type 'bit' and only for it")
        if self.address + self.width - 1 > 65535:
            raise ValueError(f"point {self.sensor!r}: {self.type} at {self.address} runs past address 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (register tables) or bits (bit tables) the point spans."""
        return codec.register_count(self.type)


class ModbusDevice(BaseModel):
    """One Modbus device (unit / slave id) and the points read from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: int = Field(1, ge=0, le=255, description="Modbus device (unit) id.")
    timeout_secs: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds to wait for an answer to one request (on a shared line, rtu or "
        "rtu_over_tcp, the longest timeout of its devices applies).",
    )
    retries: int = Field(
        1, ge=0, le=10, description="Repeats of a request after a timeout, and after a 'device busy' answer."
    )
    pause_ms: int = Field(0, ge=0, le=10_000, description="Pause between two requests to this device, in ms.")
    max_registers_per_request: int = Field(
        125, ge=4, le=125, description="Largest register count one read request may ask for."
    )
    max_bits_per_request: int = Field(
        2000, ge=1, le=2000, description="Largest coil/discrete input count one read request may ask for."
    )
    max_gap_registers: int = Field(
        50,
        ge=0,
        le=125,
        description="Largest run of unused registers a request may read to merge two points (for coils and "
        "discrete inputs, 16 bits per register). 0 merges only adjacent points.",
    )
    one_request_per_point: bool = Field(False, description="Read each point with its own request (no merging).")
    points: list[ModbusPoint] = Field(min_length=1, description="The points read from this device.")


class ModbusSourceConfig(SourceConfig):
    """A Modbus source: one TCP endpoint or serial line, with one or more devices behind it."""

    kind: Literal["modbus"] = Field(description="Source type.")
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = Field(
        description="tcp (Modbus TCP), rtu (serial line), rtu_over_tcp (RTU frames through a TCP converter)."
    )
    host: str | None = Field(None, description="Host name or IP address (tcp, rtu_over_tcp).")
    port: int | str | None = Field(
        None, description="TCP port (tcp, rtu_over_tcp; default 502) or serial device path (rtu, required)."
    )
    baudrate: int = Field(19200, ge=300, le=921_600, description="Serial bits per second (rtu).")
    parity: Literal["N", "E", "O"] = Field("E", description="Serial parity: N, E or O (rtu).")
    stopbits: Literal[1, 2] = Field(1, description="Serial stop bits (rtu).")
    bytesize: Literal[7, 8] = Field(8, description="Serial data bits (rtu).")
    poll_interval_ms: int = Field(1000, ge=10, le=3_600_000, description="Time between polls of each device, in ms.")
    devices: list[ModbusDevice] = Field(min_length=1, description="Devices on this endpoint or line.")

    @model_validator(mode="after")
    def _check_transport_fields(self) -> ModbusSourceConfig:
        serial_fields = {"baudrate", "parity", "stopbits", "bytesize"} & self.model_fields_set
        if self.transport == "rtu":
            if self.host is not None:
                raise ValueError("transport 'rtu' uses a serial port; remove 'host'")
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("transport 'rtu' needs port = the serial device path, e.g. '/dev/ttyUSB0'")
        else:
            if not self.host:
                raise ValueError(f"transport {self.transport!r} needs 'host'")
            if self.port is not None and (isinstance(self.port, str) or not 1 <= self.port <= 65535):
                raise ValueError(f"transport {self.transport!r} needs port = a TCP port number 1..65535")
            if serial_fields:
                raise ValueError(
                    f"transport {self.transport!r} takes no serial settings: remove {sorted(serial_fields)}"
                )
        return self

    @model_validator(mode="after")
    def _check_unique_names(self) -> ModbusSourceConfig:
        ids = [d.device_id for d in self.devices]
        if len(ids) != len(set(ids)):
            raise ValueError(f"device_id values must be unique, got {ids}")
        seen: set[str] = set()
        for sensor in (p.sensor for d in self.devices for p in d.points):
            if sensor in seen:
                raise ValueError(f"sensor {sensor!r} appears more than once")
            seen.add(sensor)
        return self

    @property
    def tcp_port(self) -> int:
        """The TCP port for tcp and rtu_over_tcp (502 when not given)."""
        return self.port if isinstance(self.port, int) else 502

    @property
    def endpoint(self) -> str:
        """Human-readable target, for logs."""
        if self.transport == "rtu":
            return str(self.port)
        return f"{self.host}:{self.tcp_port}"

    def sensors(self, base_dir: Path) -> list[str]:
        """Every configured sensor name, in configuration order."""
        return [p.sensor for d in self.devices for p in d.points]


# --------------------------------------------------------------------------------------------- planner


@dataclass(frozen=True, slots=True)
class Span:
    """A point's place in a table: ``width`` registers (or bits) from ``address``; ``key`` is its id."""

    table: str
    address: int
    width: int
    key: int

    @property
    def end(self) -> int:
        """First address after the span."""
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class Request:
    """One read request: ``count`` registers or bits of ``table`` from ``address``, serving ``keys``."""

    table: str
    address: int
    count: int
    keys: tuple[int, ...]


def plan_requests(
    spans: Iterable[Span],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap_registers: int = 50,
    one_per_point: bool = False,
) -> list[Request]:
    """Group the spans of one device into read requests.

    Contract: every span is inside exactly one request, whole; a request never counts more than
    ``max_registers`` (register tables) or ``max_bits`` (bit tables); two neighbouring spans share a request
    only if the unused addresses between them are at most ``max_gap_registers`` (×16 for bit tables, the same
    bytes on the wire). With ``one_per_point`` each span gets its own request. Spans are scanned in address
    order and each request is extended while the next span fits, which gives the fewest requests for a
    contiguous map. Requests come out ordered by table (coil, discrete, holding, input), then address.
    A span wider than the cap raises ValueError.
    """
    by_table: dict[str, list[Span]] = {}
    for span in spans:
        by_table.setdefault(span.table, []).append(span)
    out: list[Request] = []
    for table in sorted(by_table, key=_table_rank):
        bits = table in BIT_TABLES
        cap = max_bits if bits else max_registers
        gap = max_gap_registers * 16 if bits else max_gap_registers
        out.extend(_plan_table(table, by_table[table], cap, gap, one_per_point))
    return out


def _table_rank(table: str) -> int:
    return TABLE_ORDER.index(table) if table in TABLE_ORDER else len(TABLE_ORDER)


def _plan_table(table: str, spans: list[Span], cap: int, gap: int, one_per_point: bool) -> list[Request]:
    out: list[Request] = []
    start = end = 0
    keys: list[int] = []
    for span in sorted(spans, key=lambda s: (s.address, s.end, s.key)):
        if span.width > cap:
            raise ValueError(f"a {span.width}-wide point at {span.address} exceeds the request cap {cap}")
        # Overlapping spans (two bits of one register) give a negative hole, and merge for free.
        fits = keys and span.address - end <= gap and max(end, span.end) - start <= cap
        if fits and not one_per_point:
            end = max(end, span.end)
            keys.append(span.key)
            continue
        if keys:
            out.append(Request(table, start, end - start, tuple(keys)))
        start, end, keys = span.address, span.end, [span.key]
    if keys:
        out.append(Request(table, start, end - start, tuple(keys)))
    return out


def plan_device(device: ModbusDevice, one_per_point: bool | None = None) -> list[Request]:
    """``plan_requests`` for one configured device; request keys are indices into ``device.points``."""
    spans = [Span(p.table, p.address, p.width, i) for i, p in enumerate(device.points)]
    return plan_requests(
        spans,
        max_registers=device.max_registers_per_request,
        max_bits=device.max_bits_per_request,
        max_gap_registers=device.max_gap_registers,
        one_per_point=device.one_request_per_point if one_per_point is None else one_per_point,
    )


# --------------------------------------------------------------------------------------------- I/O


class _NoAnswer(Exception):
    """The device did not answer (timeout) after the allowed repeats."""


class _ExceptionAnswer(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


def _make_client(config: ModbusSourceConfig, timeout_secs: float) -> Any:
    """A pymodbus client for ``config``'s transport. pymodbus's own retries and reconnects are off: this
    module repeats requests and reconnects itself, so timing and logging stay under its control."""
    common = {"timeout": timeout_secs, "retries": 0, "reconnect_delay": 0}
    if config.transport == "rtu":
        return AsyncModbusSerialClient(
            str(config.port),
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            parity=config.parity,
            stopbits=config.stopbits,
            bytesize=config.bytesize,
            **common,
        )
    framer = FramerType.SOCKET if config.transport == "tcp" else FramerType.RTU
    return AsyncModbusTcpClient(config.host or "", port=config.tcp_port, framer=framer, **common)


class _Link:
    """One pymodbus client, i.e. one transport connection, used by one or more devices.

    ``get()`` returns a connected client or raises ConnectionLost at once; after a failed connect the next
    attempt waits for capped backoff (wall time: a peer's recovery does not speed up with a scaled clock).
    """

    def __init__(
        self,
        config: ModbusSourceConfig,
        timeout_secs: float,
        shared: bool,
        stats: SourceStats,
        transitions: TransitionLog,
    ) -> None:
        self._config = config
        self._timeout = timeout_secs
        self._shared = shared
        self._stats = stats
        self._transitions = transitions
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(LINK_BACKOFF_INITIAL_SECS, LINK_BACKOFF_MAX_SECS)
        self._retry_at = 0.0  # time.monotonic() before which no connect is tried
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def get(self) -> Any:
        """A connected client; ConnectionLost if there is none and connecting fails or is backing off."""
        if self.connected:
            return self._client
        async with self._lock:
            if self.connected:
                return self._client
            if time.monotonic() < self._retry_at:
                raise ConnectionLost(f"{self._config.endpoint}: not connected (reconnect backing off)")
            return await self._connect()

    async def _connect(self) -> Any:
        self.close()
        client = _make_client(self._config, self._timeout)
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            log.debug("modbus %s: connect raised %r", self._config.name, exc)
            ok = False
        key = f"link {self._config.endpoint}"
        if not ok:
            client.close()
            self._retry_at = time.monotonic() + self._backoff.next()
            self._transitions.failure(key, "modbus %s: cannot connect to %s", self._config.name, self._config.endpoint)
            raise ConnectionLost(f"cannot connect to {self._config.endpoint}")
        if self._shared:
            client.set_max_no_responses(SHARED_LINE_MAX_NO_RESPONSES)
        if self._ever_connected:
            self._stats.reconnects += 1
        self._ever_connected = True
        self._backoff.reset()
        self._client = client
        self._transitions.success(key, "modbus %s: connected to %s", self._config.name, self._config.endpoint)
        return client

    def drop(self, client: Any) -> None:
        """Forget ``client`` after it lost its connection, unless another device already replaced it."""
        if client is self._client:
            self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


async def _call(link: _Link, send: Callable[[Any], Awaitable[Any]], retries: int, pause_s: float) -> Any:
    """Send one request through ``link`` and return its (non-error) response.

    Repeats after a timeout and after "device busy" up to ``retries`` times each. Raises ConnectionLost
    (no connection), _NoAnswer (timeouts exhausted) or _ExceptionAnswer (any other exception code, or busy
    exhausted).
    """
    timeouts = busy = 0
    while True:
        client = await link.get()
        try:
            response = await send(client)
        except ConnectionException as exc:
            link.drop(client)
            raise ConnectionLost(str(exc)) from None
        except ModbusException as exc:
            # ModbusIOException: no answer in time (pymodbus may also drop the connection after several).
            timeouts += 1
            if timeouts > retries:
                raise _NoAnswer(str(exc)) from None
            continue
        if not response.isError():
            return response
        code = int(response.exception_code)
        if code == BUSY and busy < retries:
            busy += 1
            await asyncio.sleep(max(pause_s, BUSY_DELAY_MIN_S) * busy)
            continue
        raise _ExceptionAnswer(code)


_READ_METHODS = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}


async def _read(link: _Link, device: ModbusDevice, request: Request) -> list[int] | list[bool]:
    """The registers (or bits) ``request`` asks for, exactly ``request.count`` of them."""
    method = _READ_METHODS[request.table]

    def send(client: Any) -> Awaitable[Any]:
        return getattr(client, method)(request.address, count=request.count, device_id=device.device_id)

    response = await _call(link, send, device.retries, device.pause_ms / 1000)
    values = list(response.bits if request.table in BIT_TABLES else response.registers)
    if len(values) < request.count:
        # A short answer is a broken frame as far as this request is concerned.
        raise _NoAnswer(f"short answer: {len(values)} of {request.count} values")
    return values[: request.count]


def _point_value(point: ModbusPoint, request: Request, values: Sequence[Any]) -> float:
    """The scaled value of ``point`` inside the answer ``values`` to ``request``."""
    at = point.address - request.address
    if point.table in BIT_TABLES:
        return codec.scale_bool(bool(values[at]), point.scale, point.offset)
    regs = values[at : at + point.width]
    return codec.decode_scaled(regs, point.type, point.order, point.bit, point.scale, point.offset)


# --------------------------------------------------------------------------------------------- connector


@dataclass
class _DeviceState:
    """What one device's poll task keeps between ticks."""

    device: ModbusDevice
    link: _Link
    requests: list[Request]
    backoff: Backoff
    skip_until: float = 0.0  # time.monotonic() before which an unresponsive device is not polled
    split: set[Request] = field(default_factory=set)


class ModbusConnector:
    """Polls every configured device at ``poll_interval_ms`` on ``clock`` and yields one batch per poll."""

    def __init__(self, config: ModbusSourceConfig, clock: Clock, base_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.base_dir = base_dir
        self.stats = SourceStats()
        self._transitions = TransitionLog(log)
        self._links: list[_Link] = []
        self._ended: set[str] = set()  # sensors whose validity already ended and that have not read since

    # ----------------------------------------------------------------------------- set-up

    def _build_states(self) -> list[_DeviceState]:
        """One state per device; links per the isolation rule (own link per TCP device, one shared link per
        serial line or RTU-over-TCP converter)."""
        cfg = self.config
        interval_s = cfg.poll_interval_ms / 1000
        shared: _Link | None = None
        if cfg.transport != "tcp":
            # One timeout for the whole line: the most patient device's.
            shared = _Link(cfg, max(d.timeout_secs for d in cfg.devices), True, self.stats, self._transitions)
        states = []
        for device in cfg.devices:
            link = shared or _Link(cfg, device.timeout_secs, False, self.stats, self._transitions)
            backoff = Backoff(max(interval_s, DEVICE_BACKOFF_MIN_SECS), max(DEVICE_BACKOFF_MAX_SECS, interval_s))
            states.append(_DeviceState(device, link, plan_device(device), backoff))
        self._links = list({id(s.link): s.link for s in states}.values())
        return states

    def _close_links(self) -> None:
        for link in self._links:
            link.close()
        self.stats.connected = False

    def _update_connected(self) -> None:
        self.stats.connected = bool(self._links) and all(link.connected for link in self._links)

    # ----------------------------------------------------------------------------- readings

    async def readings(self) -> AsyncIterator[list[Reading]]:
        """Yield one batch of GOOD readings per device poll, until cancelled (see the module docstring).

        Unexpected errors in a device task (bugs, not I/O) are re-raised here for the supervisor.
        """
        # Unbounded on purpose: a full queue would block device tasks and break their cadence; the consumer
        # (the spool) takes batches far faster than a PLC produces them.
        queue: asyncio.Queue[list[Reading] | BaseException] = asyncio.Queue()
        states = self._build_states()
        tasks = [
            asyncio.create_task(self._device_loop(s, queue), name=f"modbus:{self.name}:{s.device.device_id}")
            for s in states
        ]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close_links()

    async def _device_loop(self, state: _DeviceState, queue: asyncio.Queue) -> None:
        """Poll one device at once, then at each tick of the clock's ``poll_interval_ms`` grid (multiples
        of the interval since the epoch, so readings keep a steady phase); ticks that a slow poll overran
        are skipped rather than bunched up."""
        interval = self.config.poll_interval_ms / 1000
        tick = self.clock.now()
        try:
            while True:
                await self.clock.sleep_until(tick)
                batch = await self._poll(state)
                if batch:
                    queue.put_nowait(batch)
                tick = self._next_tick(tick, interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not I/O: hand it to readings() so the supervisor sees it
            queue.put_nowait(exc)

    def _next_tick(self, tick: float, interval: float) -> float:
        # The epsilon keeps a tick that float division puts a hair below k·interval from repeating k.
        nxt = (math.floor(tick / interval + 1e-9) + 1) * interval
        now = self.clock.now()
        if nxt <= now:
            nxt = (math.floor(now / interval) + 1) * interval
        return nxt

    async def _poll(self, state: _DeviceState) -> list[Reading]:
        """Read every request of one device once; GOOD readings out, failures counted and logged."""
        device = state.device
        if time.monotonic() < state.skip_until:
            return self._count_missing(device, state.requests, self.clock.now())
        batch: list[Reading] = []
        for i, request in enumerate(state.requests):
            if i and device.pause_ms:
                await asyncio.sleep(device.pause_ms / 1000)
            ts = self.clock.now()
            try:
                values = await _read(state.link, device, request)
            except ConnectionLost:
                batch.extend(self._count_missing(device, state.requests[i:], ts))
                break
            except _NoAnswer as exc:
                self._device_unresponsive(state, exc)
                batch.extend(self._count_missing(device, state.requests[i:], ts))
                break
            except _ExceptionAnswer as exc:
                self._exception_answer(state, request, exc)
                batch.extend(self._count_missing(device, [request], ts))
                continue
            finally:
                self._update_connected()
            self._request_ok(state, request)
            self.stats.last_alive_ts = ts
            batch.extend(self._decode(device, request, values, ts))
        else:
            self._device_ok(state)
        self._apply_splits(state)
        return batch

    def _decode(self, device: ModbusDevice, request: Request, values: Sequence[Any], ts: float) -> list[Reading]:
        out = []
        for key in request.keys:
            point = device.points[key]
            value = _point_value(point, request, values)
            if not math.isfinite(value):
                # NaN/inf from a float register is a device saying "no value", not a measurement.
                self.stats.bad_quality[point.sensor] += 1
                self.stats.bad_now.add(point.sensor)
                if point.sensor not in self._ended:
                    self._ended.add(point.sensor)
                    if self.stats.readings[point.sensor]:  # a sensor that never had a value has none to end
                        out.append(validity_end(point.sensor, ts))
                continue
            out.append(Reading(point.sensor, value, ts, Quality.GOOD))
            self.stats.readings[point.sensor] += 1
            self.stats.last_reading_ts = ts
        if self._ended or self.stats.bad_now:
            good = {r.sensor for r in out if r.value == r.value}
            self._ended -= good
            self.stats.bad_now -= good
        return out

    def _count_missing(self, device: ModbusDevice, requests: Iterable[Request], ts: float) -> list[Reading]:
        """Count the points of failed requests; their values stop holding at ``ts`` (one marker per sensor
        until it reads again: a poll that fails tells nothing about the value, rule 2a)."""
        ends = []
        for request in requests:
            for key in request.keys:
                sensor = device.points[key].sensor
                self.stats.read_errors[sensor] += 1
                if sensor not in self._ended:
                    self._ended.add(sensor)
                    if self.stats.readings[sensor]:  # a sensor that never had a value has none to end
                        ends.append(validity_end(sensor, ts))
        return ends

    def _device_unresponsive(self, state: _DeviceState, exc: Exception) -> None:
        dev = state.device
        state.skip_until = time.monotonic() + state.backoff.next()
        self._transitions.failure(
            f"device {dev.device_id}",
            "modbus %s: device %d does not answer (%s)",
            self.name,
            dev.device_id,
            exc,
        )

    def _device_ok(self, state: _DeviceState) -> None:
        dev = state.device
        state.backoff.reset()
        state.skip_until = 0.0
        self._transitions.success(
            f"device {dev.device_id}", "modbus %s: device %d answers again", self.name, dev.device_id
        )

    @staticmethod
    def _request_key(device: ModbusDevice, request: Request) -> str:
        return f"device {device.device_id} {request.table} {request.address}+{request.count}"

    def _exception_answer(self, state: _DeviceState, request: Request, exc: _ExceptionAnswer) -> None:
        dev = state.device
        self._transitions.failure(
            self._request_key(dev, request),
            "modbus %s: device %d %s %d..%d: %s",
            self.name,
            dev.device_id,
            request.table,
            request.address,
            request.address + request.count - 1,
            exc,
        )
        if exc.code == ILLEGAL_ADDRESS and len(request.keys) > 1:
            state.split.add(request)

    def _request_ok(self, state: _DeviceState, request: Request) -> None:
        dev = state.device
        self._transitions.success(
            self._request_key(dev, request),
            "modbus %s: device %d %s %d..%d readable",
            self.name,
            dev.device_id,
            request.table,
            request.address,
            request.address + request.count - 1,
        )

    def _apply_splits(self, state: _DeviceState) -> None:
        """Replace merged requests refused with 'illegal data address' by one request per point."""
        if not state.split:
            return
        dev = state.device
        new: list[Request] = []
        for request in state.requests:
            if request in state.split:
                spans = [Span(request.table, dev.points[k].address, dev.points[k].width, k) for k in request.keys]
                new.extend(plan_requests(spans, one_per_point=True))
                log.warning(
                    "modbus %s: device %d: reading %s %d..%d point by point from now on (a hole in "
                    "the range is not readable; lower max_gap_registers to avoid this)",
                    self.name,
                    dev.device_id,
                    request.table,
                    request.address,
                    request.address + request.count - 1,
                )
            else:
                new.append(request)
        state.requests = new
        state.split.clear()

    # ----------------------------------------------------------------------------- probe

    async def probe(self) -> ProbeReport:
        """Read every point once with its own request; report the configured value, the raw registers and
        the value under every byte order for each type of the same width (``ProbeLine.extra``)."""
        states = self._build_states()
        lines: list[ProbeLine] = []
        try:
            for state in states:
                lines.extend(await self._probe_device(state))
        finally:
            self._close_links()
        failed = [line for line in lines if line.error]
        error = f"{len(failed)} of {len(lines)} points failed" if failed else ""
        return ProbeReport(source=self.name, ok=not failed, lines=lines, error=error)

    async def _probe_device(self, state: _DeviceState) -> list[ProbeLine]:
        device = state.device
        lines: list[ProbeLine] = []
        give_up = ""  # once the device or link is gone, the remaining points fail fast with the same reason
        for key, point in enumerate(device.points):
            line = ProbeLine(sensor=point.sensor, type=_describe(device, point))
            lines.append(line)
            if give_up:
                line.status, line.error = "missing", give_up
                continue
            request = Request(point.table, point.address, point.width, (key,))
            try:
                values = await _read(state.link, device, request)
            except (ConnectionLost, _NoAnswer) as exc:
                give_up = f"{type(exc).__name__.strip('_')}: {exc}"
                line.status, line.error = "missing", give_up
                continue
            except _ExceptionAnswer as exc:
                line.status, line.error = "missing", str(exc)
                continue
            line.value = _point_value(point, request, values)
            line.status = "ok"
            line.extra = _interpretations(point, values)
        return lines


def _describe(device: ModbusDevice, point: ModbusPoint) -> str:
    text = f"device {device.device_id} {point.table}[{point.address}] {point.type}"
    if point.type == "bit":
        text += f" bit {point.bit}"
    elif point.width > 1:
        text += f" {point.order}"
    return text


def _fmt(value: int | float) -> str:
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def _interpretations(point: ModbusPoint, values: Sequence[Any]) -> dict[str, str]:
    """Raw registers and every (type, order) reading of the same width, so a user can spot the right one."""
    if point.table in BIT_TABLES:
        return {"raw": str(bool(values[0]))}
    extra = {"raw": " ".join(f"0x{v:04X}" for v in values)}
    if point.type == "bit":
        extra["bits (15..0)"] = f"{values[0]:016b}"
        return extra
    orders = ("ABCD", "BADC") if point.width == 1 else codec.ORDERS
    for type_ in codec.TYPES_BY_WIDTH[point.width]:
        extra[type_] = " ".join(f"{o}={_fmt(codec.decode(values, type_, o))}" for o in orders)
    return extra


# --------------------------------------------------------------------------------------------- write-back


async def write_modbus(
    config: ModbusSourceConfig,
    device_id: int,
    table: Literal["coil", "holding"],
    address: int,
    value: float | int | bool,
    type: str = "uint16",
    order: str = "ABCD",
) -> None:
    """Connect, write one value, disconnect (the alarms write-back hook).

    A coil takes ``bool(value)``; a holding register takes ``value`` encoded as ``type`` in ``order`` (one
    register: function 6, more: function 16). The device's timeout and retries come from ``config`` when it
    lists ``device_id``, else the defaults. Raises ValueError for a bad table/type/value, ConnectionLost when
    the endpoint cannot be reached or the device does not answer, ConnectorError for an exception answer.
    """
    if table not in ("coil", "holding"):
        raise ValueError(f"table {table!r} is not writable; use 'coil' or 'holding'")
    if not 0 <= address <= 65535:
        raise ValueError(f"address {address} outside 0..65535")
    registers = [] if table == "coil" else codec.encode(value, type, order)
    if table == "holding" and address + len(registers) - 1 > 65535:
        raise ValueError(f"{type} at {address} runs past address 65535")
    device = next((d for d in config.devices if d.device_id == device_id), None)
    timeout = device.timeout_secs if device else ModbusDevice.model_fields["timeout_secs"].default
    retries = device.retries if device else ModbusDevice.model_fields["retries"].default
    link = _Link(config, timeout, False, SourceStats(), TransitionLog(log))

    def send(client: Any) -> Awaitable[Any]:
        if table == "coil":
            return client.write_coil(address, bool(value), device_id=device_id)
        if len(registers) == 1:
            return client.write_register(address, registers[0], device_id=device_id)
        return client.write_registers(address, registers, device_id=device_id)

    try:
        await _call(link, send, retries, 0.0)
    except _NoAnswer as exc:
        raise ConnectionLost(f"{config.endpoint} device {device_id}: no answer to the write ({exc})") from None
    except _ExceptionAnswer as exc:
        raise ConnectorError(f"{config.endpoint} device {device_id}: write {table}[{address}] refused: {exc}") from None
    finally:
        link.close()
