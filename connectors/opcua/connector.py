"""OPC-UA source: subscription (default) or polled reads, on asyncua.

This is the only module that uses asyncua's subscription API. It talks to asyncua's raw service layer
(``client.uaclient``) for subscriptions and reads: one PublishResponse becomes one batch of Readings, with no
per-value task or queue hop, and the connector keeps full control of keep-alive and lifetime counts.

Timestamps
    ``timestamp = "source"`` (default) uses the DataValue's SourceTimestamp (falling back to the
    ServerTimestamp, then to the received time when the server sends neither); ``"server"`` the
    ServerTimestamp; ``"received"`` the injected Clock's ``now()`` when the PublishResponse or read response
    arrived. A source/server timestamp further than ``max_clock_skew_secs`` from the received time is replaced
    by the received time and counted in ``OpcUaConnector.retimed`` (a PLC clock that drifted, or the initial
    value of a point that has not changed for hours: in both cases "now" is the truthful time of the value).
    With a Clock whose speed is not 1 (a ScaledClock in demos and tests) the server's wall-clock timestamps do
    not belong to the agent's timeline, so the received time is used for every reading.

Freshness and validity (rule 2a: a value holds while the source vouches for it)
    A reading whose source timestamp (or server timestamp when there is no source timestamp) and value equal
    those of the last reading emitted for that sensor is the same sample and is dropped: subscriptions deliver
    changes only, and in poll mode an unchanged point reads back the same DataValue. Equality, not "later
    than", is the test, so a device clock stepped backwards (NTP, DST bugs) does not silence a sensor. A point
    that stays constant is therefore not repeated; its value holds downstream for as long as the session
    vouches for it. When the session or subscription is lost, a validity-end marker for every sensor is
    emitted at the last instant the server answered; a Bad/Uncertain (or unusable) sample ends its sensor's
    validity at once. After a (re)connect the first sample of each sensor re-vouches for its value even when it
    is the same sample: it is emitted, stamped no earlier than the moment the session came up. A server that
    sends no timestamps at all gives no way to tell, so in poll mode each poll is emitted with the received
    time (the server vouched for the value, with a Good status, at that instant).

Liveness is the transport's: ``stats.last_alive_ts`` moves on every publish response (keep-alives included)
and every successful poll, and ``stats.connected`` is true while a session is up and not stale.

Quality
    Bad and Uncertain values give no reading and are counted per sensor in ``stats.bad_quality``; statuses
    that say the address is wrong or not allowed (BadNodeIdUnknown, BadNotReadable, BadUserAccessDenied, ...)
    are configuration problems instead, counted in ``stats.read_errors`` and logged once per sensor. Booleans
    become 0.0/1.0; other non-numeric values are counted in ``stats.read_errors`` and logged once per sensor.

Recovery
    A lost session (socket closed, keep-alive probe failed, a Bad status change on the subscription, or no
    notification nor keep-alive for ``stale_after_intervals`` publishing intervals) tears the client down
    completely and builds a new one: new socket, same security settings, nodes resolved again, subscription
    created again. Attempts are spaced by capped exponential backoff with jitter, in wall-clock time. The first
    failure is logged at WARNING, repeats at DEBUG, recovery once at INFO. A rejected user identity is logged
    once with a clear message and retried with the same backoff.

Server identity
    With a secured policy the server certificate is pinned on first use (``<state-dir>/trust/<source>.der``)
    or checked against ``security.server_certificate`` / ``security.trust_dir``, inside CreateSession and
    before ActivateSession sends the username and password (connectors.opcua.trust). A certificate that is
    not trusted is refused with both fingerprints in the message, ``stats.untrusted`` holds the reason, and
    the session is retried with the same backoff, so accepting the new certificate (``l4e-agent probe
    --accept-certificate``) restores the data without a restart. Policy None proves no identity: a username
    over it is a configuration error unless ``security.allow_credentials_over_none`` is true.

Intervals (``publishing_interval_ms``, ``sampling_interval_ms``, ``poll_interval_ms``, backoff) are wall-clock
time, whatever the Clock's speed: they are the server's time.
"""


from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua

from agent.core.clock import Backoff, Clock
from agent.core.errors import ConnectionLost, ConnectorError, TransitionLog
from agent.core.model import Reading, validity_end
from connectors.base import ProbeLine, ProbeReport, SourceStats
from connectors.opcua.config import NodeConfig, OpcUaSourceConfig
from connectors.opcua.session import (
    _ADDRESS_ERRORS,
    _AUTH_ERRORS,
    _CODE_MASK,
    _POLICY_CLASSES,
    _RETRIABLE,
    _SEVERITY_MASK,
    _as_float,
    _close,
    _open_client,
    _operation_limits,
    _read_values,
    _resolve_nodes,
    _status_name,
    _unix,
    make_trust,
)
from connectors.opcua.trust import describe as describe_certificate
from connectors.opcua.trust import endpoint_certificate, parse_fingerprint
from connectors.opcua.trust import fingerprint as fingerprint_of

_logger = logging.getLogger("connectors.opcua")  # one logger for the package (tests and operators filter on it)

# --------------------------------------------------------------------------------------------- connector


@dataclass
class _Feed:
    """What a live subscription hands to readings(): batches, keep-alive wake-ups and the loss signal."""

    queue: asyncio.Queue
    stale_secs: float | None
    lost: str | None = None

    def signal_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        # A full queue means the consumer is busy with batches; it checks `lost` before waiting again.
        with suppress(asyncio.QueueFull):
            self.queue.put_nowait(())

    async def next(self) -> list[Reading] | tuple:
        """The next batch (() for a keep-alive); raises ConnectionLost when lost or stale."""
        if self.lost is not None and self.queue.empty():
            raise ConnectionLost(self.lost)
        try:
            async with asyncio.timeout(self.stale_secs):
                return await self.queue.get()
        except TimeoutError:
            raise ConnectionLost(f"no notification nor keep-alive for {self.stale_secs:.1f} s") from None


class OpcUaConnector:
    """Readings from one OPC-UA server; see the module docstring for timestamps, freshness and recovery.

    ``stats`` counts per sensor; ``retimed`` counts readings stamped with the received time because their
    own timestamp was beyond ``max_clock_skew_secs``; ``connect_attempts`` counts session attempts.
    """

    def __init__(self, config: OpcUaSourceConfig, clock: Clock, base_dir: Path, state_dir: Path | None = None) -> None:
        """``state_dir``: the asset's state folder, where a server certificate pinned on first use is kept
        (``trust/<source>.der``); without one a pin lasts as long as this connector."""
        self.name = config.name
        self.stats = SourceStats()
        self._trust = make_trust(config, base_dir, state_dir, self.stats)
        self.retimed: Counter = Counter()
        self.connect_attempts = 0
        self._config = config
        self._clock = clock
        self._base_dir = base_dir
        self._sensors = [n.sensor for n in config.nodes]
        self._node_ids: dict[int, ua.NodeId] = {}  # client handle → NodeId, for the current session
        self._session_log = TransitionLog(_logger)
        self._point_log = TransitionLog(_logger)
        self._fail_kind: str | None = None
        self._ever_connected = False
        # Per sensor: (source-or-server timestamp, value) of the last emitted reading, kept across sessions.
        self._last_key: dict[str, tuple[float, float]] = {}
        self._use_received = config.timestamp == "received" or clock.speed != 1.0
        # Sensors not yet (re)vouched for in the current session, and the clock time the session came up.
        self._unvouched: set[str] = set()
        self._session_start = 0.0
        self.stats.session_watched = True  # `connected` means "answering": the stale timer tears a mute one down

    # ---- public API

    async def readings(self) -> AsyncIterator[list[Reading]]:
        """Yield batches of GOOD readings until cancelled; reconnects inside, never raises for a lost peer."""
        cfg = self._config
        backoff = Backoff(cfg.backoff_initial_secs, cfg.backoff_max_secs)
        while True:
            client: Client | None = None
            vouched = False
            try:
                self.connect_attempts += 1
                client = await _open_client(cfg, self._base_dir, self._trust)
                handles = await self._resolve(client)
                if cfg.mode == "subscribe":
                    feed = await self._subscribe(client, handles)
                    self._session_up(backoff)
                    vouched = True
                    while True:
                        batch = await feed.next()
                        if batch:
                            yield batch
                else:
                    read_batch, _ = await _operation_limits(client)
                    self._session_up(backoff)
                    vouched = True
                    async with aclosing(self._poll(client, handles, read_batch)) as batches:
                        async for batch in batches:
                            yield batch
            except _RETRIABLE as exc:
                self._session_failed(exc)
            finally:
                self.stats.connected = False
                if client is not None:
                    await _close(client, cfg.timeout_secs)
            if vouched:  # the session that vouched for the values is gone: they stop holding (rule 2a)
                end = self.stats.last_alive_ts if self.stats.last_alive_ts is not None else self._clock.now()
                yield [validity_end(sensor, end) for sensor in self._sensors]
            await asyncio.sleep(backoff.next())

    def use_state_dir(self, state_dir: Path) -> None:
        """Keep the pinned server certificate in ``state_dir`` (agent.runtime.asset calls this when building)."""
        self._trust.state_dir = Path(state_dir)

    async def accept_certificate(self, fingerprint: str) -> str:
        """Accept the certificate the server presents now, if its fingerprint is ``fingerprint``.

        The certificate is read from the server's endpoint list (no session, no credentials) and stored as
        the source's accepted one in ``<state-dir>/trust/<source>.der``, replacing an older pin; a running
        agent uses it at its next connection attempt. Raises ConnectorError when the server presents a
        different certificate (nothing is changed) or cannot be reached.
        """
        cfg = self._config
        if cfg.security.policy == "None":
            raise ConnectorError(f"source {self.name}: security policy None has no server certificate to accept")
        wanted = parse_fingerprint(fingerprint)
        try:
            der = await endpoint_certificate(
                cfg.endpoint,
                _POLICY_CLASSES[cfg.security.policy].URI,
                getattr(ua.MessageSecurityMode, cfg.security.mode),
                cfg.timeout_secs,
            )
        except (*_RETRIABLE, ValueError) as exc:
            raise ConnectorError(f"source {self.name}: cannot read the server certificate: {_describe(exc)}") from exc
        presented = fingerprint_of(der)
        if presented != wanted:
            raise ConnectorError(
                f"source {self.name}: the server at {cfg.endpoint} presents {presented}, not {wanted}; "
                "nothing was accepted"
            )
        path = self._trust.accept(der)
        _logger.info("OPC-UA source %s: accepted the server certificate %s in %s", self.name, presented, path)
        return f"source {self.name}: accepted the server certificate {describe_certificate(der)}, stored in {path}"

    async def probe(self) -> ProbeReport:
        """Connect once, read every node once: value, variant type, status and both timestamps.

        The report's notes give the server certificate's fingerprint and whether it is trusted; the probe
        never pins a certificate (a first use is reported, and the agent pins it when it connects).
        """
        report = await self._probe()
        report.notes.extend(self._trust_notes())
        return report

    def _trust_notes(self) -> list[str]:
        cfg = self._config
        last = self._trust.last
        if cfg.security.policy == "None":
            seen = f" (it presents {last.fingerprint})" if last is not None else ""
            return [f"security policy None: the server's identity is not checked{seen}"]
        if last is None:
            return []
        notes = [last.line()]
        if last.status in ("untrusted", "first use"):
            notes.append(
                f"to trust this certificate: l4e-agent probe <asset file> --source {self.name} "
                f"--accept-certificate {last.fingerprint}"
            )
        return notes

    async def _probe(self) -> ProbeReport:
        cfg = self._config
        client: Client | None = None
        try:
            client = await _open_client(cfg, self._base_dir, self._trust, pin=False)
            resolved = await _resolve_nodes(client, cfg.nodes)
            read_batch, _ = await _operation_limits(client)
            ids = [r for r in resolved if isinstance(r, ua.NodeId)]
            values = iter(await _read_values(client, ids, read_batch))
            lines = [
                self._probe_line(node, r, None if isinstance(r, ua.StatusCode) else next(values))
                for node, r in zip(cfg.nodes, resolved, strict=True)
            ]
        except (*_RETRIABLE, ConnectorError) as exc:
            return ProbeReport(source=self.name, ok=False, error=_describe(exc))
        finally:
            if client is not None:
                await _close(client, cfg.timeout_secs)
        return ProbeReport(source=self.name, ok=all(not line.error for line in lines), lines=lines)

    # ---- session life cycle

    def _session_up(self, backoff: Backoff) -> None:
        self.stats.connected = True
        self._session_start = self.stats.last_alive_ts = self._clock.now()
        self._unvouched = set(self._sensors)
        backoff.reset()
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._fail_kind = None
        self._session_log.success("session", "OPC-UA source %s: connected to %s", self.name, self._config.endpoint)

    def _session_failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        message = "OPC-UA source %s: %s; retrying with backoff (up to %g s)"
        args = (self.name, _describe(exc), self._config.backoff_max_secs)
        if self._session_log.is_failing("session") and kind != self._fail_kind:
            _logger.warning(message, *args)  # a different failure is a transition worth a line
            self._session_log.failure("session", message, *args)
        else:
            self._session_log.failure("session", message, *args)
        self._fail_kind = kind

    async def _resolve(self, client: Client) -> dict[int, str]:
        """Client handle → sensor for every node that resolved; unresolved nodes are logged once and skipped.

        When no node resolves the session is not worth keeping (a server still loading its address space):
        raise so that the loop retries with backoff.
        """
        resolved = await _resolve_nodes(client, self._config.nodes)
        handles: dict[int, str] = {}
        self._node_ids = {}
        for handle, (sensor, result) in enumerate(zip(self._sensors, resolved, strict=True)):
            if isinstance(result, ua.StatusCode):
                self._point_failed(sensor, f"cannot resolve node ({_status_name(result)})")
            else:
                handles[handle] = sensor
                self._node_ids[handle] = result
        if not handles:
            raise ConnectionLost("none of the configured nodes exists on the server")
        return handles

    def _point_failed(self, sensor: str, reason: str) -> None:
        self.stats.read_errors[sensor] += 1
        self._point_log.failure(sensor, "OPC-UA source %s: sensor %s: %s", self.name, sensor, reason)

    # ---- subscription

    async def _subscribe(self, client: Client, handles: dict[int, str]) -> _Feed:
        cfg = self._config
        keepalive = max(1, cfg.stale_after_intervals // 2) if cfg.stale_after_intervals else 10
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=cfg.publishing_interval_ms,
            # The server drops a subscription after LifetimeCount intervals without a publish request (ours
            # are held while the consumer is busy): give it at least a minute.
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(60_000 / cfg.publishing_interval_ms)),
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        feed = _Feed(asyncio.Queue(maxsize=64), None)
        client.connection_lost_callback = self._on_connection_lost(feed)
        result = await client.uaclient.create_subscription(params, self._on_publish(feed, handles))
        if cfg.stale_after_intervals:
            # Never shorter than two keep-alive periods, whatever the server revised the counts to, nor than
            # one request timeout: a fast publishing interval must not turn a busy second into a reconnect.
            intervals = max(cfg.stale_after_intervals, 2 * result.RevisedMaxKeepAliveCount)
            feed.stale_secs = max(intervals * result.RevisedPublishingInterval / 1000.0, cfg.timeout_secs)
        read_batch, per_call = await _operation_limits(client)
        filtered = await self._deadband_handles(client, handles, read_batch)
        items = [self._monitor_request(h, self._node_ids[h], deadband=h in filtered) for h in handles]
        for start in range(0, len(items), per_call):
            chunk = items[start : start + per_call]
            created = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=result.SubscriptionId,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ItemsToCreate=chunk,
                )
            )
            for request, res in zip(chunk, created, strict=True):
                sensor = handles[request.RequestedParameters.ClientHandle]
                if not res.StatusCode.is_good():
                    self._point_failed(sensor, f"cannot monitor node ({_status_name(res.StatusCode)})")
        return feed

    async def _deadband_handles(self, client: Client, handles: dict[int, str], batch: int) -> set[int]:
        """Handles that get the deadband filter: every node whose DataType is not Boolean.

        A deadband on a Boolean makes no sense (the spec has servers reject it; some servers apply it and a
        deadband >= 1 then hides every switch), so the DataType attribute is read once per session.
        """
        if self._config.deadband is None:
            return set()
        ids = list(handles)
        boolean = ua.NodeId(ua.ObjectIds.Boolean)
        out = set()
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            types = await client.uaclient.read_attributes([self._node_ids[h] for h in chunk], ua.AttributeIds.DataType)
            out.update(h for h, dv in zip(chunk, types, strict=True) if dv.Value is None or dv.Value.Value != boolean)
        return out

    def _monitor_request(self, handle: int, node_id: ua.NodeId, deadband: bool) -> ua.MonitoredItemCreateRequest:
        cfg = self._config
        mfilter = None
        if deadband and cfg.deadband is not None:
            mfilter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=1 if cfg.deadband.type == "absolute" else 2,
                DeadbandValue=cfg.deadband.value,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=handle,
                SamplingInterval=cfg.sampling_interval_ms,
                Filter=mfilter,
                QueueSize=cfg.queue_size,
                DiscardOldest=True,
            ),
        )

    def _on_publish(self, feed: _Feed, handles: dict[int, str]):
        """The publish callback: one PublishResult → one batch on the feed.

        Awaiting a full queue holds asyncua's publish loop, so a slow consumer slows the publish requests and
        the server (not this process) buffers, as OPC-UA intends.
        """

        async def on_publish(result: ua.PublishResult) -> None:
            self.stats.last_alive_ts = self._clock.now()
            data = result.NotificationMessage.NotificationData
            if not data:
                if feed.queue.empty():  # keep-alive: only needs to reset the stale timer
                    feed.queue.put_nowait(())
                return
            received = self._clock.now()
            batch: list[Reading] = []
            for notification in data:
                if isinstance(notification, ua.DataChangeNotification):
                    for item in notification.MonitoredItems:
                        sensor = handles.get(item.ClientHandle)
                        if sensor is not None:
                            self._convert(sensor, item.Value, received, batch)
                elif isinstance(notification, ua.StatusChangeNotification):
                    # BadTimeout (expired) or GoodSubscriptionTransferred (moved away): either way not ours now.
                    feed.signal_lost(f"subscription status {_status_name(notification.Status)}")
            if batch:
                self.stats.last_reading_ts = received
                await feed.queue.put(batch)
            elif feed.queue.empty():
                feed.queue.put_nowait(())

        return on_publish

    def _on_connection_lost(self, feed: _Feed):
        async def lost(exc: Exception) -> None:
            feed.signal_lost(f"connection lost ({_describe(exc)})")

        return lost

    # ---- poll

    async def _poll(self, client: Client, handles: dict[int, str], batch: int) -> AsyncIterator[list[Reading]]:
        """Read all nodes every poll_interval_ms (wall clock); a late cycle is not made up twice."""
        interval = self._config.poll_interval_ms / 1000.0
        node_ids = [self._node_ids[h] for h in handles]
        sensors = list(handles.values())
        due = time.monotonic()
        while True:
            values = await _read_values(client, node_ids, batch)
            received = self.stats.last_alive_ts = self._clock.now()
            out: list[Reading] = []
            for sensor, dv in zip(sensors, values, strict=True):
                self._convert(sensor, dv, received, out)
            if out:
                self.stats.last_reading_ts = received
                yield out
            due += interval
            now = time.monotonic()
            if due < now:  # overran (slow server): skip the missed cycles rather than burst
                due = now + interval - ((now - due) % interval)
            await asyncio.sleep(due - now)

    # ---- values

    def _convert(self, sensor: str, dv: ua.DataValue, received: float, out: list[Reading]) -> None:
        """Append the Reading for one DataValue to ``out``, or count why there is none."""
        status = dv.StatusCode
        # Severity bits only: Good with info bits (e.g. a server queue overflow) is still a good value.
        if status is not None and status.value & _SEVERITY_MASK:
            if status.value & _CODE_MASK in _ADDRESS_ERRORS:
                self._point_failed(sensor, f"read failed ({status.name})")
            else:
                self.stats.bad_quality[sensor] += 1
            self._invalid(sensor, received, out)
            return
        variant = dv.Value
        number = _as_float(variant.Value if variant is not None else None)
        if number is None:
            kind = variant.VariantType.name if variant is not None else "no value"
            self._point_failed(sensor, f"value is not numeric ({kind})")
            self._invalid(sensor, received, out)
            return
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        src = _unix(stamp) if stamp is not None else None
        revouch = sensor in self._unvouched
        if src is not None:
            # Same stamp and same value: the very sample already emitted (an unchanged point polled again).
            # The value is part of the key because coarse PLC clocks can stamp two different consecutive
            # samples alike. The first sample of a session is emitted anyway: it vouches for the value again.
            key = (src, number)
            if self._last_key.get(sensor) == key and not revouch:
                return
            self._last_key[sensor] = key
        if revouch:
            self._unvouched.discard(sensor)
        if self.stats.bad_now:
            self.stats.bad_now.discard(sensor)
        # Without any timestamp there is nothing to compare: a subscription reports changes only, and a
        # poll is vouched for by the server's Good status at read time (see the module docstring).
        if self._point_log.is_failing(sensor):
            self._point_log.success(sensor, "OPC-UA source %s: sensor %s delivers again", self.name, sensor)
        self.stats.readings[sensor] += 1
        ts = self._timestamp(sensor, dv, src, received)
        if revouch and ts < self._session_start:
            ts = self._session_start  # the value holds again from the moment this session vouched for it
        out.append(Reading(sensor, number, ts))

    def _invalid(self, sensor: str, ts: float, out: list[Reading]) -> None:
        """The sensor's last value stops holding at ``ts`` (clock time the bad sample arrived). One marker per
        episode, and none for a sensor that never had a value."""
        if sensor in self.stats.bad_now:
            return
        self.stats.bad_now.add(sensor)
        self._unvouched.discard(sensor)
        self._last_key.pop(sensor, None)  # the next good sample is news even if it repeats the old one
        if self.stats.readings[sensor]:
            out.append(validity_end(sensor, ts))

    def _timestamp(self, sensor: str, dv: ua.DataValue, src: float | None, received: float) -> float:
        """The reading's time per the timestamp policy; ``src`` is the source-or-server stamp already decoded."""
        if self._use_received:
            return received
        cfg = self._config
        if cfg.timestamp == "server":
            ts = _unix(dv.ServerTimestamp) if dv.ServerTimestamp is not None else None
        else:
            ts = src
        if ts is None:
            return received
        if abs(ts - received) > cfg.max_clock_skew_secs:
            self.retimed[sensor] += 1
            return received
        return ts

    def _probe_line(self, node: NodeConfig, resolved: ua.NodeId | ua.StatusCode, dv: ua.DataValue | None) -> ProbeLine:
        address = node.node_id or node.browse_path or ""
        if dv is None:
            return ProbeLine(sensor=node.sensor, error=f"cannot resolve {address}: {_status_name(resolved)}")
        variant = dv.Value
        value = variant.Value if variant is not None else None
        line = ProbeLine(
            sensor=node.sensor,
            value=value,
            type=variant.VariantType.name if variant is not None else "",
            status=_status_name(dv.StatusCode),
            source_ts=dv.SourceTimestamp.isoformat() if dv.SourceTimestamp else "",
            server_ts=dv.ServerTimestamp.isoformat() if dv.ServerTimestamp else "",
            extra={"node": str(resolved.to_string())} if node.browse_path else {},
        )
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            line.error = f"status {line.status}"
        elif _as_float(value) is None:
            line.error = "value is not numeric"
        return line


def _describe(exc: BaseException) -> str:
    """A one-line, operator-facing account of a session failure."""
    if isinstance(exc, _AUTH_ERRORS):
        return (
            f"the server rejected the user identity ({type(exc).__name__}): "
            "check username and password_file/password_env"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ConnectionLost) else f"{type(exc).__name__}: {text}"
