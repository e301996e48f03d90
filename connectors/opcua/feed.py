"""The OPC-UA data feed: a subscription served by our own publish loop (connectors.opcua.publish: one
PublishResponse, decoded by connectors.opcua.publish_codec → one batch of Readings, no per-value object, task or
queue hop) or polled reads. See connectors.opcua.connector for the semantics.

:class:`_Feeds` is a mixin of :class:`connectors.opcua.connector.OpcUaConnector`; it uses the connector's
``_config``, ``_clock``, ``stats``, ``_node_ids`` (client handle → NodeId of the current session),
``_point_failed`` and ``_convert`` (connectors.opcua.values).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

from asyncua import Client, ua

from agent.core.errors import ConnectionLost
from agent.core.model import Reading
from connectors.base import raise_if_cancelling
from connectors.opcua.publish import PublishLoop, create_subscription
from connectors.opcua.publish_codec import Publish
from connectors.opcua.session import _describe, _logger, _operation_limits, _read_values, _status_name


@dataclass
class _Feed:
    """What a live subscription hands to readings(): batches, keep-alive wake-ups and the loss signal.
    ``task`` runs the publish loop; ``stop()`` ends it (the connector calls it before closing the session)."""

    queue: asyncio.Queue
    stale_secs: float | None
    lost: str | None = None
    task: asyncio.Task | None = None

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self.task

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


MAX_NOTIFICATIONS_PER_PUBLISH = 1000


class _Feeds:
    """Subscription and poll (mixed into OpcUaConnector)."""

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
            # Bounded, not 0 ("no limit"): a response of every change of a second of 20,000 tags is decoded in
            # memory at once; a server with more to send says MoreNotifications and our two outstanding publish
            # requests fetch the rest at once (node-opcua caps at 1,000 anyway).
            MaxNotificationsPerPublish=MAX_NOTIFICATIONS_PER_PUBLISH,
            PublishingEnabled=True,
            Priority=0,
        )
        feed = _Feed(asyncio.Queue(maxsize=64), None)
        client.connection_lost_callback = self._on_connection_lost(feed)
        result = await create_subscription(client, params, cfg.timeout_secs)
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
        feed.task = asyncio.create_task(self._publish(client, feed, handles), name=f"publish:{self.name}")
        return feed

    async def _publish(self, client: Client, feed: _Feed, handles: dict[int, str]) -> None:
        """The session's publish loop; its end (whatever the reason) is the feed's loss."""
        try:
            await PublishLoop(client, self._on_publish(feed, handles)).run()
        except ConnectionLost as exc:
            feed.signal_lost(str(exc))
        except Exception as exc:  # a bug must not leave the feed waiting: the stale timer would be the only way out
            _logger.error("OPC-UA source %s: publish loop failed", self.name, exc_info=True)
            feed.signal_lost(f"publish loop failed ({type(exc).__name__}: {exc})")

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
        """The publish handler: one decoded PublishResponse (connectors.opcua.publish_codec) → one batch.

        Awaiting a full queue holds the publish loop, so a slow consumer slows the publish requests and the
        server (not this process) buffers, as OPC-UA intends.
        """

        async def on_publish(publish: Publish) -> None:
            # one instant for both: the validity-end marker of a lost session (at last_alive_ts) must not fall
            # before the readings of the last response, or they would hold for ever (rule 2a)
            received = self.stats.last_alive_ts = self._clock.now()
            if not publish.has_notifications:
                if feed.queue.empty():  # keep-alive: only needs to reset the stale timer
                    feed.queue.put_nowait(())
                return
            batch: list[Reading] = []
            convert = self._convert_raw
            sensor_of = handles.get
            for handle, status, value, source_us, server_us in publish.items:
                sensor = sensor_of(handle)
                if sensor is not None:
                    convert(sensor, status, value, source_us, server_us, received, batch)
            for status in publish.status_changes:
                # BadTimeout (expired) or GoodSubscriptionTransferred (moved away): either way not ours now.
                feed.signal_lost(f"subscription status {ua.StatusCode(status).name}")
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
            raise_if_cancelling()
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
