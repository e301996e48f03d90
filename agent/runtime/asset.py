"""One asset's running pipeline (AssetRunner): connectors → Spool → WindowCloser → Outbox → Uploader, with its
alarms and results poller.

This module is the only one that builds connectors (through connectors.registry) and the place where
exceptions from the data path's tasks are caught wholesale: a crashed connector task is logged and restarted
with backoff; the others keep flowing. Draining: connectors stop, the spool is flushed, due windows are
written, one bounded upload round runs; what is not due stays in the spool for the next start.

The event loop never waits on the disk: the spool's flush, the window closer, the budget checks and the
uploader's outbox reads and removals run in the runner's one disk worker thread (agent.core.offloop), in the
order the jobs submit them; the loop only appends readings and hands events on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
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
from agent.pipeline.diskhealth import DiskHealth, disk_error
from agent.pipeline.outbox import Outbox
from agent.pipeline.plan import plan_from_config
from agent.pipeline.spool import Spool
from agent.pipeline.store import ObjectStore, open_location
from agent.pipeline.upload import Uploader
from agent.runtime.scheduler import JobScheduler
from agent.runtime.status_data import bad_quality_sources as status_bad_quality
from agent.runtime.status_history import StatusHistory
from connectors.base import Connector
from connectors.registry import connector_class

log = logging.getLogger("l4e.service")
# A connector that crashes (a bug, not a lost connection: connectors reconnect inside) is restarted after
# this backoff; a minute at most keeps a crash loop from flooding the log and the CPU.
CONNECTOR_RESTART_BACKOFF_INITIAL_SECS = 1.0
CONNECTOR_RESTART_BACKOFF_MAX_SECS = 60.0
# A source not connected this long (wall seconds) after the start is reported unhealthy even when its first
# attempt has not failed yet (a connect hanging until its timeout); one that failed is reported at once.
CONNECT_GRACE_SECS = 10.0


def connector_writer_factory(config: AssetConfig, base_dir: Path, state_dir: Path | None = None):
    """The write_back hooks' writers, through the connectors of the named [[sources]] entry (and its trust).
    Each protocol's write-back is imported when a hook needs it (an asset without one never loads its library)."""
    sources = {s.name: s for s in config.sources}

    def factory(hook):
        source = sources[hook.source]
        if hook.protocol == "modbus":
            from connectors.modbus.write_back import write_modbus

            device_id = 1 if hook.device_id is None else hook.device_id

            async def write(value) -> None:
                await write_modbus(source, device_id, hook.table, hook.address, value, type=hook.type,
                                   order=hook.order)
        else:
            from connectors.opcua.write_back import write_opcua

            async def write(value) -> None:
                await write_opcua(source, hook.node_id, value, base_dir, state_dir)

        return write

    return factory


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the jobs run on (set at their first run)
        self._loop_thread: int | None = None
        self.disk = DiskHealth(self.state_dir, clock.now, self.emit)  # one WARNING/INFO per disk episode
        self.disk_worker = DiskWorker(config.asset)  # all blocking work on state_dir, off the loop, in order
        self.spool = Spool(self.state_dir / "spool", self.plan.frequency, self.disk)
        self.outbox = Outbox(self.state_dir / "outbox")
        # events wait here, on disk, for the alarm engine's next run (a kill -9 in between loses none)
        self.inbox = EventInbox(self.state_dir / INBOX_FILE)
        self.closer = WindowCloser(self.plan, self.spool, self.outbox, self.state_dir / "progress.json",
                                   journal=self._journal_window_events)
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
        for conn in self.connectors:  # state a connector keeps itself (OPC-UA: the pinned server certificate)
            if hasattr(conn, "use_state_dir"):
                conn.use_state_dir(self.state_dir)
        self.keeper = self._attach_backfill()
        self.stats = AssetStats()
        self.event_listeners: list[Callable[[Event], None]] = []
        self.listener_failures: Counter[str] = Counter()  # listener → exceptions it raised
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
        self.history = StatusHistory(self.outbox.dir, self.plan.name, self.plan.rate)
        self.event_listeners.append(self.history.on_event)
        self._tasks: list[asyncio.Task] = []
        self._scheduler: JobScheduler | None = None
        self._starting: asyncio.Task | None = None
        self._job_names: list[str] = []
        self._refusing = False
        self._refusal_logged = False
        self._dropping = False
        self._started_at: float | None = None
        self._started_wall: float | None = None  # time.monotonic() at start (the connect grace)
        # sources that ended on their own (a replay at its end of file) or were stopped (drain): not "down"
        self._finished: set[str] = set()
        self._silent: set[str] = set()
        self._bad_quality: set[str] = set()
        self._untrusted: set[str] = set()
        # sources whose condition carried over from the last run (start()) this run has not confirmed or ended
        # yet: they count for the alarms (no spurious clear) but not for liveness and health, which judge this
        # run's own evidence
        self._unsettled: set[str] = set()

    def _attach_backfill(self):
        """History backfill (OPC-UA ``backfill``): the connectors write through the spool and re-close windows
        already written (agent.pipeline.reclose); None when no source backfills."""
        fillers = [c for c in self.connectors if getattr(c, "backfill", None) is not None]
        if not fillers:
            return None
        from agent.pipeline.reclose import Keeper, SpoolBackfillPort

        def reaches(_window) -> bool:  # could a backfill still bring readings of a window written now?
            return any(c.backfill.may_reach(c.stats.connected) for c in fillers)

        keeper = Keeper(self.state_dir / "kept", self.closer, reaches,
                        max(c.backfill.settings.max_age_secs for c in fillers), self.clock.now)
        port = SpoolBackfillPort(self.spool, self.closer, keeper)
        for conn in fillers:
            conn.use_backfill(port, self.state_dir)
        return keeper

    # --- events ---------------------------------------------------------------------------------------
    def emit(self, events: list[Event]) -> None:
        """Record events: into the alarm engine's durable inbox (taken at its next job run), and to the
        listeners now. A failed inbox write keeps them in memory, saved by the next write that succeeds. Called
        from the disk worker (a disk episode starts or ends there), the events are handed to the loop instead."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                self._loop.call_soon_threadsafe(self.emit, list(events))
            return
        if events:
            # in memory now (the alarm job sees them), on disk through the disk worker: queued behind what it is
            # writing, so within milliseconds, and the loop never waits on the disk
            self.inbox.add(events, self._conditions(), save=False)
            self.disk_worker.submit(self._save_inbox)
        self._announce(events)

    def _save_inbox(self) -> None:
        """(In the disk worker.) Save the inbox; a failure keeps the events in memory for the next save."""
        try:
            self.inbox.save()
        except OSError as exc:
            self._inbox_write_failed(exc)

    def _conditions(self) -> dict[str, list[str]]:
        return {"source_silent": sorted(self._silent), "source_bad_quality": sorted(self._bad_quality),
                "source_untrusted": sorted(self._untrusted)}

    def _journal_window_events(self, events: list[Event]) -> None:
        """The closer's journal (in the disk worker): a window's events are in the inbox on disk before its
        progress is saved. Raises OSError (the closer retries the window; the events stay queued in memory)."""
        self.inbox.add(events)

    def _inbox_write_failed(self, exc: OSError) -> None:
        if disk_error(exc) is not None:
            # one WARNING per disk episode, and the disk alarm; the alarm job saves the inbox at its next run
            # (agent.alarms.inbox), and its success ends the episode
            self.disk.failure("alarms", exc)
        else:
            log.error("alarm event inbox %s cannot be written: %s; the events are kept in memory",
                      self.inbox.path, exc)

    def _announce(self, events: list[Event]) -> None:
        """Hand events to the listeners (status page, history); they are already in the inbox."""
        for ev in events:
            self.stats.events.append(ev)
            self._tell_listeners(ev)

    def _tell_listeners(self, event: Event) -> None:
        """Hand ``event`` to every listener. A listener that raises is logged with its traceback the first
        time, then only counted (``listener_failures``): a listener must never break the data path."""
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:  # supervision boundary: a bug in a listener (status history, tests' probes)
                name = getattr(listener, "__qualname__", repr(listener))
                self.listener_failures[name] += 1
                log.log(logging.DEBUG if self.listener_failures[name] > 1 else logging.ERROR,
                        "event listener %s failed for %s (%d time(s))", name, event.kind,
                        self.listener_failures[name], exc_info=self.listener_failures[name] == 1)

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
                self._finished.add(connector.name)
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
        if self._loop is None:
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        return await self.disk_worker.run(fn, *args)

    async def flush_job(self) -> None:
        await self._offload(self._guarded_flush)

    def _guarded_flush(self) -> None:
        with self.disk.guard("flush"):  # the spool reports its own write errors; this guards the budget's I/O
            self._flush()

    def _flush(self) -> None:
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
        events, prepared = await self._offload(self._write_windows, self.close_time())
        self.history.prepared.update(prepared)
        for event in events:  # one at a time: the sources' batches go in between (a window has many files)
            self._announce([event])  # already in the inbox: the closer journaled them before its progress
            await asyncio.sleep(0)

    def _write_windows(self, close_time: float) -> tuple[list[Event], dict]:
        """(In the disk worker.) Flush, write the due windows, and read back what the status page keeps of
        each written file, before an upload (also in the worker, after this) can take the file away."""
        events: list[Event] = []
        with self.disk.guard("windows job"):
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
        """Transitions of each source's liveness (source_silent / source_recovered), of its quality
        (source_bad_quality / source_quality_recovered) and of its server's identity (source_untrusted /
        source_trusted, OPC-UA trust).

        Liveness is the transport's (rule 2a): a source is silent when it has not answered (publish response,
        keep-alive, successful poll) for ``[health] source_silent_secs`` of clock time, never because its
        values stay constant. A source that answers but whose every item is Bad/Uncertain is "bad quality".

        A condition ends (its clearing event) only once the source has shown how it is: it answered within
        the bound, or it is silent. So a condition carried over a restart (agent.alarms.inbox) is neither
        cleared by a source that has not answered yet nor left open when the source answers again.
        """
        now = self.clock.now()
        bound = self.config.health.source_silent_secs
        events = []
        for conn in self.connectors:
            st = conn.stats
            reference = st.last_alive_ts if st.last_alive_ts is not None else self._started_at
            alive = st.alive(now, bound)
            silent = not alive and reference is not None and now - reference > bound
            settled = alive or silent  # this run knows how the source is (not just started, not answered yet)
            if settled:
                self._unsettled.discard(conn.name)
            if silent and conn.name not in self._silent:
                self._silent.add(conn.name)
                events.append(Event("source_silent", conn.name, f"source {conn.name}: no answer for more than "
                                    f"{bound:g}s", now, {"last_alive_ts": st.last_alive_ts}))
                log.warning("source %s has not answered for more than %gs", conn.name, bound)
            elif alive and conn.name in self._silent:
                self._silent.discard(conn.name)
                events.append(Event("source_recovered", conn.name, f"source {conn.name}: answers again", now))
                log.info("source %s answers again", conn.name)
            n_sensors = len(self._source_sensors.get(conn.name, ())) or None
            bad = not silent and n_sensors is not None and len(st.bad_now) >= n_sensors
            if bad and conn.name not in self._bad_quality:
                self._bad_quality.add(conn.name)
                events.append(Event("source_bad_quality", conn.name, f"source {conn.name}: answers, but every "
                                    "item is Bad/Uncertain", now))
                log.warning("source %s answers, but every item is Bad/Uncertain", conn.name)
            elif not bad and settled and conn.name in self._bad_quality:
                self._bad_quality.discard(conn.name)
                events.append(Event("source_quality_recovered", conn.name, f"source {conn.name}: good values "
                                    "again", now))
                log.info("source %s delivers good values again", conn.name)
            untrusted = getattr(conn.stats, "untrusted", None)  # the connector logged the refusal itself
            if untrusted and conn.name not in self._untrusted:
                self._untrusted.add(conn.name)
                events.append(Event("source_untrusted", conn.name, untrusted, now))
            elif not untrusted and settled and conn.name in self._untrusted:
                self._untrusted.discard(conn.name)
                events.append(Event("source_trusted", conn.name, f"source {conn.name}: server identity trusted", now))
        return events

    async def alarm_job(self) -> None:
        """Health checks, then pending events and quiet-time clears into the alarm engine."""
        self.history.observe_sources(self.connectors, self._silent, status_bad_quality(self), self.clock.now())
        self.emit(self.check_sources())
        with self.disk.guard("alarms"):
            await self._feed_inbox()
            self._count(await self.alarms.tick())

    async def _feed_inbox(self) -> None:
        """Feed the inbox's events to the engine, oldest first; drop from the inbox those it took. One at a
        time: if the engine's state cannot be saved (full disk), it changed nothing and the events not yet
        taken stay in the inbox for the next run. Events emitted meanwhile are appended behind them."""
        taken = 0
        try:
            for event in self.inbox.pending():
                self._count(await self.alarms.on_event(event))
                taken += 1
        finally:
            self.inbox.taken(taken, save=False)
            await self._offload(self.inbox.save)  # raises OSError on a failed save (the alarm job's disk guard)

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
        self.stats.events.append(event)
        self._tell_listeners(event)
        self._count(await self.alarms.on_event(event))

    def _carry_conditions(self) -> None:
        """The conditions open when the last run ended (read at start, so after a reload's drain): their
        clearing event is sent once they end."""
        saved = self.inbox.conditions
        names = {conn.name for conn in self.connectors}  # a source no longer configured has nothing to carry
        self._silent |= names & set(saved.get("source_silent", ()))
        self._bad_quality |= names & set(saved.get("source_bad_quality", ()))
        self._untrusted |= names & set(saved.get("source_untrusted", ()))
        self._unsettled = self._silent | self._bad_quality | self._untrusted

    def disconnected_sources(self) -> dict[str, str]:
        """Sources not connected right now → why: the last connection attempt's error as soon as one failed,
        else "not connected yet" once CONNECT_GRACE_SECS (wall) have passed since the start. A source that
        finished on its own (a replay at its end) or was stopped by a drain is not listed."""
        if self._started_wall is None:
            return {}
        past_grace = time.monotonic() - self._started_wall > CONNECT_GRACE_SECS
        out = {}
        for conn in self.connectors:
            st = conn.stats
            if st.connected or conn.name in self._finished:
                continue
            error = getattr(st, "connect_error", None)
            if error is not None or past_grace:
                out[conn.name] = error or f"not connected {CONNECT_GRACE_SECS:g} s after the start"
        return out

    def silent_sources(self) -> set[str]:
        return self._silent - self._unsettled

    def bad_quality_sources(self) -> set[str]:
        return self._bad_quality - self._unsettled

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
        self._started_at = clock.now()
        self._started_wall = time.monotonic()
        self.closer.anchor = self._started_at  # windows after the start are reported even with no reading at all
        self._starting = asyncio.create_task(self._start(scheduler, jobs), name=f"start:{plan.asset}")

    async def _start(self, scheduler: JobScheduler, jobs) -> None:
        """Read the state the previous runner left (in the disk worker), then start the jobs and sources."""
        try:
            resume_after = await self._offload(self._read_start_state)
        except Exception:  # a bug: start anyway (the closer and spool keep what they read at construction)
            log.exception("asset %s: cannot read the state left by the previous run", self.plan.asset)
            resume_after = {}
        self._carry_conditions()
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
        self._finished.update(conn.name for conn in self.connectors)  # stopped on purpose, not unreachable
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        try:
            events, prepared = await self._offload(self._write_windows, self.close_time())
            self.history.prepared.update(prepared)
            self._announce(events)  # already in the inbox (the closer's journal)
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
