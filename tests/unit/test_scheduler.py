"""The scheduler wakes jobs; a job still running at its next wake-up is the normal case, not a warning."""

from __future__ import annotations

import asyncio
import logging

from agent.runtime.scheduler import JobScheduler


async def test_a_job_still_running_at_its_next_wake_up_is_skipped_quietly(caplog) -> None:
    caplog.set_level(logging.DEBUG)  # APScheduler's own loggers at every level
    scheduler = JobScheduler()
    runs = running = most = 0

    async def slow() -> None:
        nonlocal runs, running, most
        runs += 1
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.4)
        running -= 1

    scheduler.every("slow", 0.05, slow)
    scheduler.start()
    await asyncio.sleep(1.0)
    await scheduler.shutdown()
    assert 2 <= runs <= 3 and most == 1  # never two runs at once
    assert scheduler.overlaps["slow"] >= 8  # the wake-ups in between were skipped, and counted
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []  # APScheduler's "maximum number of running instances reached" never appears


async def test_a_failing_job_is_logged_once_when_it_starts_and_once_when_it_ends(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    scheduler = JobScheduler()
    runs = other = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        if runs <= 10:
            raise ValueError("a garbage name under the results prefix")

    async def healthy() -> None:
        nonlocal other
        other += 1

    scheduler.every("broken", 0.02, broken)
    scheduler.every("healthy", 0.02, healthy)
    scheduler.start()
    for _ in range(200):  # bounded: at most 4 s
        if runs > 12:
            break
        await asyncio.sleep(0.02)
    await scheduler.shutdown()
    assert runs > 12 and other >= 10  # the broken job keeps its schedule, the other one is not held up
    assert scheduler.failures["broken"] == 10
    visible = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("l4e")]
    assert [r.levelno for r in visible] == [logging.WARNING, logging.INFO]
    assert visible[0].exc_info is not None and "ValueError" in visible[0].getMessage()  # the bug's traceback, once
    assert "succeeds again" in visible[1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # APScheduler's traceback never shows


async def test_removed_jobs_end_their_run_and_never_run_again() -> None:
    """What a drained runner relies on (agent.runtime.asset.drain): once ``remove`` returns, the job's run in
    progress has ended and no wake-up of it, not even one already dispatched, runs any more."""
    scheduler = JobScheduler()
    started = asyncio.Event()
    runs = finished = 0

    async def job() -> None:
        nonlocal runs, finished
        runs += 1
        started.set()
        await asyncio.sleep(0.3)
        finished += 1

    scheduler.every("job", 0.05, job)
    scheduler.start()
    await asyncio.wait_for(started.wait(), 5)
    await scheduler.remove(["job", "not-registered"])
    assert finished == runs == 1  # the run in progress was waited for
    await asyncio.sleep(0.3)
    assert runs == 1  # and nothing ran after it
    await scheduler.shutdown()
    await scheduler.remove(["job"])  # after shutdown: nothing to do, no error
