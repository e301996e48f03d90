"""Fleet mode's work distribution on procrastinate (PostgreSQL is the queue: no extra broker).

Three tasks, all on queue ``lookout``: ``l4e.ingest`` (job id), ``l4e.train`` (model name) and
``l4e.run_execution`` (scheduler, window start, end). The API defers the first two inside the operation's
transaction, the Dispatcher the third inside the transaction that creates the execution, so a task exists
exactly when its database record does.

``FleetWorker`` is what ``lookout worker`` runs (and ``lookout serve --db`` embeds unless ``--workers 0``): a
procrastinate worker (one task at a time per worker: the tasks are CPU-bound and hold the GIL, so a host
scales with processes) plus a Dispatcher plus a lease sweep. Leases: every worker beats its heartbeat every
lease/4 s; a task still ``doing`` on a worker silent for ``lease_secs`` (SIGKILL, power loss, partition) is
put back to ``todo`` by any live worker's sweep and runs again elsewhere. Re-running is safe: the tasks only
move records that are still IN_PROGRESS (``finish_execution``), and an execution writes the same key with
the same bytes. When the database goes away the procrastinate worker stops; the runtime starts it again
with capped backoff, so a database restart needs no restart of the worker process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.core.model import Window
from agent.lookout_local.context import Context
from agent.lookout_local.dispatch import QUEUE, Dispatcher
from agent.lookout_local.scheduler import ModelCache, perform, prune_executions
from agent.lookout_local.worker import Worker

log = logging.getLogger(__name__)

SCHEDULER = "inference-scheduler"
DEFAULT_LEASE_SECS = 30.0
# A task whose body raised (the database went away between the work and its record, or a bug) runs again after
# 2 + 2^(n+1) s: 4, 6, 10, ... 1026 s, about 35 minutes in all, so a database restart or a failover is ridden
# out; after the last attempt the lease sweep records the resource FAILED (Tasks.abandon).
RETRY = {"max_attempts": 10, "wait": 2, "exponential_wait": 2}
KEEP_JOBS_HOURS = 1      # finished task records kept for inspection (procrastinate_jobs), then deleted
CLEANUP_SECS = 600.0


def deferrer(state):
    """A ``defer(task_name, connection, **kwargs)`` over procrastinate's sync connector on ``state``'s pool."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())
    app.open(state.pool)

    def defer(task_name: str, connection, **kwargs) -> int:
        return app.configure_task(task_name, queue=QUEUE, connection=connection).defer(**kwargs)

    return defer


class Tasks:
    """The task bodies, over one process's context."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.jobs = Worker(ctx)  # its run_ingestion / run_training, without its thread
        self.models = ModelCache(ctx)
        self.gate = threading.Lock()  # held by every task body; FleetWorker.paused() holds it between tasks

    def ingest(self, job_id: str) -> None:
        with self.gate:
            self.jobs.run_ingestion(job_id)

    def train(self, model: str) -> None:
        with self.gate:
            self.jobs.run_training(model)

    def run_execution(self, scheduler: str, start: int, end: int) -> str:
        """Run an IN_PROGRESS execution and record it once; returns what happened (for the log)."""
        with self.gate:
            return self._run_execution(scheduler, start, end)

    def abandon(self, task_name: str, kwargs: dict, attempts: int) -> bool:
        """Record FAILED the resource of a task that failed for good (its retries exhausted), so nothing stays
        IN_PROGRESS for ever; True when a record was changed. Only what escaped the bodies ends here (the
        database going away between the work and its record for longer than the retries, or a bug)."""
        reason = (f"Internal error: the task failed {attempts} times without recording an outcome; "
                  "see the workers' logs")
        state = self.ctx.state
        with self.gate, state.transaction():
            if task_name == "l4e.run_execution":
                execution = state.get_execution(kwargs["scheduler"], float(kwargs["start"]))
                if execution is None or execution["Status"] != "IN_PROGRESS":
                    return False
                execution.update(Status="FAILED", FailedReason=reason, _finished_at=time.time())
                return state.finish_execution(kwargs["scheduler"], float(kwargs["start"]), execution)
            if task_name == "l4e.train":
                model = state.get("model", kwargs["model"])
                if model is None or model["Status"] != "IN_PROGRESS":
                    return False
                model.update(Status="FAILED", FailedReason=reason, LastUpdatedTime=float(self.ctx.clock.now()))
                state.put("model", model["ModelName"], model["ModelArn"], model["CreatedAt"], model)
                return True
            if task_name == "l4e.ingest":
                job = state.get_job(kwargs["job_id"])
                if job is None or job["Status"] != "IN_PROGRESS":
                    return False
                job.update(Status="FAILED", FailedReason=reason)
                state.put_job(kwargs["job_id"], job["DatasetName"], job["CreatedAt"], job)
                dataset = state.get("dataset", job["DatasetName"])
                if dataset is not None and dataset.get("Status") == "INGESTION_IN_PROGRESS":
                    dataset["Status"] = "ACTIVE" if dataset.get("DataEndTime") is not None else "CREATED"
                    state.put("dataset", dataset["DatasetName"], dataset["DatasetArn"], dataset["CreatedAt"], dataset)
                return True
        return False

    def _run_execution(self, scheduler: str, start: int, end: int) -> str:
        state = self.ctx.state
        execution = state.get_execution(scheduler, float(start))
        if execution is None or execution["Status"] != "IN_PROGRESS":
            return "already finished"  # a re-run after the first run recorded it
        window = Window(int(start), int(end))
        execution, anomalous = perform(self.ctx, self.models, execution, window)
        execution["_finished_at"] = time.time()  # wall seconds: the lag monitors and the benchmark measure
        with state.transaction():
            doc = state.get(SCHEDULER, scheduler)
            if not state.finish_execution(scheduler, float(start), execution):
                return "finished meanwhile"
            if doc is not None and anomalous is not None and window.end >= doc.get("_result_end", 0):
                doc.update(LatestInferenceResult="ANOMALOUS" if anomalous else "NORMAL", _result_end=window.end)
                state.put(SCHEDULER, scheduler, doc["InferenceSchedulerArn"], doc["CreatedAt"], doc)
        return execution["Status"]


def worker_app(db_url: str, tasks: Tasks):
    """A procrastinate App (async connector) with the three tasks registered."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=db_url))
    # the bodies record data problems themselves: what escapes is the infrastructure (the database restarting
    # between the work and its record), worth another attempt
    retry = procrastinate.RetryStrategy(**RETRY)
    app.task(name="l4e.ingest", queue=QUEUE, retry=retry)(tasks.ingest)
    app.task(name="l4e.train", queue=QUEUE, retry=retry)(tasks.train)
    app.task(name="l4e.run_execution", queue=QUEUE, retry=retry)(tasks.run_execution)
    return app


class FleetWorker:
    """A worker process's runtime: procrastinate worker + dispatcher + lease sweep, in daemon threads."""

    def __init__(self, ctx: Context, db_url: str, *, lease_secs: float = DEFAULT_LEASE_SECS, tick_secs: float = 0.2,
                 poll_secs: float = 1.0, name: str | None = None) -> None:
        self.ctx = ctx
        self.db_url = db_url
        self.lease_secs = lease_secs
        self.poll_secs = poll_secs
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.tasks = Tasks(ctx)
        self.dispatcher = Dispatcher(ctx, deferrer(ctx.state), tick_secs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker = None

    def start(self) -> FleetWorker:
        self._stop.clear()
        self.dispatcher.start()
        self._thread = threading.Thread(target=self._run, name="l4e-fleet-worker", daemon=True)
        self._thread.start()
        return self

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold this worker between tasks (as ``Worker.paused``): for maintenance and tests."""
        with self.tasks.gate:
            yield

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking tasks, let the running one finish (at most ``timeout`` s), stop dispatching."""
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.stop()  # thread-safe: procrastinate wakes its own loop
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.dispatcher.stop(timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                asyncio.run(self._main())
                backoff = 0.5
            except Exception as exc:  # supervision boundary: the worker thread must outlive any failure
                # the first failure of a run of them carries the traceback (a bug shows where); retries one line
                log.warning("fleet worker %s: %s: %s; starting again in %.1fs", self.name, type(exc).__name__,
                            exc, backoff, exc_info=backoff == 0.5)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)

    async def _main(self) -> None:
        from procrastinate import worker as pworker

        app = worker_app(self.db_url, self.tasks)
        async with app.open_async():
            self._worker = pworker.Worker(
                app, queues=[QUEUE], name=self.name, concurrency=1, install_signal_handlers=False,
                fetch_job_polling_interval=self.poll_secs, abort_job_polling_interval=max(self.poll_secs, 5.0),
                update_heartbeat_interval=self.lease_secs / 4, stalled_worker_timeout=self.lease_secs,
                shutdown_graceful_timeout=30.0)
            if self._stop.is_set():
                return
            sweep = asyncio.create_task(self._sweep(app))
            try:
                await self._worker.run()
            finally:
                self._worker = None
                sweep.cancel()

    async def _abandon_failed(self, app, seen: set[int]) -> None:
        """Tasks failed for good (retries exhausted) whose resource is still IN_PROGRESS: record it FAILED."""
        for job in await app.job_manager.list_jobs_async(queue=QUEUE, status="failed"):
            if job.id in seen:
                continue
            if await asyncio.to_thread(self.tasks.abandon, job.task_name, job.task_kwargs, job.attempts):
                log.error("task %s %s failed %d times: its resource is recorded FAILED", job.id, job.call_string,
                          job.attempts)
            seen.add(job.id)

    async def _sweep(self, app) -> None:
        """Put the tasks of workers silent for a lease back in the queue (every lease/4 s); drop finished
        task records older than KEEP_JOBS_HOURS (every CLEANUP_SECS)."""
        from procrastinate.exceptions import ConnectorException

        failing = False
        loop = asyncio.get_running_loop()
        cleaned = -CLEANUP_SECS  # the first pass cleans up at once
        abandoned: set[int] = set()  # failed tasks already looked at by this worker
        while True:
            await asyncio.sleep(self.lease_secs / 4)
            try:
                if loop.time() - cleaned > CLEANUP_SECS:
                    await app.job_manager.delete_old_jobs(nb_hours=KEEP_JOBS_HOURS, queue=QUEUE)
                    await asyncio.to_thread(prune_executions, self.ctx)
                    cleaned = loop.time()
                await self._abandon_failed(app, abandoned)
                for job in await app.job_manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self.lease_secs):
                    try:
                        await app.job_manager.retry_job(job)
                        log.warning("task %s %s of a silent worker: queued again", job.id, job.call_string)
                    except ConnectorException as exc:  # another sweep took it first: not "doing" any more
                        log.debug("retry of task %s: %s", job.id, exc)
                failing = False
            except Exception as exc:  # supervision boundary: the database restarting, mostly; next pass retries
                if not failing:
                    log.warning("lease sweep failed: %s", exc, exc_info=True)
                failing = True
