"""Local alarms: rules decide, hooks deliver.

Two halves with a persisted outbox between them::

    Result lines ─┐                                   ┌→ hook "ops"     (webhook)
                  ├→ rules (pure) → state + outbox ───┼→ hook "journal" (file)
    Events ───────┘      saved atomically first       └→ hook "horn"    (write_back)

Rules
    anomaly       raised when ``prediction = 1`` for ``min_consecutive`` consecutive result rows, or at once
                  when one row has ``anomaly_score ≥ score_threshold``; cleared after ``clear_after``
                  consecutive normal rows. MACHINE_OFF rows break an abnormal run and neither count toward
                  nor break the clearing run (a stopped machine is no evidence that the fault is gone).
                  Rows are processed in ``ts`` order; a row at or before the last processed ``ts`` of the
                  rule is ignored, so a replayed results file never counts twice.
    data-health   driven by ``agent.core.model.Event`` objects. Which event kinds raise and clear is fixed
                  by agent.alarms.rules.EVENT_RULES (and documented there); some alarms are kept per event subject.

Lifecycle: one alarm has one stable ``id`` from raise to clear; while it is open, further raising input only
updates it (max score, window, diagnostics) and is not delivered again.

Delivery (AlarmEngine)
    Each transition becomes an outbox entry naming the hooks still owed it. The state (open alarms,
    counters, last processed ts, outbox) is written atomically (tmp, fsync, rename) BEFORE any hook runs.
    Each (hook, transition) is its own task, with the hook's own timeout and an outer guard; deliveries of
    one alarm to one hook run in order (a clear never overtakes its raise). After a hook succeeds, or gives
    up, the entry is marked done for that hook and the state saved again. A restart re-sends exactly what
    is still pending: a crash before a hook ran delivers it once on restart; a crash in the short gap
    between a hook's success and the saved mark sends it again (at-least-once in that gap). Receivers can
    de-duplicate on (id, state). One exception: the ``disk`` rule's transitions are delivered even when the
    state cannot be saved (the disk it is about refuses writes); they are saved with the next write that
    succeeds.
"""


from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.alarms.config import AlarmsConfig, AnomalyRuleConfig, EventRuleConfig
from agent.alarms.hook_config import AlarmHook, HookError
from agent.alarms.rules import AnomalyState, Decider
from agent.alarms.state import STATE_FILE, EngineState, OutboxEntry, _write_atomic
from agent.core.clock import Clock
from agent.core.errors import ConfigError, StateError, TransitionLog
from agent.core.model import Alarm, Event, Result
from agent.pipeline.diskhealth import DiskHealth, disk_error

log = logging.getLogger("l4e.alarms")


class AlarmEngine:
    """Evaluates rules on results and events, persists, and delivers transitions to hooks.

    asset: the asset name carried by alarms. hooks: built by agent.alarms.hooks.build_hooks (by name). clock: the
    agent clock (its ``now()`` drives clear_after_quiet_secs). window_secs: the upload frequency in seconds,
    used for an alarm's window end (without it, the latest row ts of the episode). No I/O before ``start()``
    (called by the first on_results/on_event/tick if not called before).
    """

    def __init__(
        self,
        asset: str,
        config: AlarmsConfig,
        state_dir: Path,
        hooks: Mapping[str, AlarmHook],
        clock: Clock,
        *,
        window_secs: int | None = None,
    ) -> None:
        missing = sorted({h for rule in config.rules for h in rule.hooks if h not in hooks})
        if missing:
            raise ConfigError(f"alarm hooks not built: {missing}", key="alarms.hooks")
        self.asset = asset
        self.config = config
        self.state_path = Path(state_dir) / STATE_FILE
        self.hooks = dict(hooks)
        self.clock = clock
        self._decider = Decider(asset, window_secs)
        self._state = EngineState()
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self._chains: dict[tuple[str, str], asyncio.Task] = {}  # (hook, alarm id) → latest delivery task
        self._hook_log = TransitionLog(log)
        # set by the service: where a failed save of the state (full disk) is reported instead of logged
        self.disk: DiskHealth | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the saved state and re-send every delivery still pending from before a restart."""
        async with self._lock:
            if self._started:
                return
            self._state = await asyncio.to_thread(self._load)
            self._prune_to_config()
            self._started = True
            for entry in self._state.outbox:
                self._dispatch(entry)

    async def close(self, timeout_secs: float = 10.0) -> None:
        """Wait up to ``timeout_secs`` for in-flight deliveries, then cancel the rest (they stay pending in
        the saved outbox and are re-sent by the next start)."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_secs)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def drain(self, timeout_secs: float | None = None) -> bool:
        """Wait until no delivery is in flight; True if the outbox is then empty."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_secs is None else loop.time() + timeout_secs
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return not self._state.outbox

    # -- inputs ----------------------------------------------------------------------------------------

    async def on_results(self, results: Iterable[Result]) -> list[Alarm]:
        """Feed result rows (one or more executions); returns the transitions decided (already persisted and
        queued for delivery). Raises StateError when the state cannot be saved: then nothing changed and
        nothing is delivered, so the caller can feed the same rows again (rows already counted are skipped)."""
        rows = list(results)
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, AnomalyRuleConfig):
                    out += self._decider.anomaly(rule, state.anomaly.setdefault(rule.name, AnomalyState()), rows)
                else:
                    opened = state.events.setdefault(rule.name, {})
                    out += self._decider.results_clear(rule, opened, rows)
                    out += self._decider.quiet_clear(rule, opened, now)
            return out

        return await self._apply(decide)

    async def on_event(self, event: Event) -> list[Alarm]:
        """Feed one pipeline or data-health event; returns the transitions decided."""
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, EventRuleConfig):
                    opened = state.events.setdefault(rule.name, {})
                    out += self._decider.event(rule, opened, event)
                    out += self._decider.quiet_clear(rule, opened, now)
            return out

        return await self._apply(decide)

    async def tick(self) -> list[Alarm]:
        """Time-driven checks (clear_after_quiet_secs); call periodically, e.g. once a minute."""
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, EventRuleConfig):
                    out += self._decider.quiet_clear(rule, state.events.setdefault(rule.name, {}), now)
            return out

        return await self._apply(decide)

    # -- views -----------------------------------------------------------------------------------------

    def open_alarms(self) -> list[dict[str, Any]]:
        """Open alarms for `status`: rule, id, since (ts), subject/score."""
        out = []
        for name, st in self._state.anomaly.items():
            if st.episode is not None and st.episode.raised:
                out.append(
                    {
                        "rule": name,
                        "id": st.episode.id,
                        "since": st.episode.first_ts,
                        "score": st.episode.score,
                    }
                )
        for name, opened in self._state.events.items():
            out += [{"rule": name, "id": o.id, "since": o.first_ts, "subject": o.subject} for o in opened.values()]
        return out

    def pending_deliveries(self) -> int:
        """(transition, hook) pairs not yet delivered."""
        return sum(len(e.pending) for e in self._state.outbox)

    # -- internals -------------------------------------------------------------------------------------

    async def _apply(self, decide: Callable[[EngineState], list[Alarm]]) -> list[Alarm]:
        # Decide on a copy and swap it in only after it is on disk: if the save fails (disk full), memory
        # and disk still agree and the input can be fed again.
        if self._closed:
            raise RuntimeError("AlarmEngine is closed")
        await self.start()
        async with self._lock:
            state = copy.deepcopy(self._state)
            alarms = decide(state)
            entries = []
            for alarm in alarms:
                hooks = [h for h in self._rule(alarm.rule).hooks]
                if hooks:
                    entries.append(OutboxEntry(state.next_seq, alarm, hooks))
                    state.next_seq += 1
            state.outbox.extend(entries)
            try:
                await asyncio.to_thread(self._save, state.to_json())
            except StateError as exc:
                if not (alarms and disk_error(exc) is not None
                        and all(self._rule(a.rule).kind == "disk" for a in alarms)):
                    raise
                # The disk alarm exists to be heard while the disk refuses writes: adopt and deliver it from
                # memory; it is saved with the next write that succeeds (a crash before that forgets it, the
                # one at-most-once case). The StateError still reaches the caller, which feeds the same
                # event again (then a suppressed repeat) until the state can be saved.
                self._adopt(state, alarms, entries)
                raise
            self._adopt(state, alarms, entries)
        return alarms

    def _adopt(self, state: EngineState, alarms: list[Alarm], entries: list[OutboxEntry]) -> None:
        self._state = state
        for alarm in alarms:
            log.debug("alarm %s %s rule=%s", alarm.id, alarm.state, alarm.rule)
        # Dispatch last, with no await after it: a crash before the tasks run leaves them pending on disk.
        for entry in entries:
            self._dispatch(entry)

    def _rule(self, name: str) -> AnomalyRuleConfig | EventRuleConfig:
        return next(rule for rule in self.config.rules if rule.name == name)

    def _dispatch(self, entry: OutboxEntry) -> None:
        for hook_name in list(entry.pending):
            chain_key = (hook_name, entry.alarm.id)
            previous = self._chains.get(chain_key)
            task = asyncio.create_task(
                self._deliver(entry, hook_name, previous),
                name=f"alarm-{entry.alarm.id}-{entry.alarm.state}-{hook_name}",
            )
            self._chains[chain_key] = task
            self._tasks.add(task)
            task.add_done_callback(lambda t, k=chain_key: self._task_done(t, k))

    def _task_done(self, task: asyncio.Task, chain_key: tuple[str, str]) -> None:
        self._tasks.discard(task)
        if self._chains.get(chain_key) is task:
            del self._chains[chain_key]
        if not task.cancelled() and task.exception() is not None:  # only _mark_done's StateError can get here
            exc = task.exception()
            if self.disk is not None and disk_error(exc) is not None:
                # the mark is in memory and is saved with the next state write that succeeds
                self.disk.failure("alarms", exc)
            else:
                log.error("alarm delivery bookkeeping failed: %s", exc, exc_info=exc)

    async def _deliver(self, entry: OutboxEntry, hook_name: str, previous: asyncio.Task | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep raise → clear order per (hook, alarm); ignore its outcome
        hook = self.hooks[hook_name]
        alarm = entry.alarm
        try:
            await asyncio.wait_for(hook.fire(alarm), timeout=hook.deadline_secs)
        except (HookError, TimeoutError) as exc:  # the delivery failed (after the hook's retries, or its deadline)
            hook.failures += 1
            self._hook_log.failure(
                hook_name,
                "alarm hook %s failed to deliver %s %s: %s",
                hook_name,
                alarm.id,
                alarm.state,
                str(exc) or type(exc).__name__,
            )
        except Exception as exc:  # supervision boundary: a bug in a hook never reaches the data path
            hook.failures += 1
            self._hook_log.failure(
                hook_name,
                "alarm hook %s raised %s delivering %s %s (a bug in the hook)",
                hook_name,
                type(exc).__name__,
                alarm.id,
                alarm.state,
                exc_info=exc,
            )
        else:
            hook.delivered += 1
            self._hook_log.success(hook_name, "alarm hook %s delivers again", hook_name)
        # The outcome is known: record it even if close() cancels this task meanwhile, or the next start
        # would send it again.
        mark = asyncio.ensure_future(self._mark_done(entry.seq, hook_name))
        try:
            await asyncio.shield(mark)
        except asyncio.CancelledError:
            await mark
            raise

    async def _mark_done(self, seq: int, hook_name: str) -> None:
        async with self._lock:
            for entry in self._state.outbox:
                if entry.seq == seq and hook_name in entry.pending:
                    entry.pending.remove(hook_name)
            self._state.outbox = [e for e in self._state.outbox if e.pending]
            await asyncio.to_thread(self._save, self._state.to_json())

    def _prune_to_config(self) -> None:
        """Drop state of rules no longer configured and deliveries to hooks that no longer exist."""
        rules = {rule.name: rule for rule in self.config.rules}
        for table in (self._state.anomaly, self._state.events):
            for name in [n for n in table if n not in rules]:
                log.warning("alarm rule %s is no longer configured; its saved state is dropped", name)
                del table[name]
        for entry in self._state.outbox:
            gone = [h for h in entry.pending if h not in self.hooks]
            if gone:
                log.warning(
                    "alarm %s %s: hooks %s no longer exist; not delivered",
                    entry.alarm.id,
                    entry.alarm.state,
                    gone,
                )
                entry.pending = [h for h in entry.pending if h in self.hooks]
        self._state.outbox = [e for e in self._state.outbox if e.pending]

    def _load(self) -> EngineState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return EngineState()
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc
        try:
            # A StateError (a file from a newer agent) propagates: better stop than forget open alarms.
            return EngineState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # A corrupt file cannot come from _write_atomic; keep it for inspection and start afresh rather
            # than stop alarming altogether.
            broken = self.state_path.with_suffix(".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.state_path, broken)
            log.error("alarm state %s unreadable (%s); moved to %s, starting empty", self.state_path, exc, broken)
            return EngineState()

    def _save(self, data: bytes) -> None:
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.state_path, data)
        except OSError as exc:
            raise StateError(f"cannot write {self.state_path}: {exc}") from exc
