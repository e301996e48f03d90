"""PublishResponse bytes → the few fields the agent uses, without building asyncua objects per value.

Why: decoding a PublishResponse with asyncua's generic decoder (``struct_from_binary``) builds a
MonitoredItemNotification, a DataValue, a Variant, a StatusCode and two datetimes for every value, about 8 µs a
value in CPython: more than everything else the agent does with a reading. This module reads the same bytes
with one precompiled ``struct.Struct`` per item layout and hands back plain tuples.

Contract: :func:`decode_publish_response` takes the body of a PublishResponse message (what asyncua's
``UASocketProtocol.send_request`` returns for a PublishRequest) and returns a :class:`Publish`. Everything the
fast path does not know is decoded by asyncua's own decoders at that position, so any valid message decodes:

- DataChangeNotification: each item becomes ``(client_handle, status, value, source_us, server_us)``:
  ``status`` the StatusCode as an int (0 = Good when the server sent none); ``value`` a Python bool/int/float
  for a scalar of a numeric type (Boolean, SByte…UInt64, Float, Double), the decoded ``ua.Variant`` for any
  other variant (strings, arrays, structures…), or None when the DataValue has no value; ``source_us`` and
  ``server_us`` the timestamps as integer microseconds since the Unix epoch (None when absent), clamped exactly
  as asyncua clamps DateTimes, so ``us / 1e6`` is bit-for-bit the float asyncua's datetime would give.
- StatusChangeNotification: its status (int) in ``Publish.status_changes``.
- EventNotificationList and unknown notification types: counted in ``Publish.other_notifications`` (the agent
  subscribes to data changes only).

DataValue field order is that of OPC-UA Part 6 §5.2.2.17 (value, status, source timestamp, source picoseconds,
server timestamp, server picoseconds). Malformed bytes raise ``PublishDecodeError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import (
    nodeid_from_binary,
    struct_from_binary,
    variant_from_binary,
)

# DateTime: 100 ns ticks since 1601-01-01; asyncua clamps below 0 to 1601 and from MAX_OPC_FILETIME to its max
_EPOCH_OFFSET_US = 11_644_473_600_000_000
_MAX_TICKS = ua.uatypes.MAX_OPC_FILETIME
_MAX_US = round((ua.uatypes.MAX_FILETIME_EPOCH_AS_UTC_DATETIME.replace(tzinfo=UTC)
                 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)

# Variant type id → struct format of a scalar (OPC-UA Part 6 §5.1.2); Boolean decodes to bool
_SCALAR_FORMATS = {1: "?", 2: "b", 3: "B", 4: "h", 5: "H", 6: "i", 7: "I", 8: "q", 9: "Q", 10: "f", 11: "d"}
_DATA_CHANGE = ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary
_STATUS_CHANGE = ua.ObjectIds.StatusChangeNotification_Encoding_DefaultBinary

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_ITEM_HEAD = struct.Struct("<IB")  # ClientHandle, DataValue encoding mask


class PublishDecodeError(ValueError):
    """The bytes are not a well-formed PublishResponse."""


@dataclass
class Publish:
    """The fields of a PublishResponse the connector uses (see the module docstring)."""

    service_result: int
    subscription_id: int
    sequence_number: int
    more_notifications: bool
    items: list[tuple] = field(default_factory=list)
    status_changes: list[int] = field(default_factory=list)
    other_notifications: int = 0
    has_notifications: bool = False


def ticks_to_us(ticks: int) -> int:
    """OPC-UA DateTime ticks → integer µs since the Unix epoch, clamped like asyncua's ``win_epoch_to_datetime``."""
    if ticks >= _MAX_TICKS:
        return _MAX_US
    if ticks < 0:
        ticks = 0
    return ticks // 10 - _EPOCH_OFFSET_US


class _Layout:
    """One fixed-size item layout: (DataValue mask, scalar variant type) → a Struct and where each field sits."""

    __slots__ = ("server", "size", "source", "status", "struct", "value")

    def __init__(self, mask: int, vtype: int) -> None:
        fmt = "<IB"
        index = 2
        self.value = self.status = self.source = self.server = -1
        if mask & 0x01:
            fmt += "B" + _SCALAR_FORMATS[vtype]
            self.value = index + 1
            index += 2
        if mask & 0x02:
            fmt += "I"
            self.status = index
            index += 1
        if mask & 0x04:
            fmt += "q"
            self.source = index
            index += 1
        if mask & 0x10:
            fmt += "H"
            index += 1
        if mask & 0x08:
            fmt += "q"
            self.server = index
            index += 1
        if mask & 0x20:
            fmt += "H"
            index += 1
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size


_LAYOUTS: dict[tuple[int, int], _Layout] = {}


def _layout(mask: int, vtype: int) -> _Layout | None:
    """The layout of an item whose value is absent or a numeric scalar; None for anything else."""
    key = (mask, vtype)
    found = _LAYOUTS.get(key)
    if found is None:
        if mask & 0xC0 or (mask & 0x01 and vtype not in _SCALAR_FORMATS):
            return None
        found = _LAYOUTS[key] = _Layout(mask, vtype)
    return found


def _slow_item(data: bytes, pos: int) -> tuple[tuple, int]:
    """One item whose value is not a numeric scalar (or an unknown mask bit): asyncua decodes the variant."""
    handle, mask = _ITEM_HEAD.unpack_from(data, pos)
    pos += 5
    value = None
    status = 0
    source = server = None
    if mask & 0x01:
        buf = Buffer(data, pos)
        value = variant_from_binary(buf)
        pos = len(data) - len(buf)
        if value.VariantType.value in _SCALAR_FORMATS and not value.is_array:
            value = value.Value
    if mask & 0x02:
        status = _U32.unpack_from(data, pos)[0]
        pos += 4
    if mask & 0x04:
        source = ticks_to_us(struct.unpack_from("<q", data, pos)[0])
        pos += 8
    if mask & 0x10:
        pos += 2
    if mask & 0x08:
        server = ticks_to_us(struct.unpack_from("<q", data, pos)[0])
        pos += 8
    if mask & 0x20:
        pos += 2
    return (handle, status, value, source, server), pos


def _data_change_items(data: bytes, pos: int, end: int, out: list[tuple]) -> None:
    """Append the items of one DataChangeNotification body (``data[pos:end]``) to ``out``."""
    count = _I32.unpack_from(data, pos)[0]
    pos += 4
    layouts = _LAYOUTS
    epoch = _EPOCH_OFFSET_US
    max_ticks = _MAX_TICKS
    append = out.append
    for _ in range(max(count, 0)):
        mask = data[pos + 4]
        vtype = data[pos + 5] if mask & 0x01 else 0
        layout = layouts.get((mask, vtype)) or _layout(mask, vtype)
        if layout is None:
            item, pos = _slow_item(data, pos)
            append(item)
            continue
        t = layout.struct.unpack_from(data, pos)
        pos += layout.size
        i = layout.source
        source = None if i < 0 else (t[i] // 10 - epoch if 0 <= t[i] < max_ticks else ticks_to_us(t[i]))
        i = layout.server
        server = None if i < 0 else (t[i] // 10 - epoch if 0 <= t[i] < max_ticks else ticks_to_us(t[i]))
        append((t[0], 0 if layout.status < 0 else t[layout.status], None if layout.value < 0 else t[layout.value],
                source, server))
    # the DiagnosticInfos that may follow are not used (we never request them)
    if pos > end:
        raise PublishDecodeError("DataChangeNotification runs past its ExtensionObject body")


def decode_publish_response(body) -> Publish:
    """Decode a PublishResponse body (bytes, memoryview or asyncua Buffer); see the module docstring."""
    data = bytes(body)
    try:
        return _decode(data)
    except (struct.error, IndexError, ua.UaError, ValueError) as exc:
        if isinstance(exc, PublishDecodeError):
            raise
        raise PublishDecodeError(f"malformed PublishResponse: {exc}") from exc


def _decode(data: bytes) -> Publish:
    buf = Buffer(data)
    nodeid_from_binary(buf)  # the response's type id
    header = struct_from_binary(ua.ResponseHeader, buf)
    pos = len(data) - len(buf)
    subscription_id = _U32.unpack_from(data, pos)[0]
    pos += 4
    n_available = _I32.unpack_from(data, pos)[0]
    pos += 4 + 4 * max(n_available, 0)  # AvailableSequenceNumbers: not used
    more = data[pos] != 0
    pos += 1
    sequence_number = _U32.unpack_from(data, pos)[0]
    pos += 4 + 8  # SequenceNumber, PublishTime
    n_notifications = _I32.unpack_from(data, pos)[0]
    pos += 4
    out = Publish(header.ServiceResult.value, subscription_id, sequence_number, more,
                  has_notifications=n_notifications > 0)
    for _ in range(max(n_notifications, 0)):
        buf = Buffer(data, pos)
        type_id = nodeid_from_binary(buf)
        pos = len(data) - len(buf)
        encoding = data[pos]
        pos += 1
        if encoding != 1:  # no body (0) or an XML body (2): nothing we can use
            if encoding == 2:
                pos += 4 + max(_I32.unpack_from(data, pos)[0], 0)
            out.other_notifications += 1
            continue
        length = _I32.unpack_from(data, pos)[0]
        pos += 4
        end = pos + length
        if length < 0 or end > len(data):
            raise PublishDecodeError("an ExtensionObject body runs past the message")
        identifier = type_id.Identifier if type_id.NamespaceIndex == 0 else None
        if identifier == _DATA_CHANGE:
            _data_change_items(data, pos, end, out.items)
        elif identifier == _STATUS_CHANGE:
            out.status_changes.append(_U32.unpack_from(data, pos)[0])
        else:
            out.other_notifications += 1
        pos = end
    return out

