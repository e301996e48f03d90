"""Builds the running agent from validated config and supervises it.

Per asset: connectors → Spool → WindowCloser → Outbox → Uploader (see architecture.md, the data path).
This module (with agent.config) is the only one that imports connectors, and the only place where boto3
clients are made and exceptions from tasks are caught wholesale: a crashed connector task is logged and
restarted with backoff; the others keep flowing.

Shutdown (SIGTERM/SIGINT, or ``until`` on the clock): connectors stop, the spool is flushed, due windows are
written, one bounded upload round runs, exit code 0. What is not due stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.clock import Backoff, Clock
from agent.config import AssetConfig, base_dir_of
from agent.model import Event
from agent.outbox import Outbox
from agent.pipeline import WindowCloser, WindowPlan
from agent.scheduler import JobScheduler
from agent.spool import Spool
from agent.store import ObjectStore, open_location
from agent.upload import Uploader
from connectors.base import Connector
from connectors.replay import ReplayConnector

log = logging.getLogger("l4e.service")

CONNECTORS: dict[str, type] = {
    "replay": ReplayConnector,
}


def plan_from_config(config: AssetConfig) -> WindowPlan:
    lk = config.lookout
    return WindowPlan(
        asset=config.asset, frequency=lk.frequency_secs, rate=lk.rate_secs,
        components={c: list(s) for c, s in config.components.items()},
        aggs={s: config.agg_for(s) for s in config.all_sensors()}, fill_limit=config.window.fill_limit,
        grace_secs=config.window.grace_secs, delimiter=lk.delimiter, timestamp_format=lk.timestamp_format,
        offset_secs=lk.offset_secs, timestamp_column=lk.timestamp_column,
        budget_bytes=config.spool.budget_bytes, when_full=config.spool.when_full)


@dataclass
class AssetStats:
    readings: int = 0
    readings_refused: int = 0
    events: deque = field(default_factory=lambda: deque(maxlen=200))
    task_restarts: dict[str, int] = field(default_factory=dict)


class AssetRunner:
    """One asset's pipeline. Build with validated config; ``start`` registers its jobs and tasks."""

    def __init__(self, config: AssetConfig, config_path: Path, state_dir: Path, clock: Clock,
                 store: ObjectStore | None = None, prefix: str | None = None,
                 s3_client_factory: Callable[[], object] | None = None,
                 connectors: list[Connector] | None = None) -> None:
        self.config = config
        self.config_path = Path(config_path)
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.plan = plan_from_config(config)
        self.spool = Spool(self.state_dir / "spool", self.plan.frequency)
        self.outbox = Outbox(self.state_dir / "outbox")
        self.closer = WindowCloser(self.plan, self.spool, self.outbox, self.state_dir / "progress.json")
        if store is None:
            store, loc_prefix = open_location(config.lookout.input, s3_client_factory)
            prefix = loc_prefix if prefix is None else prefix
        self.store = store
        self.uploader = Uploader(self.outbox, store, prefix or "", clock, 60 * config.lookout.delay_offset_minutes,
                                 Backoff(config.upload.backoff_initial_secs, config.upload.backoff_max_secs))
        base = base_dir_of(config_path)
        self.connectors: list[Connector] = connectors if connectors is not None else [
            CONNECTORS[src.kind](src, clock, base) for src in config.sources]
        self.stats = AssetStats()
        self.event_listeners: list[Callable[[Event], None]] = []
        self._tasks: list[asyncio.Task] = []
        self._refusing = False
        self._refusal_logged = False

    # --- events ---------------------------------------------------------------------------------------
    def emit(self, events: list[Event]) -> None:
        for ev in events:
            self.stats.events.append(ev)
            for listener in self.event_listeners:
                try:
                    listener(ev)
                except Exception:  # a listener must never break the data path
                    log.exception("event listener failed for %s", ev.kind)

    # --- tasks ----------------------------------------------------------------------------------------
    async def _pump(self, connector: Connector) -> None:
        """Feed one connector into the spool; restart it with backoff if it crashes."""
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                async for batch in connector.readings():
                    if self._refusing:
                        self.stats.readings_refused += len(batch)
                        continue
                    self.spool.append(batch)
                    self.stats.readings += len(batch)
                    backoff.reset()
                log.info("source %s finished", connector.name)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                n = self.stats.task_restarts.get(connector.name, 0) + 1
                self.stats.task_restarts[connector.name] = n
                delay = backoff.next()
                log.exception("source %s crashed (restart %d in %.1fs)", connector.name, n, delay)
                await asyncio.sleep(delay)

    async def flush_job(self) -> None:
        self.spool.flush()
        if self.plan.when_full == "drop_newest":
            self._refusing = self.closer.over_budget()
            if self._refusing and not self._refusal_logged:
                self._refusal_logged = True
                self.emit([Event("spool_dropped", "spool", "disk budget reached: new readings are refused "
                                 "until uploads free space", self.clock.now(), {"stage": "input"})])
            elif not self._refusing:
                self._refusal_logged = False
        else:
            self.emit(self.closer.enforce_budget(self.clock.now()))

    async def window_job(self) -> None:
        self.spool.flush()
        self.emit(self.closer.close_due(self.clock.now()))

    async def upload_job(self) -> None:
        await self.uploader.run_once()

    def start(self, scheduler: JobScheduler) -> None:
        clock, plan = self.clock, self.plan
        flush_every = self.config.spool.fsync_interval_ms / 1000.0
        # wake a few times per grid step (bounded) so a window is written soon after end + grace
        window_tick = min(max(clock.real_seconds(min(plan.rate, plan.frequency / 10, max(1.0, plan.grace_secs)) / 2),
                              0.05), 5.0)
        upload_tick = min(max(window_tick, 0.05), 1.0)
        scheduler.every(f"{plan.asset}.flush", flush_every, self.flush_job, flush_every)
        scheduler.every(f"{plan.asset}.windows", window_tick, self.window_job)
        scheduler.every(f"{plan.asset}.upload", upload_tick, self.upload_job, window_tick / 2)
        for connector in self.connectors:
            self._tasks.append(asyncio.create_task(self._pump(connector), name=f"source:{connector.name}"))

    async def drain(self, upload_timeout_secs: float = 5.0) -> None:
        """Stop sources, flush, write due windows, try one upload round (bounded). Never raises."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        try:
            self.spool.flush()
            self.emit(self.closer.close_due(self.clock.now()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.uploader.run_once(), upload_timeout_secs)
        except Exception:
            log.exception("asset %s: error while draining", self.plan.asset)
        finally:
            self.spool.close()


class Agent:
    """Runs one AssetRunner per asset file until stopped."""

    def __init__(self, runners: list[AssetRunner], clock: Clock) -> None:
        self.runners = runners
        self.clock = clock
        self.scheduler = JobScheduler()
        self.stop_event = asyncio.Event()

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self, until: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        for runner in self.runners:
            runner.start(self.scheduler)
        self.scheduler.start()
        log.info("agent started: %d asset(s): %s", len(self.runners),
                 ", ".join(r.plan.asset for r in self.runners))
        try:
            if until is None:
                await self.stop_event.wait()
            else:
                stopper = asyncio.create_task(self.clock.sleep_until(until))
                waiter = asyncio.create_task(self.stop_event.wait())
                await asyncio.wait({stopper, waiter}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                waiter.cancel()
        finally:
            log.info("agent stopping: draining")
            await self.scheduler.shutdown()
            for runner in self.runners:
                await runner.drain()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("agent stopped")
        return 0
