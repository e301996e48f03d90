"""Fleet mode's scheduler: turns due windows into executions and tasks, in the database, from any process.

Every ``lookout worker`` runs a Dispatcher (any number may run at once). A tick claims, one transaction
each, the most overdue scheduler whose ``due_at`` has passed and that no other dispatcher holds
(``claim_due_scheduler``: a row lock taken with SKIP LOCKED), until none is left; for each one whose resource
lock it can take without waiting (an API call may be changing it), in that transaction: moves PENDING →
RUNNING / STOPPING → STOPPED, creates the due windows' executions IN_PROGRESS (``create_execution``: the
(scheduler, window) primary key decides, so a window gets one execution however many dispatchers race),
defers one procrastinate task per execution it created on the same connection (the task exists exactly when
the execution does), and advances ``_last_end`` (hence ``due_at``). The same window rules as the embedded
scheduler apply (scheduler.due_windows).

Why claims and not a list: when every dispatcher read the same list of due schedulers and walked it, each
one also locked and read every scheduler the others had just dispatched, so the work grew with the number of
dispatchers and dispatching did not get faster with more workers (bench_fleet_scaling's dispatch mode: 2 and 4
confined dispatchers did 1.02× and 1.32× the schedulers per second of one). A claim hands every due
scheduler to exactly one dispatcher, so k dispatchers share the work.
"""

from __future__ import annotations

import logging

from agent.lookout_local.context import Context
from agent.lookout_local.scheduler import MAX_PER_TICK, due_windows, move_status, window_execution
from agent.lookout_local.ticker import Ticker

log = logging.getLogger(__name__)

SCHEDULER = "inference-scheduler"
QUEUE = "lookout"


class Dispatcher(Ticker):
    """``defer(task_name, connection, **kwargs)`` queues a task on the given connection."""

    def __init__(self, ctx: Context, defer, tick_secs: float = 0.2) -> None:
        super().__init__(tick_secs)
        self.ctx = ctx
        self.defer = defer
        self._failing = False

    thread_name = "l4e-fleet-dispatcher"

    def tick_succeeded(self) -> None:
        if self._failing:
            log.info("dispatcher: database reachable again")
            self._failing = False

    def tick_failed(self, exc: Exception) -> None:
        # the database restarting, mostly: retried on the next tick
        if not self._failing:
            log.warning("dispatcher tick failed: %s: %s", type(exc).__name__, exc, exc_info=exc)  # once per episode
            self._failing = True
        else:
            log.debug("dispatcher tick failed again: %s", exc)

    def tick(self) -> int:
        """Dispatch due schedulers until none is left (or ``stop()``); returns the number of executions created.

        A scheduler claimed and left as it was (an API call holds its lock) is not claimed again before the
        next tick, so a tick always ends; one that still has windows due after MAX_PER_TICK of them goes back
        among the others by its ``due_at`` (the most overdue window first, fleet-wide)."""
        state = self.ctx.state
        created = 0
        passed: list[str] = []
        while not self._stop.is_set():
            with state.transaction():
                name = state.claim_due_scheduler(float(self.ctx.clock.now()), passed)
                if name is None:
                    break
                made = self.dispatch(name)
            if made is None:
                passed.append(name)
            else:
                created += made
        return created

    def dispatch(self, name: str) -> int | None:
        """Inside or outside a transaction: the scheduler's status change and due windows; the number of
        executions created, or None when the scheduler was left as it was (locked elsewhere, gone, nothing
        due)."""
        state = self.ctx.state
        with state.transaction():
            if not state.try_lock(SCHEDULER, name):
                return None  # an API call (or another dispatcher) has it right now
            doc = state.get(SCHEDULER, name)
            if doc is None:
                return None
            changed = move_status(doc, self.ctx.clock)
            created = 0
            if doc["Status"] == "RUNNING":
                for window in due_windows(doc, float(self.ctx.clock.now()))[:MAX_PER_TICK]:
                    execution = {**window_execution(self.ctx, doc, window), "Status": "IN_PROGRESS"}
                    if state.create_execution(name, float(window.start), execution):
                        self.defer("l4e.run_execution", state.connection, scheduler=name,
                                   start=window.start, end=window.end)
                        created += 1
                    doc["_last_end"] = max(int(doc["_last_end"]), window.end)
                    changed = True
            if not changed:
                return None
            state.put(SCHEDULER, name, doc["InferenceSchedulerArn"], doc["CreatedAt"], doc)
            return created
