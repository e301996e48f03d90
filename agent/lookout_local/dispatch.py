"""Fleet mode's scheduler: turns due windows into executions and tasks, in the database, from any process.

Every ``lookout worker`` runs a Dispatcher (any number may run at once). A tick asks PostgreSQL for the
schedulers whose ``due_at`` has passed and, for each one whose lock it can take without waiting (the others
are being dispatched by another process), in one transaction: moves PENDING → RUNNING / STOPPING → STOPPED,
creates the due windows' executions IN_PROGRESS (``create_execution``: the (scheduler, window) primary key
decides, so a window gets one execution however many dispatchers race), defers one procrastinate task per
execution it created on the same connection (the task exists exactly when the execution does), and advances
``_last_end`` (hence ``due_at``). The same window rules as the embedded scheduler apply (scheduler.due_windows).
"""

from __future__ import annotations

import logging

from agent.lookout_local.context import Context
from agent.lookout_local.scheduler import MAX_PER_TICK, due_windows, move_status, window_execution
from agent.lookout_local.ticker import Ticker

log = logging.getLogger(__name__)

SCHEDULER = "inference-scheduler"
QUEUE = "lookout"
BATCH = 500  # schedulers looked at per query


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
        """One pass over the due schedulers; returns the number of executions created."""
        created = 0
        for name in self.ctx.state.due_schedulers(float(self.ctx.clock.now()), BATCH):
            if self._stop.is_set():
                break
            created += self.dispatch(name)
        return created

    def dispatch(self, name: str) -> int:
        state = self.ctx.state
        with state.transaction():
            if not state.try_lock(SCHEDULER, name):
                return 0  # another dispatcher has it right now
            doc = state.get(SCHEDULER, name)
            if doc is None:
                return 0
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
            if changed:
                state.put(SCHEDULER, name, doc["InferenceSchedulerArn"], doc["CreatedAt"], doc)
            return created
