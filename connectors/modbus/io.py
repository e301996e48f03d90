"""Modbus I/O on pymodbus: the client per transport, the link (one connection, shared by the devices of a
serial line), one request with "device busy" retries, reads by table and the decoding of a point's values."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from agent.core.clock import Backoff
from agent.core.errors import ConnectionLost, TransitionLog
from connectors.base import SourceStats
from connectors.modbus import codec
from connectors.modbus.config import BIT_TABLES, ModbusDevice, ModbusPoint, ModbusSourceConfig
from connectors.modbus.planner import Request

log = logging.getLogger("connectors.modbus")  # one logger for the package (tests and operators filter on it)

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
            self._stats.connect_error = f"cannot connect to {self._config.endpoint}"
            self._transitions.failure(key, "modbus %s: cannot connect to %s", self._config.name, self._config.endpoint)
            raise ConnectionLost(f"cannot connect to {self._config.endpoint}")
        if self._shared:
            client.set_max_no_responses(SHARED_LINE_MAX_NO_RESPONSES)
        first = not self._ever_connected
        if not first:
            self._stats.reconnects += 1
        self._ever_connected = True
        self._backoff.reset()
        self._client = client
        self._stats.connect_error = None
        args = ("modbus %s: connected to %s", self._config.name, self._config.endpoint)
        if not self._transitions.success(key, *args) and first:
            log.info(*args)  # the first connection too, not only the recovery after failures
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
