"""Modbus register ⇄ value conversion. Pure functions over ``struct``; no pymodbus, no I/O.

Types and the registers (16-bit words) they take:

    bool                          one coil or discrete input (a bit table); no registers
    bit                           1 register; the value is bit ``bit`` (0 = least significant) of the
                                  register as transmitted; ``order`` does not apply
    int16  uint16                 1 register
    int32  uint32  float32        2 registers
    int64  uint64  float64        4 registers

Byte orders. Write the value's big-endian bytes as A B C D (32-bit) or A B C D E F G H (64-bit), A being the
most significant byte. Registers are listed in address order, each shown high byte first as it travels on
the wire:

    order  16-bit  32-bit    64-bit            meaning
    ABCD   [AB]    [AB, CD]  [AB, CD, EF, GH]  big-endian words, big-endian bytes (the Modbus default)
    DCBA   [BA]    [DC, BA]  [HG, FE, DC, BA]  little-endian words, bytes swapped: fully little-endian
    BADC   [BA]    [BA, DC]  [BA, DC, FE, HG]  big-endian words, bytes swapped in each word
    CDAB   [AB]    [CD, AB]  [GH, EF, CD, AB]  little-endian words ("word swap"), big-endian bytes

So an order is two independent switches: *word swap* (DCBA, CDAB) reverses the register sequence, and
*byte swap* (DCBA, BADC) swaps the two bytes inside each register. For a 1-register value only the byte
swap matters.

Scaling: the engineering value is ``raw * scale + offset`` (``decode_scaled``), with booleans as 0/1.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

ORDERS: tuple[str, ...] = ("ABCD", "DCBA", "BADC", "CDAB")

# type → (struct format character, registers)
_REGISTER_TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float64": ("d", 4),
}
BIT_TABLE_TYPES: tuple[str, ...] = ("bool",)
REGISTER_TABLE_TYPES: tuple[str, ...] = ("bit", *_REGISTER_TYPES)
TYPES: tuple[str, ...] = (*BIT_TABLE_TYPES, *REGISTER_TABLE_TYPES)

# Types a register span of a given length may hold: what `probe` offers as alternative interpretations.
TYPES_BY_WIDTH: dict[int, tuple[str, ...]] = {
    1: ("int16", "uint16"),
    2: ("float32", "int32", "uint32"),
    4: ("float64", "int64", "uint64"),
}


def register_count(type_: str) -> int:
    """Registers a value of ``type_`` spans; ``bool`` spans one bit of a coil/discrete table, counted as 1."""
    if type_ in ("bool", "bit"):
        return 1
    try:
        return _REGISTER_TYPES[type_][1]
    except KeyError:
        raise ValueError(f"unknown Modbus type {type_!r}; allowed: {', '.join(TYPES)}") from None


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown byte order {order!r}; allowed: {', '.join(ORDERS)}")


def _reorder(words: list[bytes], order: str) -> list[bytes]:
    """Apply ``order``'s word swap and byte swap. Both are involutions, so this maps wire ⇄ big-endian."""
    if order in ("DCBA", "CDAB"):
        words = words[::-1]
    if order in ("DCBA", "BADC"):
        words = [w[::-1] for w in words]
    return words


def registers_to_bytes(registers: Sequence[int], order: str = "ABCD") -> bytes:
    """The big-endian byte string of a value sent as ``registers`` in ``order``."""
    _check_order(order)
    words = [struct.pack(">H", r & 0xFFFF) for r in registers]
    return b"".join(_reorder(words, order))


def bytes_to_registers(data: bytes, order: str = "ABCD") -> list[int]:
    """Registers that carry the big-endian byte string ``data`` (even length) in ``order``."""
    _check_order(order)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    return [struct.unpack(">H", w)[0] for w in _reorder(words, order)]


def decode(registers: Sequence[int], type_: str, order: str = "ABCD", bit: int | None = None) -> int | float:
    """The raw value of ``type_`` held in ``registers`` (exactly ``register_count(type_)`` of them).

    ``bit`` is required for type ``bit``. Returns an int (0/1 for ``bit``) or a float; not scaled.
    """
    width = register_count(type_)
    if type_ == "bool":
        raise ValueError("type 'bool' lives in coil/discrete tables; decode the bit directly")
    if len(registers) != width:
        raise ValueError(f"type {type_} needs {width} registers, got {len(registers)}")
    if type_ == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise ValueError("type 'bit' needs bit in 0..15")
        return (registers[0] >> bit) & 1
    fmt, _ = _REGISTER_TYPES[type_]
    return struct.unpack(">" + fmt, registers_to_bytes(registers, order))[0]


def decode_scaled(
    registers: Sequence[int],
    type_: str,
    order: str = "ABCD",
    bit: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
) -> float:
    """``decode(...) * scale + offset`` as a float64 (NaN/inf pass through for the caller to judge)."""
    return float(decode(registers, type_, order, bit)) * scale + offset


def scale_bool(value: bool, scale: float = 1.0, offset: float = 0.0) -> float:
    """A coil or discrete input as a float64: 1.0/0.0, then ``* scale + offset``."""
    return (1.0 if value else 0.0) * scale + offset


def encode(value: float | int | bool, type_: str, order: str = "ABCD") -> list[int]:
    """Registers that carry ``value`` as ``type_`` in ``order`` (the inverse of ``decode``).

    Integer types take integral values only and check the range (ValueError otherwise); float32 raises
    ValueError when the value overflows it. ``bool`` and ``bit`` cannot be encoded to registers: a coil is
    written as a boolean, and one bit of a register needs a read-modify-write the caller must own.
    """
    if type_ in ("bool", "bit"):
        raise ValueError(f"type {type_!r} cannot be encoded to registers")
    register_count(type_)  # raises for unknown types
    fmt, _ = _REGISTER_TYPES[type_]
    if fmt in "fd":
        number: int | float = float(value)
    else:
        number = _as_integer(value, type_)
    try:
        data = struct.pack(">" + fmt, number)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit {type_}: {exc}") from None
    return bytes_to_registers(data, order)


def _as_integer(value: float | int | bool, type_: str) -> int:
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{type_} takes an integral value, got {value!r}")
        value = int(value)
    return int(value)
