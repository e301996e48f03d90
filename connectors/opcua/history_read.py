"""HistoryRead raw, paged: the one loop that reads an OPC-UA server's own history (connectors.opcua.backfill).

Written on asyncua's service layer (``client.uaclient.history_read``), not ``Node.read_raw_history``: that helper
never releases a continuation point it abandons and returns the bound values of every page again.

Contract of :func:`read_raw`:

- ``ReadRawModifiedDetails`` with ``IsReadModified = false``, ``ReturnBounds = false``, timestamps ``Both``
  (the caller stamps by the source's ``timestamp`` setting), ``NumValuesPerNode = values_per_request``;
- per node the interval is OPEN, (start, end): servers answer ``start <= ts <= end`` and a value at a bound is one
  the agent already holds (the last reading before the gap, the first live reading after it); values outside
  it, and values not later than the last one handed over for that node, are dropped (a server that answers
  "history older than asked" or repeats a page boundary does not duplicate anything);
- nodes of one request share StartTime/EndTime (the request's details are common): nodes whose starts lie
  within a second of each other are read together, from the earliest start to the latest end, each filtered to
  its own interval; a node whose page came back full of values before its own start is read alone next;
- paging follows each node's ContinuationPoint. A page as full as asked without a continuation point (asyncua's
  own server truncates so) is followed by a new read from the last timestamp received;
  ``BadContinuationPointInvalid`` (the server forgot it: restart, timeout) also restarts from the last
  timestamp received;
- whenever a read is abandoned with continuation points still open (cancellation for shutdown or reconnect, a
  lost session, an error, the caller stopping the iteration) they are released with
  ``ReleaseContinuationPoints = true``, best effort and bounded in time (a dead session frees them itself);
- ``BadHistoryOperationUnsupported``, ``BadHistoryOperationInvalid``, ``BadNotReadable``, ``BadNodeIdUnknown``,
  ``BadUserAccessDenied``: the node is reported as :class:`NoHistory` (its gap stays empty); any other Bad
  status as :class:`Failed` (the caller tries again at the next session);
- ``values_per_second`` is a rate limit over all nodes (sleep after each response in proportion to its values).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import Client, ua

_NO_HISTORY = frozenset({
    ua.StatusCodes.BadHistoryOperationUnsupported,
    ua.StatusCodes.BadHistoryOperationInvalid,
    ua.StatusCodes.BadNotReadable,
    ua.StatusCodes.BadNodeIdUnknown,
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadNotSupported,
    ua.StatusCodes.BadNotImplemented,
})
_CODE_MASK = 0xFFFF_0000
_RELEASE_TIMEOUT_SECS = 2.0
# Nodes whose starts are this close share one request (StartTime is common to a request).
_BATCH_START_TOLERANCE_SECS = 1.0
# Safety net against a server that keeps answering the same page: at most this many pages per node and read.
_MAX_PAGES = 1_000_000


@dataclass
class Span:
    """One node's work: history in the open interval (start, end), Unix seconds (the history's own timeline)."""

    key: str           # the caller's name for the node (a sensor)
    node_id: ua.NodeId
    start: float
    end: float
    solo: bool = False  # read in a request of its own (its page was full of values before its start)


@dataclass
class Page:
    """Values read for one node, in the server's (ascending) order, all inside its span and after ``start``."""

    key: str
    values: list[ua.DataValue]
    last_ts: float      # the node's position: every value at or before it has been handed over


@dataclass
class NoHistory:
    """The server has no history for this node (its status says why)."""

    key: str
    status: str


@dataclass
class Failed:
    """Another Bad status for this node (the server is busy, a timeout...): read again at the next session."""

    key: str
    status: str


@dataclass
class Done:
    """The node's span is read completely."""

    key: str


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def history_ts(dv: ua.DataValue) -> float | None:
    """The value's position in the history: its SourceTimestamp (ServerTimestamp when it has none), Unix s."""
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def micros(ts: float) -> int:
    """Unix seconds as integer microseconds: OPC-UA DateTimes travel as datetimes (microseconds), so bounds and
    timestamps are compared at that resolution (a float bound and the same instant read back compare equal)."""
    return round(ts * 1_000_000)


class RateLimit:
    """Sleep so that values handed over stay at or under ``per_second`` on average (wall clock)."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._t0 = time.monotonic()
        self._count = 0

    async def spend(self, n: int) -> None:
        self._count += n
        ahead = self._count / self.per_second - (time.monotonic() - self._t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
        elif ahead < -1.0:  # idle for a while: do not bank an unlimited burst
            self._t0, self._count = time.monotonic(), 0


async def _history_read(client: Client, details: ua.ReadRawModifiedDetails, nodes: list[ua.HistoryReadValueId],
                        release: bool = False) -> list[ua.HistoryReadResult]:
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.ReleaseContinuationPoints = release
    params.NodesToRead = nodes
    return await client.uaclient.history_read(params)


def _details(start: float, end: float, per_node: int) -> ua.ReadRawModifiedDetails:
    details = ua.ReadRawModifiedDetails()
    details.IsReadModified = False
    details.StartTime = to_datetime(start)
    details.EndTime = to_datetime(end)
    details.NumValuesPerNode = per_node
    details.ReturnBounds = False
    return details


async def release(client: Client, details: ua.ReadRawModifiedDetails, open_points: dict[ua.NodeId, bytes]) -> None:
    """Release continuation points the reader will not follow (best effort, bounded, never raises)."""
    if not open_points:
        return
    nodes = [ua.HistoryReadValueId(NodeId=n, ContinuationPoint=cp) for n, cp in open_points.items()]
    with suppress(Exception):
        async with asyncio.timeout(_RELEASE_TIMEOUT_SECS):
            await _history_read(client, details, nodes, release=True)
    open_points.clear()


async def read_raw(client: Client, spans: list[Span], values_per_request: int, nodes_per_request: int,
                   rate: RateLimit | float) -> AsyncIterator[Page | NoHistory | Failed | Done]:
    """Read the spans (see the module docstring); yields Pages, NoHistory and Done per node.

    Nodes are read ``nodes_per_request`` at a time, earliest start first. Raises what the session raises
    (TimeoutError, ConnectionError, ua.UaError for a failed service call): the caller resumes from the last
    ``Page.last_ts`` it made durable.
    """
    limit = rate if isinstance(rate, RateLimit) else RateLimit(rate)
    todo = sorted(spans, key=lambda s: s.start)
    while todo:
        first = todo[0]
        if first.solo:
            batch = [first]
        else:  # spans that start together (within a second) share a request; see the module docstring
            batch = [s for s in todo if not s.solo and s.start - first.start <= _BATCH_START_TOLERANCE_SECS]
            batch = batch[:nodes_per_request]
        chosen = {id(s) for s in batch}
        todo = [s for s in todo if id(s) not in chosen]
        again: list[Span] = []
        # aclosing: a caller that stops iterating closes the batch too, which releases its continuation points
        async with aclosing(_read_batch(client, batch, values_per_request, limit, again)) as items:
            async for item in items:
                yield item
        if again:  # nodes to read again from their last timestamp: back into the queue, earliest first
            todo = sorted(todo + again, key=lambda s: s.start)


async def _read_batch(client: Client, batch: list[Span], per_node: int, limit: RateLimit,
                      again: list[Span]) -> AsyncIterator[Page | NoHistory | Failed | Done]:
    details = _details(min(s.start for s in batch), max(s.end for s in batch), per_node)
    by_id = {s.node_id: s for s in batch}
    position = {s.node_id: s.start for s in batch}
    points: dict[ua.NodeId, bytes | None] = {s.node_id: None for s in batch}  # None: first page
    held: dict[ua.NodeId, bytes] = {}  # continuation points the server keeps for us and we have not sent back
    pages = 0
    try:
        while points:
            pages += 1
            nodes = [ua.HistoryReadValueId(NodeId=n, ContinuationPoint=cp) for n, cp in points.items()]
            held = {n: cp for n, cp in points.items() if cp}
            results = await _history_read(client, details, nodes)
            held = {n: r.ContinuationPoint for n, r in zip(points, results, strict=True) if r.ContinuationPoint}
            follow: dict[ua.NodeId, bytes | None] = {}
            handed = 0
            for node, result in zip(points, results, strict=True):
                span = by_id[node]
                code = result.StatusCode.value & _CODE_MASK if result.StatusCode is not None else 0
                if code == ua.StatusCodes.BadContinuationPointInvalid:
                    held.pop(node, None)
                    again.append(Span(span.key, node, position[node], span.end))  # restart from the last ts
                    continue
                if code & 0x8000_0000:  # Bad
                    held.pop(node, None)
                    status = result.StatusCode.name
                    yield NoHistory(span.key, status) if code in _NO_HISTORY else Failed(span.key, status)
                    continue
                raw = result.HistoryData.DataValues if result.HistoryData is not None else None
                values = []
                last = position[node]
                last_us, end_us = micros(last), micros(span.end)
                for dv in raw or ():
                    ts = history_ts(dv)
                    if ts is None or micros(ts) <= last_us or micros(ts) >= end_us:
                        continue  # a bound value, a repeated page edge, or outside the gap
                    values.append(dv)
                    last, last_us = ts, micros(ts)
                position[node] = last
                handed += len(values)
                cp = result.ContinuationPoint or None
                if cp and pages < _MAX_PAGES:
                    follow[node] = cp
                elif raw and len(raw) >= per_node:
                    # a full page and no point (asyncua's server truncates so): read on from the last value;
                    # a page full of values before this node's own start: read it alone from its start
                    held.pop(node, None)
                    again.append(Span(span.key, node, last, span.end, solo=not values))
                if values:
                    yield Page(span.key, values, last)
                if node not in follow and not any(a.node_id == node for a in again):
                    yield Done(span.key)
            stale = {n: cp for n, cp in held.items() if n not in follow}
            if stale:
                await release(client, details, stale)
            points = follow
            if handed:
                await limit.spend(handed)
    finally:
        if held:
            # abandoned (cancelled for shutdown or reconnect, session lost, error, caller stopped): free what
            # the server keeps for us
            await asyncio.shield(release(client, details, dict(held)))
