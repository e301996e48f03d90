"""The disk budget (spool + outbox): an explicit policy, an event for every drop, never a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.config import load
from agent.core.clock import ScaledClock
from agent.core.model import Reading
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool
from agent.runtime.asset import AssetRunner
from tests.helpers import asset_file, write_history

ROOT = Path(__file__).resolve().parents[2]


def plan(budget: int, when_full: str = "drop_oldest") -> WindowPlan:
    return WindowPlan("a", 300, 60, {"c": ["x"]}, {}, 0, 0, "_", "yyyyMMddHHmmss", 0, budget_bytes=budget,
                      when_full=when_full)


def fill(spool: Spool, window_ends: list[int], n: int = 2000) -> None:
    for end in window_ends:
        spool.append([Reading("x", float(i), end - 299 + (i % 290)) for i in range(n)])
    spool.flush()


def test_drop_oldest_raw_windows_first_then_written_windows_only_if_needed(tmp_path):
    spool = Spool(tmp_path / "spool", 300)
    outbox = Outbox(tmp_path / "outbox")
    fill(spool, [600, 900, 1200])
    outbox.put(300, "c_19700101000000.csv", b"x" * 5000)
    per_window = spool.bytes_on_disk() // 3
    closer = WindowCloser(plan(budget=outbox.bytes_on_disk() + per_window + 100), spool, outbox, tmp_path / "p.json")
    events = closer.enforce_budget(2000.0)
    assert [e.details["window_end"] for e in events] == [600, 900]  # oldest raw readings first
    assert all(e.kind == "spool_dropped" and e.details["stage"] == "spool" for e in events)
    assert spool.windows() == [1200]
    assert outbox.windows() == [300]  # the written window is kept while raw data could go
    # a budget that leaves no other choice: the written window goes too, and says so
    closer.plan = plan(budget=10)
    events = closer.enforce_budget(2000.0)
    stages = [e.details["stage"] for e in events]
    assert stages == ["spool", "outbox"]
    assert outbox.windows() == [] and spool.windows() == []
    assert closer.stats.bytes_dropped > 0


def test_within_budget_drops_nothing(tmp_path):
    spool = Spool(tmp_path / "spool", 300)
    fill(spool, [600])
    closer = WindowCloser(plan(budget=1 << 30), spool, Outbox(tmp_path / "o"), tmp_path / "p.json")
    assert closer.enforce_budget(0.0) == []
    assert spool.windows() == [600]


async def test_drop_newest_refuses_readings_and_reports_it(tmp_path):
    write_history(tmp_path / "history.csv", minutes=1)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/",
                      extra='[spool]\nbudget_bytes = 1048576\nwhen_full = "drop_newest"\n')
    runner = AssetRunner(load(path), path, tmp_path / "state", ScaledClock(0, 1))
    events = []
    runner.event_listeners.append(events.append)
    fill(runner.spool, [600, 900, 1200, 1500], n=15000)  # > 1 MiB of segments
    await runner.flush_job()
    assert runner._refusing
    assert [e.details["stage"] for e in events if e.kind == "spool_dropped"] == ["input"]
    assert runner.spool.windows() == [600, 900, 1200, 1500]  # nothing already kept was dropped
    await runner.flush_job()  # still full: the event is not repeated
    assert len([e for e in events if e.kind == "spool_dropped"]) == 1
    for end in (600, 900, 1200, 1500):
        runner.spool.drop_window(end)
    await runner.flush_job()
    assert not runner._refusing
    assert [e.kind for e in events][-1] == "spool_recovered"
    runner.spool.close()


def test_unusable_state_directory_is_a_clear_error_not_a_crash_loop(tmp_path):
    write_history(tmp_path / "history.csv", minutes=1)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/")
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(blocker)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 78  # systemd's RestartPreventExitStatus: no restart loop
    assert "state directory unusable" in proc.stderr and str(blocker) in proc.stderr
    assert "Traceback" not in proc.stderr
