"""connectors.modbus.codec: known vectors for every type × order, round trips, and refusals."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.modbus import codec

# (type, value, {order: registers}) with all-distinct bytes, written out by hand from the byte layout in the
# codec's docstring, so the codec is checked against the definition and not against itself.
VECTORS: list[tuple[str, int | float, dict[str, list[int]]]] = [
    ("int16", 0x1234, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    ("int16", -12345, {"ABCD": [0xCFC7], "CDAB": [0xCFC7], "BADC": [0xC7CF], "DCBA": [0xC7CF]}),
    ("uint16", 0xABCD, {"ABCD": [0xABCD], "CDAB": [0xABCD], "BADC": [0xCDAB], "DCBA": [0xCDAB]}),
    (
        "int32",
        0x01020304,
        {
            "ABCD": [0x0102, 0x0304],
            "DCBA": [0x0403, 0x0201],
            "BADC": [0x0201, 0x0403],
            "CDAB": [0x0304, 0x0102],
        },
    ),
    (
        "int32",
        -2,
        {
            "ABCD": [0xFFFF, 0xFFFE],
            "DCBA": [0xFEFF, 0xFFFF],
            "BADC": [0xFFFF, 0xFEFF],
            "CDAB": [0xFFFE, 0xFFFF],
        },
    ),
    (
        "uint32",
        0xDEADBEEF,
        {
            "ABCD": [0xDEAD, 0xBEEF],
            "DCBA": [0xEFBE, 0xADDE],
            "BADC": [0xADDE, 0xEFBE],
            "CDAB": [0xBEEF, 0xDEAD],
        },
    ),
    (
        "float32",
        struct.unpack(">f", bytes.fromhex("42f6e979"))[0],  # 123.456 as float32
        {
            "ABCD": [0x42F6, 0xE979],
            "DCBA": [0x79E9, 0xF642],
            "BADC": [0xF642, 0x79E9],
            "CDAB": [0xE979, 0x42F6],
        },
    ),
    (
        "int64",
        0x0102030405060708,
        {
            "ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
            "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
            "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
            "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
        },
    ),
    (
        "uint64",
        0xFEDCBA9876543210,
        {
            "ABCD": [0xFEDC, 0xBA98, 0x7654, 0x3210],
            "DCBA": [0x1032, 0x5476, 0x98BA, 0xDCFE],
            "BADC": [0xDCFE, 0x98BA, 0x5476, 0x1032],
            "CDAB": [0x3210, 0x7654, 0xBA98, 0xFEDC],
        },
    ),
    (
        "float64",
        -1234.5678,
        {
            "ABCD": [0xC093, 0x4A45, 0x6D5C, 0xFAAD],
            "DCBA": [0xADFA, 0x5C6D, 0x454A, 0x93C0],
            "BADC": [0x93C0, 0x454A, 0x5C6D, 0xADFA],
            "CDAB": [0xFAAD, 0x6D5C, 0x4A45, 0xC093],
        },
    ),
]
CASES = [(t, v, o, regs) for t, v, by_order in VECTORS for o, regs in by_order.items()]


@pytest.mark.parametrize(("type_", "value", "order", "registers"), CASES)
def test_known_vectors_decode_and_encode(type_, value, order, registers):
    assert codec.decode(registers, type_, order) == value
    assert codec.encode(value, type_, order) == registers


def test_every_register_type_and_order_has_a_vector():
    covered = {(t, o) for t, _, o, _ in CASES}
    wanted = {(t, o) for t in codec.REGISTER_TABLE_TYPES if t != "bit" for o in codec.ORDERS}
    assert covered >= wanted


@pytest.mark.parametrize(
    ("type_", "count"),
    [
        ("bool", 1),
        ("bit", 1),
        ("int16", 1),
        ("uint16", 1),
        ("int32", 2),
        ("uint32", 2),
        ("float32", 2),
        ("int64", 4),
        ("uint64", 4),
        ("float64", 4),
    ],
)
def test_register_count(type_, count):
    assert codec.register_count(type_) == count


def test_bit_reads_the_register_as_transmitted():
    assert [codec.decode([0b1000_0000_0000_0101], "bit", bit=b) for b in (0, 1, 2, 15)] == [1, 0, 1, 1]
    # order does not apply to a bit
    assert codec.decode([0x0001], "bit", "DCBA", bit=0) == 1


def test_scale_and_offset():
    assert codec.decode_scaled([650], "int16", scale=0.1, offset=-40) == pytest.approx(25.0)
    assert codec.decode_scaled([0xFFFF], "int16", scale=2, offset=1) == -1.0
    assert codec.scale_bool(True, 10, 1) == 11.0
    assert codec.scale_bool(False, 10, 1) == 1.0


def test_nan_passes_through_for_the_caller_to_judge():
    assert math.isnan(codec.decode_scaled([0x7FC0, 0x0000], "float32"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: codec.decode([1], "int32"), "needs 2 registers"),
        (lambda: codec.decode([1], "bit"), "bit in 0..15"),
        (lambda: codec.decode([1], "bit", bit=16), "bit in 0..15"),
        (lambda: codec.decode([1], "bool"), "coil/discrete"),
        (lambda: codec.decode([1], "int17"), "unknown Modbus type"),
        (lambda: codec.decode([1, 2], "int32", "ACBD"), "unknown byte order"),
        (lambda: codec.encode(40000, "int16"), "does not fit int16"),
        (lambda: codec.encode(-1, "uint32"), "does not fit uint32"),
        (lambda: codec.encode(1.5, "int32"), "integral value"),
        (lambda: codec.encode(math.nan, "uint16"), "integral value"),
        (lambda: codec.encode(1e40, "float32"), "does not fit float32"),
        (lambda: codec.encode(True, "bit"), "cannot be encoded"),
    ],
)
def test_refusals(call, match):
    with pytest.raises(ValueError, match=match):
        call()


INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


@given(data=st.data(), type_=st.sampled_from(sorted(INT_RANGES)), order=st.sampled_from(codec.ORDERS))
def test_integer_round_trip(data, type_, order):
    lo, hi = INT_RANGES[type_]
    value = data.draw(st.integers(lo, hi))
    registers = codec.encode(value, type_, order)
    assert len(registers) == codec.register_count(type_)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert codec.decode(registers, type_, order) == value


@given(value=st.floats(allow_nan=False), order=st.sampled_from(codec.ORDERS))
def test_float64_round_trip(value, order):
    assert codec.decode(codec.encode(value, "float64", order), "float64", order) == value


@given(registers=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), order=st.sampled_from(codec.ORDERS))
def test_float32_registers_round_trip_bit_exactly(registers, order):
    # Through bytes, not float values: NaN payloads must survive too.
    data = codec.registers_to_bytes(registers, order)
    assert codec.bytes_to_registers(data, order) == registers
