"""Modbus probe formatting: a point's address and its raw words read every plausible way (type, word order),
so an operator can pick the right `type` and `order` from one probe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.modbus import codec
from connectors.modbus.config import BIT_TABLES, ModbusDevice, ModbusPoint


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
