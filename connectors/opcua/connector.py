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

The feed (subscription and poll) is in connectors.opcua.feed, DataValue conversion in connectors.opcua.values.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from pathlib import Path

from asyncua import Client, ua

from agent.core.clock import Backoff, Clock
from agent.core.errors import ConnectionLost, ConnectorError, TransitionLog
from agent.core.model import Reading, validity_end
from connectors.base import ProbeReport, SourceStats, raise_if_cancelling
from connectors.opcua.backfill import Backfill
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.feed import _Feeds
from connectors.opcua.session import (
    _POLICY_CLASSES,
    _RETRIABLE,
    _close,
    _describe,
    _open_client,
    _operation_limits,
    _read_values,
    _resolve_nodes,
    _status_name,
    make_trust,
)
from connectors.opcua.trust import describe as describe_certificate
from connectors.opcua.trust import endpoint_certificate, parse_fingerprint
from connectors.opcua.trust import fingerprint as fingerprint_of
from connectors.opcua.values import _Values

_logger = logging.getLogger("connectors.opcua")  # one logger for the package (tests and operators filter on it)

async def _stop_backfill(task: asyncio.Task, timeout: float) -> None:
    """Cancel the session's backfill and wait (bounded) while it releases its continuation points."""
    task.cancel()
    with suppress(asyncio.CancelledError, TimeoutError, Exception):
        async with asyncio.timeout(timeout):
            await task


class OpcUaConnector(_Feeds, _Values):
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
        # History backfill (opt-in, connectors.opcua.backfill): active once the agent attached its port
        self.backfill = Backfill(config, clock, state_dir) if config.backfill is not None else None

    # ---- public API

    async def readings(self) -> AsyncIterator[list[Reading]]:
        """Yield batches of GOOD readings until cancelled; reconnects inside, never raises for a lost peer."""
        cfg = self._config
        backoff = Backoff(cfg.backoff_initial_secs, cfg.backoff_max_secs)
        backfill = self.backfill if self.backfill is not None and self.backfill.active else None
        while True:
            client: Client | None = None
            vouched = False
            filler: asyncio.Task | None = None
            feed = None
            newest = -math.inf  # the latest reading time emitted in this session
            try:
                raise_if_cancelling()  # a cancel asyncua swallowed in the last attempt ends the loop here
                self.connect_attempts += 1
                client = await _open_client(cfg, self._base_dir, self._trust)
                handles = await self._resolve(client)
                if cfg.mode == "subscribe":
                    feed = await self._subscribe(client, handles)
                    filler = self._start_backfill(backfill, client, handles)
                    # the items are created and the backfill has its own map: the session needs the NodeIds no
                    # more (the next one resolves them again), and at 20,000 nodes they are 3.6 MB
                    self._node_ids = {}
                    self._session_up(backoff)
                    vouched = True
                    while True:
                        batch = await feed.next()
                        raise_if_cancelling()
                        if batch:
                            newest = max(newest, max(r.ts for r in batch))
                            if backfill is not None:
                                backfill.observe(batch)
                            yield batch
                else:
                    read_batch, _ = await _operation_limits(client)
                    filler = self._start_backfill(backfill, client, handles)
                    self._session_up(backoff)
                    vouched = True
                    async with aclosing(self._poll(client, handles, read_batch)) as batches:
                        async for batch in batches:
                            newest = max(newest, max(r.ts for r in batch))
                            if backfill is not None:
                                backfill.observe(batch)
                            yield batch
            except _RETRIABLE as exc:
                raise_if_cancelling()  # a TimeoutError/ConnectionLost raised while a cancel was pending is the cancel
                self._session_failed(exc)
            finally:
                self.stats.connected = False
                if feed is not None:
                    await feed.stop()
                if filler is not None:
                    await _stop_backfill(filler, cfg.timeout_secs)
                if client is not None:
                    await _close(client, cfg.timeout_secs)
            if vouched:  # the session that vouched for the values is gone: they stop holding (rule 2a)
                end = self.stats.last_alive_ts if self.stats.last_alive_ts is not None else self._clock.now()
                # never before a reading already emitted (a source timestamp ahead of our clock, within the
                # allowed skew): a marker before its reading would not end it, and the value would hold for ever
                end = max(end, newest)
                yield [validity_end(sensor, end) for sensor in self._sensors]
            raise_if_cancelling()
            await asyncio.sleep(backoff.next())

    def _start_backfill(self, backfill: Backfill | None, client: Client,
                        handles: dict[int, str]) -> asyncio.Task | None:
        """The session's backfill task (beside the live feed); the gaps open with the first live readings."""
        if backfill is None:
            return None
        backfill.session_up(list(handles.values()), first=not self._ever_connected)
        node_ids = {sensor: self._node_ids[h] for h, sensor in handles.items()}
        return asyncio.create_task(backfill.run(client, node_ids), name=f"backfill:{self.name}")

    def use_backfill(self, port, state_dir: Path) -> None:
        """Attach the agent's side of the history backfill (agent.runtime.asset); no-op without ``backfill``."""
        if self.backfill is not None:
            self.backfill.attach(port, state_dir)

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
        self._session_start = self.stats.last_alive_ts = self.stats.session_up_ts = self._clock.now()
        self._unvouched = set(self._sensors)
        backoff.reset()
        first = not self._ever_connected
        if not first:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._fail_kind = None
        self.stats.connect_error = None
        args = ("OPC-UA source %s: connected to %s", self.name, self._config.endpoint)
        if not self._session_log.success("session", *args) and first:
            _logger.info(*args)  # the first connection too, not only the recovery after failures

    def _session_failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.stats.connect_error = _describe(exc)
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

