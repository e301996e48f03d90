"""The only module that touches APScheduler. It wakes jobs; it never decides what they do.

Each job is a coroutine that derives its due work from the clock and the persisted state, so a missed or
late wake costs nothing but latency. Intervals are wall seconds (the caller converts clock time with
``Clock.real_seconds``).

Overlapping runs of one job are prevented here, not by APScheduler's ``max_instances``: a job still running
at its next wake-up is the normal case (an upload waiting on a slow store, a window write on a slow disk),
and APScheduler would log a WARNING ("maximum number of running instances reached") for every such
wake-up. The wrapper skips the wake-up silently instead and counts it in ``overlaps`` (job name → wake-ups
skipped). Missed wake-ups are coalesced into one, and a late wake-up is never dropped
(``misfire_grace_time=None``), so APScheduler has nothing to warn about.

A job that raises (a bug, or a peer failing in a way its job does not handle) does not reach APScheduler,
which would log a traceback at every wake-up (five times a second for a fast job): the first failure of a
job is one WARNING with its traceback, repeats are DEBUG, and the first run that succeeds again is one INFO.
Each job fails alone: the others keep their own schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent.core.errors import TransitionLog

log = logging.getLogger("l4e.scheduler")

# APScheduler's own cap, far above what the wrapper lets through (one run plus wake-ups that return at once),
# so its "maximum number of running instances reached" warning cannot happen
_MAX_INSTANCES = 1000


class JobScheduler:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(executors={"default": AsyncIOExecutor()},
                                           job_defaults={"coalesce": True, "max_instances": _MAX_INSTANCES,
                                                         "misfire_grace_time": None})
        self._started = False
        self._running: set[asyncio.Task] = set()
        self._busy: dict[str, asyncio.Task] = {}  # job name → its run in progress
        self._registered: dict[str, object] = {}  # job name → token of its current registration
        self.overlaps: Counter = Counter()  # job name → wake-ups skipped because the last run was still going
        self.failures: Counter = Counter()  # job name → runs that raised
        self._failing = TransitionLog(log)

    def every(self, name: str, interval_secs: float, job: Callable[[], Awaitable[None]],
              first_in_secs: float = 0.0) -> None:
        """Run ``job`` every ``interval_secs`` wall seconds (first run after ``first_in_secs``)."""
        first = datetime.now().astimezone() + timedelta(seconds=first_in_secs)
        token = self._registered[name] = object()

        async def tracked() -> None:
            if self._registered.get(name) is not token:  # woken before it was removed or replaced: stale
                return
            if name in self._busy:  # still running from an earlier wake-up: normal, skip this one quietly
                self.overlaps[name] += 1
                return
            task = asyncio.current_task()
            self._busy[name] = task
            self._running.add(task)
            try:
                await job()
            except Exception as exc:
                self.failures[name] += 1
                self._failing.failure(name, "job %s failed: %s: %s; retried at each wake-up, further failures are "
                                      "logged at DEBUG until it succeeds", name, type(exc).__name__, exc,
                                      exc_info=exc)
            else:
                self._failing.success(name, "job %s succeeds again", name)
            finally:
                self._running.discard(task)
                if self._busy.get(name) is task:
                    del self._busy[name]

        tracked.__name__ = name
        self._scheduler.add_job(tracked, "interval", seconds=max(0.01, interval_secs), id=name, name=name,
                                next_run_time=first, replace_existing=True)

    async def remove(self, names: list[str]) -> None:
        """Stop waking the jobs ``names`` and wait until their runs in progress have ended (a runner being
        drained must not have a job of its own still writing beside the drain, or after it). A name not
        registered, or a scheduler already shut down, is fine."""
        for name in names:
            self._registered.pop(name, None)
            job = self._scheduler.get_job(name)
            if job is not None:
                job.remove()
        running = {self._busy[name] for name in names if name in self._busy}
        if running:
            await asyncio.wait(running)

    def start(self) -> None:
        self._scheduler.start()
        self._started = True

    async def shutdown(self, grace_secs: float = 10.0) -> None:
        """Stop waking jobs, let runs in progress finish (up to ``grace_secs``; an upload cut in the middle
        would be repeated by the drain), then stop."""
        if self._started:
            self._scheduler.pause()
            if self._running:
                await asyncio.wait(set(self._running), timeout=grace_secs)
            self._scheduler.shutdown(wait=False)
            self._started = False
            await asyncio.sleep(0)  # let cancelled job wrappers unwind
