"""Real pymodbus servers on loopback (and a socat serial pair) for the Modbus connector tests and benchmark.

Servers use the forward ``pymodbus.simulator`` form (SimDevice/SimData) with four separate tables, so
coils and discrete inputs are addressed bit by bit and registers register by register, as on a real device.
Addresses not covered by a block answer "illegal data address", as a real device does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.core.clock import SystemClock
from tests.ports import free_port

Blocks = dict[int, Sequence[int]] | dict[int, Sequence[bool]]

FC_READ = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
FC_WRITE = {"coil": 15, "discrete": 15, "holding": 16, "input": 16}  # the simulator maps by function code


def _blocks(blocks: Blocks | None, bits: bool) -> list[SimData]:
    """SimData entries for ``{address: values}``; an empty table still needs one (unreadable) entry."""
    if not blocks:
        return [
            SimData(
                65000,
                values=[False] * 16 if bits else [0],
                datatype=DataType.BITS if bits else DataType.REGISTERS,
            )
        ]
    kind = DataType.BITS if bits else DataType.REGISTERS
    return [SimData(addr, values=list(values), datatype=kind) for addr, values in sorted(blocks.items())]


def sim_device(
    device_id: int,
    *,
    coils: Blocks | None = None,
    discrete: Blocks | None = None,
    holding: Blocks | None = None,
    input: Blocks | None = None,
    action=None,
) -> SimDevice:
    """A device with four separate tables; each table is ``{start address: [values, ...]}``."""
    return SimDevice(
        device_id,
        simdata=(
            _blocks(coils, True),
            _blocks(discrete, True),
            _blocks(holding, False),
            _blocks(input, False),
        ),
        action=action,
    )


@dataclass
class Gate:
    """A device action (pass ``gate.action`` to ``sim_device``) that plays dead or busy on demand.

    ``dead`` set: requests hang until ``release()``; ``busy_left`` > 0: that many requests answer busy (6).
    ``requests`` counts every request the device received.
    """

    dead: bool = False
    busy_left: int = 0
    requests: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def action(self, function_code, start_address, address, count, registers, set_values):
        self.requests += 1
        if self.dead:
            await self._release.wait()
        if self.busy_left > 0:
            self.busy_left -= 1
            return ExcCodes.DEVICE_BUSY
        return None

    def release(self) -> None:
        self._release.set()


class TickClock(SystemClock):
    """Wall time, plus an event per ``sleep_until`` call (one per device poll) that tests can await."""

    def __init__(self) -> None:
        self.ticks = 0
        self._tick = asyncio.Event()

    async def sleep_until(self, ts: float) -> None:
        self.ticks += 1
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        await super().sleep_until(ts)

    async def wait_ticks(self, n: int, timeout: float = 10.0) -> None:
        """Return once ``n`` more ticks have happened."""
        target = self.ticks + n
        async with asyncio.timeout(timeout):
            while self.ticks < target:
                await self._tick.wait()


class Reader:
    """Runs ``connector.readings()`` in a task and hands the batches over one at a time."""

    def __init__(self, connector) -> None:
        self.connector = connector
        self._batches: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for batch in self.connector.readings():
                self._batches.put_nowait(batch)
        except Exception as exc:  # surfaced by next(), so a connector bug fails the test at once
            self._batches.put_nowait(exc)

    async def next(self, timeout: float = 5.0, where=None) -> list:
        """The next batch (the next one for which ``where(batch)`` holds, if given)."""
        async with asyncio.timeout(timeout):
            while True:
                batch = await self._batches.get()
                if isinstance(batch, Exception):
                    raise batch
                if where is None or where(batch):
                    return batch

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class TcpPeer:
    server: ModbusTcpServer
    port: int

    async def get(self, device_id: int, table: str, address: int, count: int = 1) -> list:
        return await self.server.async_getValues(device_id, FC_READ[table], address, count)

    async def set(self, device_id: int, table: str, address: int, values: list) -> None:
        await self.server.async_setValues(device_id, FC_WRITE[table], address, values)

    async def stop(self) -> None:
        await self.server.shutdown()


async def start_tcp(devices: SimDevice | list[SimDevice], port: int = 0, **server_args) -> TcpPeer:
    """A Modbus TCP server on 127.0.0.1 (``port`` 0: a free one below the ephemeral range, so that a restart on
    the same port finds it free; see tests/ports.py), listening when this returns.

    ``server_args`` go to ModbusTcpServer (e.g. ``framer=FramerType.RTU`` for an RTU-over-TCP converter).
    """
    server = ModbusTcpServer(devices, address=("127.0.0.1", port or free_port()), **server_args)
    await server.serve_forever(background=True)
    bound = server.transport.sockets[0].getsockname()[1]
    return TcpPeer(server, bound)


@contextlib.asynccontextmanager
async def tcp_peer(devices: SimDevice | list[SimDevice], **server_args) -> AsyncIterator[TcpPeer]:
    peer = await start_tcp(devices, **server_args)
    try:
        yield peer
    finally:
        await peer.stop()


@contextlib.asynccontextmanager
async def socat_pair(directory: Path) -> AsyncIterator[tuple[str, str]]:
    """Two linked pseudo-terminals ``(ttyA, ttyB)`` from socat; ready when socat says so on stderr.

    socat is required (CI installs it); a missing binary is a failure, not a skip.
    """
    socat = shutil.which("socat") or "/usr/bin/socat"
    if not os.path.exists(socat):
        raise RuntimeError("socat is required for the RTU tests (apt-get install socat)")
    a, b = str(directory / "ttyA"), str(directory / "ttyB")
    proc = await asyncio.create_subprocess_exec(
        socat,
        "-d",
        "-d",
        f"pty,raw,echo=0,link={a}",
        f"pty,raw,echo=0,link={b}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            while b"starting data transfer loop" not in (line := await proc.stderr.readline()):
                if not line:
                    raise RuntimeError("socat exited before linking the pair")
        # Keep reading socat's log so a full pipe can never block it.
        drain = asyncio.create_task(proc.stderr.read())
        yield a, b
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def serial_peer(devices: SimDevice | list[SimDevice], tty: str, baudrate: int = 115200):
    """A Modbus RTU server (pymodbus serial server, RTU framer) on ``tty``."""
    server = ModbusSerialServer(devices, framer=FramerType.RTU, port=tty, baudrate=baudrate, parity="N")
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()
