"""Modbus write-back (the write_back alarm hook): one coil or register write per call, encoded as the
point's type and word order."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal

from agent.core.errors import ConnectionLost, ConnectorError, TransitionLog
from connectors.base import SourceStats
from connectors.modbus import codec
from connectors.modbus.config import ModbusDevice, ModbusSourceConfig
from connectors.modbus.io import _call, _ExceptionAnswer, _Link, _NoAnswer, log

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
