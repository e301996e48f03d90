"""Modbus source: TCP, RTU (serial) and RTU over TCP. Only this package uses pymodbus's client API (in io).

Shape of one poll cycle:

    config ──plan_requests()──▶ per device: a few merged read requests (fewest that respect the caps)
    one task per device: at every tick of ``poll_interval_ms`` on the injected Clock, send its requests,
    decode each point (connectors.modbus.codec) and put one batch of Readings on a queue; ``readings()``
    yields the batches.

Isolation. Each device has its own task and its own failure state. Over TCP each device also has its own
connection (pymodbus serialises requests per client), so a device that stops answering behind a gateway never
delays another one. RTU and RTU over TCP share one client per line because the line itself is shared: there
a dead device still costs bus time, so after it fails to answer its polls are spaced out with capped backoff.

Failures. A lost or refused connection is retried with capped backoff (agent.core.clock.Backoff) without blocking
the tick; "device busy" (exception 6) is repeated up to ``retries`` times; any other exception answer or a
timeout marks the affected points missing for that poll, counts them in ``stats.read_errors``, and is logged
once per transition (agent.core.errors.TransitionLog). An "illegal data address" (exception 2) answer to a merged
request splits it into one request per point for the rest of the run, so one unreadable hole does not
blind its neighbours.

Validity and liveness (rule 2a). A polled value holds until the next poll; a failed request (no connection, no
answer, an exception answer) or a NaN from a float register ends the validity of its points: one validity-end
marker per sensor at the poll's time, not repeated until the sensor reads again. ``stats.last_alive_ts`` moves
with every answered request: a steady plant whose device answers is alive.
"""


from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.clock import Backoff, Clock
from agent.core.errors import ConnectionLost, TransitionLog
from agent.core.model import Quality, Reading, validity_end
from connectors.base import ProbeLine, ProbeReport, SourceStats, raise_if_cancelling
from connectors.modbus.config import ModbusDevice, ModbusSourceConfig
from connectors.modbus.io import ILLEGAL_ADDRESS, _ExceptionAnswer, _Link, _NoAnswer, _point_value, _read
from connectors.modbus.planner import Request, Span, plan_device, plan_requests
from connectors.modbus.probe import _describe, _interpretations

# A device that stops answering on a live link: its polls are spaced from its poll interval (at least this)
# up to this (or the poll interval, when longer), so a dead device costs little bus time.
DEVICE_BACKOFF_MIN_SECS = 0.1
DEVICE_BACKOFF_MAX_SECS = 30.0

log = logging.getLogger("connectors.modbus")  # one logger for the package (tests and operators filter on it)

# --------------------------------------------------------------------------------------------- connector


@dataclass
class _DeviceState:
    """What one device's poll task keeps between ticks."""

    device: ModbusDevice
    link: _Link
    requests: list[Request]
    backoff: Backoff
    skip_until: float = 0.0  # time.monotonic() before which an unresponsive device is not polled
    split: set[Request] = field(default_factory=set)


class ModbusConnector:
    """Polls every configured device at ``poll_interval_ms`` on ``clock`` and yields one batch per poll."""

    def __init__(self, config: ModbusSourceConfig, clock: Clock, base_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.base_dir = base_dir
        self.stats = SourceStats()
        self._transitions = TransitionLog(log)
        self._links: list[_Link] = []
        self._ended: set[str] = set()  # sensors whose validity already ended and that have not read since

    # ----------------------------------------------------------------------------- set-up

    def _build_states(self) -> list[_DeviceState]:
        """One state per device; links per the isolation rule (own link per TCP device, one shared link per
        serial line or RTU-over-TCP converter)."""
        cfg = self.config
        interval_s = cfg.poll_interval_ms / 1000
        shared: _Link | None = None
        if cfg.transport != "tcp":
            # One timeout for the whole line: the most patient device's.
            shared = _Link(cfg, max(d.timeout_secs for d in cfg.devices), True, self.stats, self._transitions)
        states = []
        for device in cfg.devices:
            link = shared or _Link(cfg, device.timeout_secs, False, self.stats, self._transitions)
            backoff = Backoff(max(interval_s, DEVICE_BACKOFF_MIN_SECS), max(DEVICE_BACKOFF_MAX_SECS, interval_s))
            states.append(_DeviceState(device, link, plan_device(device), backoff))
        self._links = list({id(s.link): s.link for s in states}.values())
        return states

    def _close_links(self) -> None:
        for link in self._links:
            link.close()
        self.stats.connected = False

    def _update_connected(self) -> None:
        self.stats.connected = bool(self._links) and all(link.connected for link in self._links)

    # ----------------------------------------------------------------------------- readings

    async def readings(self) -> AsyncIterator[list[Reading]]:
        """Yield one batch of GOOD readings per device poll, until cancelled (see the module docstring).

        Unexpected errors in a device task (bugs, not I/O) are re-raised here for the supervisor.
        """
        # Unbounded on purpose: a full queue would block device tasks and break their cadence; the consumer
        # (the spool) takes batches far faster than a PLC produces them.
        queue: asyncio.Queue[list[Reading] | BaseException] = asyncio.Queue()
        states = self._build_states()
        tasks = [
            asyncio.create_task(self._device_loop(s, queue), name=f"modbus:{self.name}:{s.device.device_id}")
            for s in states
        ]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close_links()

    async def _device_loop(self, state: _DeviceState, queue: asyncio.Queue) -> None:
        """Poll one device at once, then at each tick of the clock's ``poll_interval_ms`` grid (multiples
        of the interval since the epoch, so readings keep a steady phase); ticks that a slow poll overran
        are skipped rather than bunched up."""
        interval = self.config.poll_interval_ms / 1000
        tick = self.clock.now()
        try:
            while True:
                await self.clock.sleep_until(tick)
                batch = await self._poll(state)
                raise_if_cancelling()  # pymodbus may have swallowed a cancel: the finally of readings() awaits us
                if batch:
                    queue.put_nowait(batch)
                tick = self._next_tick(tick, interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not I/O: hand it to readings() so the supervisor sees it
            queue.put_nowait(exc)

    def _next_tick(self, tick: float, interval: float) -> float:
        # The epsilon keeps a tick that float division puts a hair below k·interval from repeating k.
        nxt = (math.floor(tick / interval + 1e-9) + 1) * interval
        now = self.clock.now()
        if nxt <= now:
            nxt = (math.floor(now / interval) + 1) * interval
        return nxt

    async def _poll(self, state: _DeviceState) -> list[Reading]:
        """Read every request of one device once; GOOD readings out, failures counted and logged."""
        device = state.device
        if time.monotonic() < state.skip_until:
            return self._count_missing(device, state.requests, self.clock.now())
        batch: list[Reading] = []
        for i, request in enumerate(state.requests):
            if i and device.pause_ms:
                await asyncio.sleep(device.pause_ms / 1000)
            ts = self.clock.now()
            try:
                values = await _read(state.link, device, request)
            except ConnectionLost:
                batch.extend(self._count_missing(device, state.requests[i:], ts))
                break
            except _NoAnswer as exc:
                self._device_unresponsive(state, exc)
                batch.extend(self._count_missing(device, state.requests[i:], ts))
                break
            except _ExceptionAnswer as exc:
                self._exception_answer(state, request, exc)
                batch.extend(self._count_missing(device, [request], ts))
                continue
            finally:
                self._update_connected()
            self._request_ok(state, request)
            self.stats.last_alive_ts = ts
            batch.extend(self._decode(device, request, values, ts))
        else:
            self._device_ok(state)
        self._apply_splits(state)
        return batch

    def _decode(self, device: ModbusDevice, request: Request, values: Sequence[Any], ts: float) -> list[Reading]:
        out = []
        for key in request.keys:
            point = device.points[key]
            value = _point_value(point, request, values)
            if not math.isfinite(value):
                # NaN/inf from a float register is a device saying "no value", not a measurement.
                self.stats.bad_quality[point.sensor] += 1
                self.stats.bad_now.add(point.sensor)
                if point.sensor not in self._ended:
                    self._ended.add(point.sensor)
                    if self.stats.readings[point.sensor]:  # a sensor that never had a value has none to end
                        out.append(validity_end(point.sensor, ts))
                continue
            out.append(Reading(point.sensor, value, ts, Quality.GOOD))
            self.stats.readings[point.sensor] += 1
            self.stats.last_reading_ts = ts
        if self._ended or self.stats.bad_now:
            good = {r.sensor for r in out if r.value == r.value}
            self._ended -= good
            self.stats.bad_now -= good
        return out

    def _count_missing(self, device: ModbusDevice, requests: Iterable[Request], ts: float) -> list[Reading]:
        """Count the points of failed requests; their values stop holding at ``ts`` (one marker per sensor
        until it reads again: a poll that fails tells nothing about the value, rule 2a)."""
        ends = []
        for request in requests:
            for key in request.keys:
                sensor = device.points[key].sensor
                self.stats.read_errors[sensor] += 1
                if sensor not in self._ended:
                    self._ended.add(sensor)
                    if self.stats.readings[sensor]:  # a sensor that never had a value has none to end
                        ends.append(validity_end(sensor, ts))
        return ends

    def _device_unresponsive(self, state: _DeviceState, exc: Exception) -> None:
        dev = state.device
        state.skip_until = time.monotonic() + state.backoff.next()
        self._transitions.failure(
            f"device {dev.device_id}",
            "modbus %s: device %d does not answer (%s)",
            self.name,
            dev.device_id,
            exc,
        )

    def _device_ok(self, state: _DeviceState) -> None:
        dev = state.device
        state.backoff.reset()
        state.skip_until = 0.0
        self._transitions.success(
            f"device {dev.device_id}", "modbus %s: device %d answers again", self.name, dev.device_id
        )

    @staticmethod
    def _request_key(device: ModbusDevice, request: Request) -> str:
        return f"device {device.device_id} {request.table} {request.address}+{request.count}"

    def _exception_answer(self, state: _DeviceState, request: Request, exc: _ExceptionAnswer) -> None:
        dev = state.device
        self._transitions.failure(
            self._request_key(dev, request),
            "modbus %s: device %d %s %d..%d: %s",
            self.name,
            dev.device_id,
            request.table,
            request.address,
            request.address + request.count - 1,
            exc,
        )
        if exc.code == ILLEGAL_ADDRESS and len(request.keys) > 1:
            state.split.add(request)

    def _request_ok(self, state: _DeviceState, request: Request) -> None:
        dev = state.device
        self._transitions.success(
            self._request_key(dev, request),
            "modbus %s: device %d %s %d..%d readable",
            self.name,
            dev.device_id,
            request.table,
            request.address,
            request.address + request.count - 1,
        )

    def _apply_splits(self, state: _DeviceState) -> None:
        """Replace merged requests refused with 'illegal data address' by one request per point."""
        if not state.split:
            return
        dev = state.device
        new: list[Request] = []
        for request in state.requests:
            if request in state.split:
                spans = [Span(request.table, dev.points[k].address, dev.points[k].width, k) for k in request.keys]
                new.extend(plan_requests(spans, one_per_point=True))
                log.warning(
                    "modbus %s: device %d: reading %s %d..%d point by point from now on (a hole in "
                    "the range is not readable; lower max_gap_registers to avoid this)",
                    self.name,
                    dev.device_id,
                    request.table,
                    request.address,
                    request.address + request.count - 1,
                )
            else:
                new.append(request)
        state.requests = new
        state.split.clear()

    # ----------------------------------------------------------------------------- probe

    async def probe(self) -> ProbeReport:
        """Read every point once with its own request; report the configured value, the raw registers and
        the value under every byte order for each type of the same width (``ProbeLine.extra``)."""
        states = self._build_states()
        lines: list[ProbeLine] = []
        try:
            for state in states:
                lines.extend(await self._probe_device(state))
        finally:
            self._close_links()
        failed = [line for line in lines if line.error]
        error = f"{len(failed)} of {len(lines)} points failed" if failed else ""
        return ProbeReport(source=self.name, ok=not failed, lines=lines, error=error)

    async def _probe_device(self, state: _DeviceState) -> list[ProbeLine]:
        device = state.device
        lines: list[ProbeLine] = []
        give_up = ""  # once the device or link is gone, the remaining points fail fast with the same reason
        for key, point in enumerate(device.points):
            line = ProbeLine(sensor=point.sensor, type=_describe(device, point))
            lines.append(line)
            if give_up:
                line.status, line.error = "missing", give_up
                continue
            request = Request(point.table, point.address, point.width, (key,))
            try:
                values = await _read(state.link, device, request)
            except (ConnectionLost, _NoAnswer) as exc:
                give_up = f"{type(exc).__name__.strip('_')}: {exc}"
                line.status, line.error = "missing", give_up
                continue
            except _ExceptionAnswer as exc:
                line.status, line.error = "missing", str(exc)
                continue
            line.value = _point_value(point, request, values)
            line.status = "ok"
            line.extra = _interpretations(point, values)
        return lines
