"""Modbus request planning: the fewest merged read requests per device that respect the caps (registers per
request, gap to bridge), one request per point when asked or after an "illegal data address" answer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from connectors.modbus.config import BIT_TABLES, TABLE_ORDER, ModbusDevice

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
