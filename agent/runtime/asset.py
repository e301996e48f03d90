"""One asset's running pipeline (AssetRunner): connectors → Spool → WindowCloser → Outbox → Uploader, with its
alarms and results poller.

This module is the only one that builds connectors (through connectors.registry) and the place where
exceptions from the data path's tasks are caught wholesale: a crashed connector task is logged and restarted
with backoff; the others keep flowing. Draining: connectors stop, the spool is flushed, due windows are
written, one bounded upload round runs; what is not due stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.alarms.engine import AlarmEngine
from agent.alarms.hooks import build_hooks
from agent.config import AssetConfig, base_dir_of
from agent.core.clock import Backoff, Clock
from agent.core.model import Event, validity_end
from agent.pipeline.closer import WindowCloser
from agent.pipeline.diskhealth import DiskHealth
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
        self.disk = DiskHealth(self.state_dir, clock.now, self.emit)  # one WARNING/INFO per disk episode
        self.spool = Spool(self.state_dir / "spool", self.plan.frequency, self.disk)
        self.outbox = Outbox(self.state_dir / "outbox")
        self.closer = WindowCloser(self.plan, self.spool, self.outbox, self.state_dir / "progress.json")
        if store is None:
            store, loc_prefix = open_location(config.lookout.input, s3_client_factory,
                                              connect_timeout_secs=config.upload.connect_timeout_secs,
                                              read_timeout_secs=config.upload.timeout_secs)
            prefix = loc_prefix if prefix is None else prefix
        self.store = store
        self.uploader = Uploader(self.outbox, store, prefix or "", clock, 60 * config.lookout.delay_offset_minutes,
                                 Backoff(config.upload.backoff_initial_secs, config.upload.backoff_max_secs),
                                 timeout_secs=config.upload.timeout_secs)
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
        writers = connector_writer_factory(config, base, self.state_dir)
        self.alarms = AlarmEngine(config.asset, config.alarms, self.state_dir / "alarms",
                                  build_hooks(config.alarms, base, writers), clock, window_secs=self.plan.frequency)
        self.alarms.disk = self.disk
        self.alarms_raised: Counter = Counter()  # rule → alarms raised (for metrics)
        self.results_poller = None  # set by the service when results are read back (agent.lookout.results)
        # for the status page (agent.runtime.status_data): the latest reading per sensor (one dict store per reading,
        # ~20 ns: tests/bench/bench_status_page.py) and a bounded history filled per window/execution
        self.last_readings: dict = {}
        self.history = StatusHistory(self.outbox.dir, self.plan.name, self.plan.rate)
        self.event_listeners.append(self.history.on_event)
        self._pending_events: list[Event] = []
        self._tasks: list[asyncio.Task] = []
        self._refusing = False
        self._refusal_logged = False
        self._dropping = False
        self._started_at: float | None = None
        self._silent: set[str] = set()
        self._bad_quality: set[str] = set()
        self._untrusted: set[str] = set()

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
        """Record events, hand them to listeners now and to the alarm engine at its next job run."""
        for ev in events:
            self.stats.events.append(ev)
            self._pending_events.append(ev)
            for listener in self.event_listeners:
                try:
                    listener(ev)
                except Exception:  # a listener must never break the data path
                    log.exception("event listener failed for %s", ev.kind)

    # --- tasks ----------------------------------------------------------------------------------------
    def _end_validity(self, sensors, at: float) -> None:
        """Values of ``sensors`` stop holding at ``at`` (clock time): a stopped source vouches for nothing."""
        if sensors:
            self.spool.append([validity_end(s, at) for s in sensors])

    async def _pump(self, connector: Connector) -> None:
        """Feed one connector into the spool; restart it with backoff if it crashes. When it stops, crashes
        or finishes, the values of its sensors stop holding (rule 2a)."""
        backoff = Backoff(CONNECTOR_RESTART_BACKOFF_INITIAL_SECS, CONNECTOR_RESTART_BACKOFF_MAX_SECS)
        sensors = self._source_sensors.get(connector.name, ())
        while True:
            try:
                async for batch in connector.readings():
                    if self._refusing:
                        self.stats.readings_refused += len(batch)
                        continue
                    self.spool.append(batch)
                    self.stats.readings += len(batch)
                    last = self.last_readings
                    for reading in batch:
                        last[reading.sensor] = reading
                    backoff.reset()
                log.info("source %s finished", connector.name)
                self._end_validity(sensors, self.clock.now())
                return
            except asyncio.CancelledError:
                self._end_validity(sensors, self.clock.now())
                raise
            except Exception:
                self._end_validity(sensors, self.clock.now())
                n = self.stats.task_restarts.get(connector.name, 0) + 1
                self.stats.task_restarts[connector.name] = n
                delay = backoff.next()
                log.exception("source %s crashed (restart %d in %.1fs)", connector.name, n, delay)
                await asyncio.sleep(delay)

    async def flush_job(self) -> None:
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
        with self.disk.guard("windows job"):
            self.spool.flush()
            self.emit(self.closer.close_due(self.close_time()))
            if self.keeper is not None:  # windows already written that backfilled readings completed
                self.keeper.render_dirty(idle=not any(c.backfill.busy() for c in self.connectors
                                                      if getattr(c, "backfill", None) is not None))

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
        """
        now = self.clock.now()
        bound = self.config.health.source_silent_secs
        events = []
        for conn in self.connectors:
            st = conn.stats
            reference = st.last_alive_ts if st.last_alive_ts is not None else self._started_at
            silent = not st.alive(now, bound) and reference is not None and now - reference > bound
            if silent and conn.name not in self._silent:
                self._silent.add(conn.name)
                events.append(Event("source_silent", conn.name, f"source {conn.name}: no answer for more than "
                                    f"{bound:g}s", now, {"last_alive_ts": st.last_alive_ts}))
                log.warning("source %s has not answered for more than %gs", conn.name, bound)
            elif not silent and conn.name in self._silent:
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
            elif not bad and conn.name in self._bad_quality:
                self._bad_quality.discard(conn.name)
                events.append(Event("source_quality_recovered", conn.name, f"source {conn.name}: good values "
                                    "again", now))
                log.info("source %s delivers good values again", conn.name)
            untrusted = getattr(conn.stats, "untrusted", None)  # the connector logged the refusal itself
            if untrusted and conn.name not in self._untrusted:
                self._untrusted.add(conn.name)
                events.append(Event("source_untrusted", conn.name, untrusted, now))
            elif not untrusted and conn.name in self._untrusted:
                self._untrusted.discard(conn.name)
                events.append(Event("source_trusted", conn.name, f"source {conn.name}: server identity trusted", now))
        return events

    async def alarm_job(self) -> None:
        """Health checks, then pending events and quiet-time clears into the alarm engine."""
        self.history.observe_sources(self.connectors, self._silent, status_bad_quality(self), self.clock.now())
        self.emit(self.check_sources())
        with self.disk.guard("alarms"):
            # one at a time: if the state cannot be saved (full disk), the engine changed nothing and the
            # events not yet taken stay queued for the next run
            while self._pending_events:
                self._count(await self.alarms.on_event(self._pending_events[0]))
                self._pending_events.pop(0)
            self._count(await self.alarms.tick())

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
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed for %s", event.kind)
        self._count(await self.alarms.on_event(event))

    def silent_sources(self) -> set[str]:
        return set(self._silent)

    def bad_quality_sources(self) -> set[str]:
        return set(self._bad_quality)

    def _resume_replays(self) -> None:
        """Replay sources resume after the last reading the agent already holds for them (exact replay)."""
        for conn in self.connectors:
            if not hasattr(conn, "resume_after"):
                continue
            sensors = set(self._source_sensors.get(conn.name, ()))
            held = self.spool.latest_ts(sensors)
            last_written = self.closer.last_written
            candidates = [t for t in (held, last_written) if t is not None]
            if candidates:
                conn.resume_after = float(max(candidates))
    def untrusted_sources(self) -> set[str]:
        return {conn.name for conn in self.connectors if getattr(conn.stats, "untrusted", None)}

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
        scheduler.every(f"{plan.asset}.alarms", min(max(clock.real_seconds(10.0), 0.1), 5.0), self.alarm_job)
        scheduler.every(f"{plan.asset}.results", min(max(clock.real_seconds(30.0), 0.2), 30.0), self.results_job)
        self._started_at = clock.now()
        previous = self.spool.previous_alive
        if previous is not None:
            # a previous run that did not stop cleanly (kill -9, power cut) vouched for nothing after its last
            # sign of life: end every value there, before anything new arrives
            self._end_validity([s for names in self._source_sensors.values() for s in names], previous)
        self._resume_replays()
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
            self.emit(self.closer.close_due(self.close_time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.uploader.run_once(force=True), upload_timeout_secs)
            with self.disk.guard("alarms"):
                while self._pending_events:
                    self._count(await self.alarms.on_event(self._pending_events[0]))
                    self._pending_events.pop(0)
        except Exception:
            log.exception("asset %s: error while draining", self.plan.asset)
        finally:
            self.spool.close()
            await self.alarms.close(upload_timeout_secs)
