"""One asset's running pipeline (AssetRunner): connectors → Spool → WindowCloser → Outbox → Uploader, with its
alarms and results poller.

This module is the only one that builds connectors (through connectors.registry) and the place where
exceptions from the data path's tasks are caught wholesale: a crashed connector task is logged and restarted
with backoff; the others keep flowing. Draining: connectors stop, the spool is flushed, due windows are
written, one bounded upload round runs; what is not due stays in the spool for the next start.

The event loop never waits on the disk: the spool's flush, the window closer, the budget checks and the
uploader's outbox reads and removals run in the runner's one disk worker thread (agent.core.offloop), in the
order the jobs submit them; the loop only appends readings and hands events on.

Its parts with a job of their own: the sources' health verdicts and their events (agent.runtime.source_health),
where events go, the alarm inbox and the listeners (agent.runtime.asset_events), and what the connectors are
wired to besides the spool, hook writers and history backfill (agent.runtime.connector_wiring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.alarms.engine import AlarmEngine
from agent.alarms.hooks import build_hooks
from agent.alarms.inbox import INBOX_FILE, EventInbox
from agent.config import AssetConfig, base_dir_of
from agent.core.clock import Backoff, Clock
from agent.core.model import Event, Window, validity_end
from agent.core.offloop import DiskWorker
from agent.pipeline.closer import WindowCloser
from agent.pipeline.diskhealth import DiskHealth
from agent.pipeline.outbox import Outbox
from agent.pipeline.plan import plan_from_config
from agent.pipeline.spool import Spool
from agent.pipeline.store import ObjectStore, open_location
from agent.pipeline.upload import Uploader
from agent.runtime.asset_events import AssetEvents
from agent.runtime.connector_wiring import attach_backfill, connector_writer_factory, use_state_dir
from agent.runtime.scheduler import JobScheduler
from agent.runtime.source_health import SourceHealth
from agent.runtime.status_data import bad_quality_sources as status_bad_quality
from agent.runtime.status_history import StatusHistory, points_per_sensor
from connectors.base import Connector
from connectors.registry import connector_class

log = logging.getLogger("l4e.service")
# A connector that crashes (a bug, not a lost connection: connectors reconnect inside) is restarted after
# this backoff; a minute at most keeps a crash loop from flooding the log and the CPU.
CONNECTOR_RESTART_BACKOFF_INITIAL_SECS = 1.0
CONNECTOR_RESTART_BACKOFF_MAX_SECS = 60.0


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
        self.plan = plan_from_config(config, base_dir_of(config_path))
        self.disk = DiskHealth(self.state_dir, clock.now, self.emit)  # one WARNING/INFO per disk episode
        self.disk_worker = DiskWorker(config.asset)  # all blocking work on state_dir, off the loop, in order
        self.spool = Spool(self.state_dir / "spool", self.plan.frequency, self.disk)
        self.outbox = Outbox(self.state_dir / "outbox")
        # events wait here, on disk, for the alarm engine's next run (a kill -9 in between loses none)
        self.inbox = EventInbox(self.state_dir / INBOX_FILE)
        self.stats = AssetStats()
        self.events = AssetEvents(self.inbox, self.disk, self.disk_worker, lambda: self.health.conditions(),
                                  self.stats.events)
        self.event_listeners = self.events.listeners  # the same list: add listeners here
        self.listener_failures = self.events.listener_failures
        self.closer = WindowCloser(self.plan, self.spool, self.outbox, self.state_dir / "progress.json",
                                   journal=self.events.journal)
        self.closer.between_groups = self._flush_during_close
        self._last_flush = 0.0  # time.monotonic() of the last spool flush (the disk worker's)
        if store is None:
            store, loc_prefix = open_location(config.lookout.input, s3_client_factory,
                                              connect_timeout_secs=config.upload.connect_timeout_secs,
                                              read_timeout_secs=config.upload.timeout_secs)
            prefix = loc_prefix if prefix is None else prefix
        self.store = store
        self.uploader = Uploader(self.outbox, store, prefix or "", clock, 60 * config.lookout.delay_offset_minutes,
                                 Backoff(config.upload.backoff_initial_secs, config.upload.backoff_max_secs),
                                 timeout_secs=config.upload.timeout_secs, offload=self._offload)
        base = base_dir_of(config_path)
        self.connectors: list[Connector] = connectors if connectors is not None else [
            connector_class(src.kind)(src, clock, base) for src in config.sources]
        # source name → its sensors: their values stop holding when the source stops (rule 2a)
        self._source_sensors = {src.name: src.sensors(base) for src in config.sources}
        self.health = SourceHealth(self._source_sensors, config.health.source_silent_secs)
        use_state_dir(self.connectors, self.state_dir)
        self.keeper = attach_backfill(self.connectors, self.state_dir, self.spool, self.closer, clock.now)
        writers = connector_writer_factory(config, base, self.state_dir)
        self.alarms = AlarmEngine(config.asset, config.alarms, self.state_dir / "alarms",
                                  build_hooks(config.alarms, base, writers), clock, window_secs=self.plan.frequency)
        self.alarms.disk = self.disk
        self.alarms_raised: Counter = Counter()  # rule → alarms raised (for metrics)
        self.results_poller = None  # set by the service when results are read back (agent.lookout.results)
        # for the status page (agent.runtime.status_data): the latest reading per sensor (one dict store per reading,
        # ~20 ns: tests/bench/bench_status_page.py), the clock time its value stopped holding (a validity-end
        # marker, rule 2a: kept apart so the page still shows the last reading, not a grid aggregate) and a
        # bounded history filled per window/execution
        self.last_readings: dict = {}
        self.validity_ends: dict[str, float] = {}
        self.history = StatusHistory(self.outbox.dir, self.plan.name, self.plan.rate,
                                     max_points=points_per_sensor(len(self.plan.sensors)))
        self.event_listeners.append(self.history.on_event)
        self._tasks: list[asyncio.Task] = []
        self._scheduler: JobScheduler | None = None
        self._starting: asyncio.Task | None = None
        self._job_names: list[str] = []
        self._refusing = False
        self._refusal_logged = False
        self._dropping = False

    # --- events ---------------------------------------------------------------------------------------
    def emit(self, events: list[Event]) -> None:
        """Record events: into the alarm engine's durable inbox and to the listeners (AssetEvents.emit); safe
        from any thread."""
        self.events.emit(events)

    # --- tasks ----------------------------------------------------------------------------------------
    def _end_validity(self, sensors, at: float) -> None:
        """Values of ``sensors`` stop holding at ``at`` (clock time): a stopped source vouches for nothing."""
        if sensors:
            self.spool.append([validity_end(s, at) for s in sensors])
            self.validity_ends.update(dict.fromkeys(sensors, at))

    async def _pump(self, connector: Connector) -> None:
        """Feed one connector into the spool; restart it with backoff if it crashes. When it stops, crashes
        or finishes, the values of its sensors stop holding (rule 2a)."""
        backoff = Backoff(CONNECTOR_RESTART_BACKOFF_INITIAL_SECS, CONNECTOR_RESTART_BACKOFF_MAX_SECS)
        sensors = self._source_sensors.get(connector.name, ())
        last_crash: str | None = None
        while True:
            try:
                async for batch in connector.readings():
                    if self._refusing:
                        self.stats.readings_refused += len(batch)
                        continue
                    self.spool.append(batch)
                    self.stats.readings += len(batch)
                    last, ends = self.last_readings, self.validity_ends
                    for reading in batch:
                        if reading.value == reading.value:
                            last[reading.sensor] = reading
                        else:  # a validity-end marker (NaN): the value stopped holding, the reading stays the last
                            ends[reading.sensor] = reading.ts
                    backoff.reset()
                log.info("source %s finished", connector.name)
                self.health.finished.add(connector.name)
                self._end_validity(sensors, self.clock.now())
                return
            except asyncio.CancelledError:
                self._end_validity(sensors, self.clock.now())
                raise
            except Exception as exc:  # supervision boundary: a connector's bug restarts that source, never the agent
                self._end_validity(sensors, self.clock.now())
                n = self.stats.task_restarts.get(connector.name, 0) + 1
                self.stats.task_restarts[connector.name] = n
                delay = backoff.next()
                crash = f"{type(exc).__name__}: {exc}"  # the same crash again: one line, its traceback was logged
                log.error("source %s crashed (restart %d in %.1fs): %s", connector.name, n, delay, crash,
                          exc_info=crash != last_crash)
                last_crash = crash
                await asyncio.sleep(delay)

    async def _offload(self, fn, *args):
        """Run blocking file work in the disk worker; remember the loop so events from there come back to it."""
        self.events.bind_loop()
        return await self.disk_worker.run(fn, *args)

    async def flush_job(self) -> None:
        await self._offload(self._guarded_flush)

    def _guarded_flush(self) -> None:
        with self.disk.guard("flush"):  # the spool reports its own write errors; this guards the budget's I/O
            self._flush()

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        self.spool.flush()
        self.spool.mark_alive(self.clock.now())
        over = self.closer.over_budget()
        if self._dropping and not over:
            self._dropping = False
            self.emit([Event("spool_recovered", "spool", "back within the disk budget", self.clock.now())])
        if self.plan.when_full == "drop_newest":
            self._refusing = self.closer.over_budget()
            if self._refusing and not self._refusal_logged:
                self._refusal_logged = True
                self.emit([Event("spool_dropped", "spool", "disk budget reached: new readings are refused "
                                 "until uploads free space", self.clock.now(), {"stage": "input"})])
            elif not self._refusing:
                self._refusal_logged = False
            self._dropping = self._dropping or self._refusing
        elif over:
            dropped = self.closer.enforce_budget(self.clock.now())
            self._dropping = self._dropping or bool(dropped)
            self.emit(dropped)

    def _flush_during_close(self, closing_end: int) -> None:
        """(In the disk worker, between two groups of a window close.) The flush job waits behind a close in the
        disk worker: at 20,000 sensors a close takes seconds, and the readings of those seconds would pile up in
        memory as objects (~100 bytes each). Flushed here at the flush job's pace instead, keeping back those of
        the window being closed (Spool.flush keep_upto). No budget policy here: it may drop windows."""
        if time.monotonic() - self._last_flush >= self.config.spool.fsync_interval_ms / 1000.0:
            self._last_flush = time.monotonic()
            self.spool.flush(keep_upto=closing_end)
            self.spool.mark_alive(self.clock.now())

    def _close_spool(self, alive_ts: float) -> None:
        self.spool.mark_alive(alive_ts)
        self.spool.close()

    def close_time(self) -> float:
        """The clock time windows are closed against: now, held back while a timeline source (replay) has not
        handed over every reading before a window's end (``SourceStats.watermark``), by at most one upload
        period or 30 s of wall time, whichever is longer, so a stuck source never stops the others' windows."""
        now = self.clock.now()
        marks = [c.stats.watermark for c in self.connectors if getattr(c.stats, "watermark", None) is not None]
        if not marks:
            return now
        limit = max(self.plan.frequency, 30.0 * self.clock.speed)
        return max(min(now, min(marks) + self.plan.grace_secs - 1e-6), now - limit)

    async def window_job(self) -> None:
        close_time = self.close_time()
        if self.keeper is None and not self.closer.has_due(close_time):
            return  # most ticks (twice a grid step): nothing to write, not even a round trip to the disk worker
        events, prepared = await self._offload(self._write_windows, close_time)
        self.history.prepared.update(prepared)
        for event in events:  # one at a time: the sources' batches go in between (a window has many files)
            self.events.announce([event])  # already in the inbox: the closer journaled them before its progress
            await asyncio.sleep(0)

    def _write_windows(self, close_time: float) -> tuple[list[Event], dict]:
        """(In the disk worker.) Flush, write the due windows, and read back what the status page keeps of
        each written file, before an upload (also in the worker, after this) can take the file away."""
        events: list[Event] = []
        with self.disk.guard("windows job"):
            if self.closer.has_due(close_time):  # most ticks: nothing due, no flush (the flush job has its own)
                self.spool.flush()
                events = self.closer.close_due(close_time)  # journaled into the inbox by the closer itself
            if self.keeper is not None:  # windows already written that backfilled readings completed
                self.keeper.render_dirty(idle=not any(c.backfill.busy() for c in self.connectors
                                                      if getattr(c, "backfill", None) is not None))
        prepared = {}
        for ev in events:
            start, end = ev.details.get("window_start"), ev.details.get("window_end")
            if ev.kind == "window_written" and start is not None and end is not None:
                rows = self.history.read_window_file(ev.subject, Window(int(start), int(end)))
                if rows is not None:
                    prepared[(ev.subject, int(start))] = rows
        return events, prepared

    async def upload_job(self) -> None:
        with self.disk.guard("upload"):
            await self.uploader.run_once()

    def check_sources(self) -> list[Event]:
        """The sources' health transitions since the last check (agent.runtime.source_health)."""
        return self.health.check(self.connectors, self.clock.now())

    async def alarm_job(self) -> None:
        """Health checks, then pending events and quiet-time clears into the alarm engine."""
        self.history.observe_sources(self.connectors, self.health.silent, status_bad_quality(self),
                                     self.clock.now())
        self.emit(self.check_sources())
        with self.disk.guard("alarms"):
            await self._feed_inbox()
            self._count(await self.alarms.tick())

    async def _feed_inbox(self) -> None:
        """The inbox's events into the alarm engine, oldest first (AssetEvents.feed)."""
        await self.events.feed(self._take_event, self._offload)

    async def _take_event(self, event: Event) -> None:
        self._count(await self.alarms.on_event(event))

    def _count(self, transitions) -> None:
        self.history.on_alarms(transitions)
        for alarm in transitions:
            if alarm.state == "raised":
                self.alarms_raised[alarm.rule] += 1

    async def results_job(self) -> None:
        if self.results_poller is not None:
            with self.disk.guard("results"):  # the cursor stays before what could not be saved: retried
                await self.results_poller.poll_once(self.on_results, self._on_result_event)

    async def on_results(self, rows) -> None:
        self._count(await self.alarms.on_results(rows))
        self.history.on_results(rows)  # after the engine accepted them: a refused batch comes again

    async def _on_result_event(self, event: Event) -> None:
        self.events.announce([event])
        self._count(await self.alarms.on_event(event))

    def disconnected_sources(self) -> dict[str, str]:
        return self.health.disconnected(self.connectors)

    def silent_sources(self) -> set[str]:
        return self.health.silent_now()

    def bad_quality_sources(self) -> set[str]:
        return self.health.bad_quality_now()

    def untrusted_sources(self) -> set[str]:
        return {conn.name for conn in self.connectors if getattr(conn.stats, "untrusted", None)}

    def start(self, scheduler: JobScheduler) -> None:
        clock, plan = self.clock, self.plan
        flush_every = self.config.spool.fsync_interval_ms / 1000.0
        # wake a few times per grid step (bounded) so a window is written soon after end + grace
        window_tick = min(max(clock.real_seconds(min(plan.rate, plan.frequency / 10, max(1.0, plan.grace_secs)) / 2),
                              0.05), 5.0)
        upload_tick = min(max(window_tick, 0.05), 1.0)
        jobs = ((f"{plan.asset}.flush", flush_every, self.flush_job, flush_every),
                (f"{plan.asset}.windows", window_tick, self.window_job, 0.0),
                (f"{plan.asset}.upload", upload_tick, self.upload_job, window_tick / 2),
                (f"{plan.asset}.alarms", max(clock.real_seconds(self.config.alarms.check_interval_secs), 0.1),
                 self.alarm_job, 0.0),
                (f"{plan.asset}.results", min(max(clock.real_seconds(30.0), 0.2), 30.0), self.results_job, 0.0))
        self._scheduler, self._job_names = scheduler, [name for name, *_ in jobs]
        self.health.start(clock.now())
        self.closer.anchor = self.health.started_at  # windows after the start are reported even with no reading at all
        self._starting = asyncio.create_task(self._start(scheduler, jobs), name=f"start:{plan.asset}")

    async def _start(self, scheduler: JobScheduler, jobs) -> None:
        """Read the state the previous runner left (in the disk worker), then start the jobs and sources."""
        try:
            resume_after = await self._offload(self._read_start_state)
        except Exception:  # a bug: start anyway (the closer and spool keep what they read at construction)
            log.exception("asset %s: cannot read the state left by the previous run", self.plan.asset)
            resume_after = {}
        # the conditions open when the last run ended (read by _read_start_state, so after a reload's drain)
        self.health.carry_over(self.inbox.conditions, self.connectors)
        for name, every, job, first_in in jobs:
            scheduler.every(name, every, job, first_in)
        previous = self.spool.previous_alive
        if previous is not None:
            # a previous run that did not stop cleanly (kill -9, power cut) vouched for nothing after its last
            # sign of life: end every value there, before anything new arrives
            self._end_validity([s for names in self._source_sensors.values() for s in names], previous)
        for connector in self.connectors:
            if connector.name in resume_after:
                connector.resume_after = resume_after[connector.name]
            self._tasks.append(asyncio.create_task(self._pump(connector), name=f"source:{connector.name}"))

    def _read_start_state(self) -> dict[str, float]:
        """(In the disk worker.) The state as the previous runner of this directory left it: on a reload this
        runner was built while the old one still ran, and its drain wrote windows since. Adopts the progress
        and the last sign of life; returns where each replay source resumes: after the last reading the agent
        already holds for it, or the end of the last written window (exact replay)."""
        self.closer.resume()
        self.spool.previous_alive = self.spool.read_alive()
        self.inbox.load()  # the events and conditions the previous runner left (read here, off the loop)
        resume_after = {}
        for conn in self.connectors:
            if not hasattr(conn, "resume_after"):
                continue
            held = self.spool.latest_ts(set(self._source_sensors.get(conn.name, ())))
            candidates = [t for t in (held, self.closer.last_written) if t is not None]
            if candidates:
                resume_after[conn.name] = float(max(candidates))
        return resume_after

    async def drain(self, upload_timeout_secs: float = 5.0) -> None:
        """Stop this runner's jobs (waiting for runs in progress), stop sources, flush, write due windows, try
        one upload round (bounded). Never raises. Afterwards nothing of this runner writes to the state
        directory any more, so a runner started on it next (a reload) continues from what it finds there."""
        if self._starting is not None:  # drained before it was fully started (a quick second reload)
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
            self._starting = None
        if self._scheduler is not None:
            await self._scheduler.remove(self._job_names)
            self._scheduler = None
        self.health.finished.update(conn.name for conn in self.connectors)  # stopped on purpose, not unreachable
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        try:
            events, prepared = await self._offload(self._write_windows, self.close_time())
            self.history.prepared.update(prepared)
            self.events.announce(events)  # already in the inbox (the closer's journal)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.uploader.run_once(force=True), upload_timeout_secs)
            with self.disk.guard("alarms"):
                await self._feed_inbox()
        except Exception:
            log.exception("asset %s: error while draining", self.plan.asset)
        finally:
            # the sources were stopped (their values end now): the last sign of life of this run
            await self._offload(self._close_spool, self.clock.now())
            self.disk_worker.close()
            await self.alarms.close(upload_timeout_secs)
