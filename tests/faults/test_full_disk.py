"""A real full filesystem under the state directory: a 2 MiB tmpfs filled during a run, then emptied.

What must hold: every reading taken before the failure is in its window; the ones taken during it are in
their window or counted as dropped by the disk budget's policy; nothing is duplicated; the failure is one
WARNING and the recovery one INFO, with no traceback; the ``disk`` alarm is raised and cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from agent.config import load
from agent.core.clock import ScaledClock
from agent.core.model import Reading
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.diskhealth import DiskHealth
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.ci_policy import require_or_skip
from tests.helpers import T0, asset_file, journal_alarms, parse_csv, write_history

SPEED = 40.0  # a PT5M window takes 7.5 s of wall time


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (the suite runs as root). Skipped only where mounting is not
    permitted, and never under CI=true: there the fault must really be exercised."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                          text=True, timeout=30)
    require_or_skip(proc.returncode == 0, f"cannot mount a tmpfs: {proc.stderr.strip() or proc.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill_up(folder: Path) -> Path:
    """Write a filler file until the filesystem is full (ENOSPC); returns its path."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):  # the last few blocks too, so that nothing fits any more
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    return filler


async def test_full_state_disk_loses_nothing_durable_and_is_one_warning(tmp_path, small_tmpfs, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="l4e")
    frame = write_history(tmp_path / "history.csv", minutes=25, step_secs=1)
    store_dir = tmp_path / "store"
    journal = tmp_path / "alarms.jsonl"
    extra = "\n[spool]\nfsync_interval_ms = 100\n" + journal_alarms(journal, ("disk", "disk"))
    path = asset_file(tmp_path, f"file://{store_dir}/", rate="PT1S", grace=5, extra=extra)
    config = load(path)
    state = small_tmpfs / "state"
    clock = ScaledClock(T0.timestamp() + 60, SPEED)  # the first minute is history: skipped by the replay
    runner = AssetRunner(config, path, state, clock)
    events = []
    runner.event_listeners.append(events.append)
    until = (T0 + pd.Timedelta(minutes=20, seconds=10)).timestamp()
    agent_task = asyncio.create_task(Agent([runner], clock).run(until=until))

    async def wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            assert not agent_task.done(), agent_task
            await asyncio.sleep(0.02)

    # fill the disk in the middle of the window ending 00:10, with readings of it already on disk
    await wait(lambda: clock.now() >= T0.timestamp() + 7 * 60, 60)
    window_end = int(T0.timestamp()) + 600
    before = runner.spool.read(window_end).to_pandas()
    assert len(before) > 100, "nothing of the open window was on disk before the fault"
    filler = await asyncio.to_thread(fill_up, small_tmpfs)
    failed_at = clock.now()
    # keep it full across the window boundary (the window cannot be written) and for several flushes
    await wait(lambda: clock.now() >= T0.timestamp() + 11 * 60, 60)
    assert runner.disk.failing, "the full disk went unnoticed"
    assert runner.spool.held_windows(), "no readings were held in memory while the disk was full"
    # the disk alarm reaches its hook (a file outside the full disk) while the disk is still full
    await wait(lambda: journal.exists() and '"raised"' in journal.read_text(), 30)
    filler.unlink()
    recovered_at = clock.now()
    assert await asyncio.wait_for(agent_task, 90) == 0

    # every window once, complete, with every reading in its cell (rate = step = 1 s: one reading per cell)
    store = FileStore(store_dir)
    keys = list(store.list())
    expected = [f"pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv" for k in range(4)]
    assert keys[: len(expected)] == expected and len(keys) == len(set(keys))
    dropped = sum(e.details.get("readings", 0) for e in events if e.kind == "spool_dropped")
    assert dropped == 0  # the default budget holds 3 minutes of readings in memory easily
    empty_cells = 0
    for key in expected:
        header, rows = parse_csv(store.get(key))
        assert header == ["Timestamp", "flow", "pressure", "temp"]
        stamps = [r[0] for r in rows]
        assert len(stamps) == 300 and len(set(stamps)) == 300  # nothing duplicated, nothing missing
        for row in rows:
            ts = pd.Timestamp(row[0], tz="UTC")
            if ts <= pd.Timestamp(clock.start, unit="s", tz="UTC"):
                continue  # before the replay started
            for sensor, cell in zip(header[1:], row[1:], strict=True):
                if cell == "":
                    empty_cells += 1
                    continue
                assert float(cell) == pytest.approx(frame.at[ts, sensor], abs=1e-9), (key, row[0], sensor)
    assert empty_cells == 0
    # the readings that were on disk before the fault are all in the output (not wiped by the recovery)
    header, rows = parse_csv(store.get(expected[1]))
    by_time = {pd.Timestamp(r[0], tz="UTC").timestamp(): r for r in rows}
    for rec in before.itertuples():
        assert float(by_time[rec.ts][header.index(rec.sensor)]) == pytest.approx(rec.value)

    # one WARNING for the episode, one INFO for the recovery, no traceback, no scheduler noise
    disk_lines = [r for r in caplog.records if r.name == "l4e.disk" and r.levelno >= logging.INFO]
    assert [r.levelname for r in disk_lines] == ["WARNING", "INFO"], [r.getMessage() for r in disk_lines]
    assert "No space left on device" in disk_lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelno >= logging.WARNING]
    others = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name != "l4e.disk"]
    assert others == [], others
    # the disk alarm: raised and cleared (delivered once the alarm state could be saved again)
    kinds = [(e.kind, e.ts) for e in events if e.kind.startswith("disk_")]
    assert [k for k, _ in kinds] == ["disk_failed", "disk_recovered"]
    assert failed_at - SPEED <= kinds[0][1] <= recovered_at and kinds[1][1] >= recovered_at
    delivered = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(a["rule"], a["state"]) for a in delivered] == [("disk", "raised"), ("disk", "cleared")]
    assert delivered[0]["id"] == delivered[1]["id"]


def test_readings_held_during_a_full_disk_are_bounded_by_the_budget_and_every_drop_counted(small_tmpfs):
    """drop_oldest with a disk that refuses every write: memory holds at most the budget, the oldest
    windows' readings go first, and the events count exactly the readings that went."""
    disk = DiskHealth(small_tmpfs)
    spool = Spool(small_tmpfs / "spool", 300, disk)
    outbox = Outbox(small_tmpfs / "outbox")
    budget = 1 << 20
    plan = WindowPlan("a", 300, 1, {"c": ["x"]}, {}, 0, 0, "_", "yyyyMMddHHmmss", 0, budget_bytes=budget)
    closer = WindowCloser(plan, spool, outbox, small_tmpfs / "progress.json")
    spool.append([Reading("x", 1.0, 100.0 + i / 10) for i in range(1000)])
    assert spool.flush() == 1000  # on disk before the fault
    filler = fill_up(small_tmpfs)
    appended = 0
    events = []
    for k in range(8):  # 8 windows × 20k readings: well over the 1 MiB budget once held in memory
        end = 600 + 300 * k
        spool.append([Reading("x", float(i), end - 299 + (i % 290)) for i in range(20_000)])
        appended += 20_000
        assert spool.flush() == 0
        events += closer.enforce_budget(float(end))
        assert closer._used() <= budget
    assert disk.failing and disk.episodes == 1
    assert events and all(e.kind == "spool_dropped" for e in events)
    dropped = sum(e.details["readings"] for e in events)
    # the window on disk since before the fault is the oldest, so it went first (its drop is counted too)
    assert events[0].details["window_end"] == 300 and events[0].details["readings"] == 1000
    held = spool.buffered()
    assert held + dropped == appended + 1000  # every reading either still held or counted as dropped
    filler.unlink()
    assert spool.flush() == held  # space is back: the held readings are written, to new segments
    assert not disk.failing
    on_disk = sum(spool.read(end).num_rows for end in spool.windows())
    assert on_disk == held


def test_a_failed_write_never_truncates_what_is_on_disk(small_tmpfs):
    """The segment written before the fault keeps its records; the retry goes to a new segment."""
    spool = Spool(small_tmpfs / "spool", 300)
    spool.append([Reading("x", float(i), 10.0 + i) for i in range(50)])
    assert spool.flush() == 50
    (first,) = (small_tmpfs / "spool").glob("300-*.l4es")
    size = first.stat().st_size
    filler = fill_up(small_tmpfs)
    spool.append([Reading("x", float(i), 100.0 + i / 100) for i in range(20_000)])
    assert spool.flush() == 0
    assert first.stat().st_size == size  # cut back to its last good record, nothing lost
    assert spool.read(300).num_rows == 50
    filler.unlink()
    assert spool.flush() == 20_000
    segments = sorted((small_tmpfs / "spool").glob("300-*.l4es"))
    assert len(segments) == 2 and segments[0] == first
    values = spool.read(300).value.tolist()
    assert values == [float(i) for i in range(50)] + [float(i) for i in range(20_000)]  # once each, in order
    assert spool.torn_segments == 0
