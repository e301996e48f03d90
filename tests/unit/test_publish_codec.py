"""connectors.opcua.publish_codec against asyncua's own encoder and decoder, value by value."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from connectors.opcua.publish_codec import PublishDecodeError, decode_publish_response, ticks_to_us
from connectors.opcua.session import _as_float, _micros

T = datetime(2026, 12, 7, 8, 30, 15, 123456, tzinfo=UTC)
V = ua.VariantType


def values() -> list[ua.DataValue]:
    """Every shape the fast path and the fallback must read alike."""
    numeric = [(1.5, V.Double), (2.25, V.Float), (-7, V.Int32), (65000, V.UInt16), (True, V.Boolean),
               (-(2**40), V.Int64), (2**63 + 5, V.UInt64), (200, V.Byte), (-100, V.SByte), (-3, V.Int16),
               (4_000_000_000, V.UInt32)]
    out = [ua.DataValue(ua.Variant(v, t), SourceTimestamp=T + timedelta(seconds=i), ServerTimestamp=T)
           for i, (v, t) in enumerate(numeric)]
    out += [
        ua.DataValue(ua.Variant(3.0, V.Double)),  # no timestamps
        ua.DataValue(ua.Variant(4.0, V.Double), ServerTimestamp=T),  # server timestamp only
        ua.DataValue(ua.Variant(5.0, V.Double), StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
                     SourceTimestamp=T),
        ua.DataValue(ua.Variant(6.0, V.Double), StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)),
        ua.DataValue(ua.Variant("text", V.String), SourceTimestamp=T),
        ua.DataValue(ua.Variant([1.0, 2.0], V.Double), SourceTimestamp=T),
        ua.DataValue(ua.Variant(None, V.Null), SourceTimestamp=T),
        ua.DataValue(ua.Variant(ua.LocalizedText("x"), V.LocalizedText)),
        ua.DataValue(ua.Variant(7.0, V.Double), SourceTimestamp=datetime(1601, 1, 1, tzinfo=UTC)),
    ]
    return out


def publish_response(notifications: list, seq: int = 9, available=(7, 8), more: bool = True) -> bytes:
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 42
    response.Parameters.AvailableSequenceNumbers = list(available)
    response.Parameters.MoreNotifications = more
    response.Parameters.NotificationMessage = ua.NotificationMessage(SequenceNumber=seq, PublishTime=T,
                                                                     NotificationData=notifications)
    response.Parameters.Results = [ua.StatusCode()]
    return struct_to_binary(response)


def expected(dv: ua.DataValue) -> tuple:
    """What the codec must return for a DataValue, derived from asyncua's decoded object."""
    variant = dv.Value
    value = variant.Value if _as_float(variant.Value) is not None and not variant.is_array else variant
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    return status, value, _micros(dv.SourceTimestamp), _micros(dv.ServerTimestamp)


def test_every_value_shape_decodes_as_asyncua_decodes_it():
    dvs = values()
    items = [ua.MonitoredItemNotification(ClientHandle=100 + i, Value=dv) for i, dv in enumerate(dvs)]
    data = publish_response([ua.DataChangeNotification(MonitoredItems=items)])
    ours = decode_publish_response(data)
    theirs = struct_from_binary(ua.PublishResponse, Buffer(data))
    decoded = theirs.Parameters.NotificationMessage.NotificationData[0].MonitoredItems
    assert (ours.subscription_id, ours.sequence_number, ours.more_notifications) == (42, 9, True)
    assert ours.has_notifications and ours.status_changes == [] and ours.other_notifications == 0
    assert len(ours.items) == len(decoded) == len(dvs)
    for got, item in zip(ours.items, decoded, strict=True):
        assert got[0] == item.ClientHandle
        assert got[1:] == expected(item.Value), item
    # the timestamps are the same floats asyncua's datetimes give
    first = ours.items[0]
    assert first[3] / 1e6 == (decoded[0].Value.SourceTimestamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    assert type(ours.items[4][2]) is bool and ours.items[0][2] == 1.5


def test_status_changes_events_and_several_notifications_in_one_message():
    a = ua.DataChangeNotification(MonitoredItems=[ua.MonitoredItemNotification(1, ua.DataValue(1.0))])
    b = ua.DataChangeNotification(MonitoredItems=[ua.MonitoredItemNotification(2, ua.DataValue(2.0))])
    status = ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout))
    events = ua.EventNotificationList(Events=[])
    ours = decode_publish_response(publish_response([a, events, status, b]))
    assert [(h, v) for h, _, v, _, _ in ours.items] == [(1, 1.0), (2, 2.0)]
    assert ours.status_changes == [ua.StatusCodes.BadTimeout]
    assert ours.other_notifications == 1


def test_a_keep_alive_has_no_notifications():
    ours = decode_publish_response(publish_response([], seq=10, available=(), more=False))
    assert not ours.has_notifications and ours.items == [] and ours.sequence_number == 10
    assert not ours.more_notifications


def test_picoseconds_are_read_in_the_order_of_the_specification():
    """Part 6 §5.2.2.17: value, status, source timestamp, source picoseconds, server timestamp, server
    picoseconds. asyncua writes the picoseconds after both timestamps, so these bytes are built by hand."""
    dn = ua.DataChangeNotification(MonitoredItems=[ua.MonitoredItemNotification(5, ua.DataValue(1.0))])
    data = publish_response([dn])  # a message around one item, which is then replaced by the hand-built one
    src = int((T - datetime(1601, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 10 + 7  # 7 sub-µs ticks
    srv = src + 20_000_000
    item = struct.pack("<IBBd", 5, 0x01 | 0x04 | 0x10 | 0x08 | 0x20, 11, 9.5) + struct.pack("<qHqH", src, 111, srv,
                                                                                              222)
    body = struct.pack("<i", 1) + item + struct.pack("<i", -1)
    old_body = struct_to_binary(dn)
    start = data.index(old_body)
    length_at = start - 4
    patched = data[:length_at] + struct.pack("<i", len(body)) + body + data[start + len(old_body):]
    got = decode_publish_response(patched).items[0]
    assert got[0] == 5 and got[2] == 9.5
    assert got[3] == _micros(T) and got[4] == _micros(T) + 2_000_000


def test_datetimes_are_clamped_like_asyncua():
    assert ticks_to_us(0) == -11_644_473_600_000_000
    assert ticks_to_us(-5) == ticks_to_us(0)
    huge = ticks_to_us(2**63 - 1)
    assert huge == _micros(ua.uatypes.MAX_FILETIME_EPOCH_AS_UTC_DATETIME.replace(tzinfo=UTC))


@pytest.mark.parametrize("cut", [10, 40, 60, 90])
def test_a_truncated_message_is_a_decode_error(cut):
    items = [ua.MonitoredItemNotification(i, ua.DataValue(ua.Variant(float(i)), SourceTimestamp=T)) for i in range(3)]
    data = publish_response([ua.DataChangeNotification(MonitoredItems=items)])
    with pytest.raises(PublishDecodeError):
        decode_publish_response(data[:cut])
