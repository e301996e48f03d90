"""One broken results prefix never stalls the others: two assets under one running Agent, each reading its
results from its own folder store prefix (real files, the listing path). The broken one holds a results folder
whose name is no real instant and a results object that cannot be read (a link to itself, until replaced).
The healthy asset's anomaly still becomes an alarm in time; the broken asset's readable windows still become
alarms; each failure is logged once when it starts and once when it ends, never a traceback per poll."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
from pathlib import Path

import pytest

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.core.errors import StoreUnavailable
from agent.core.model import Window
from agent.lookout.results import ResultsPoller
from agent.pipeline.store import FileStore
from agent.pipeline.windows import format_csv_time, results_key
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner

pytestmark = pytest.mark.timeout(60)

T0 = parse_instant("2026-01-01T00:00:00Z")
SPEED = 60.0  # the results job wakes every 0.5 s of wall time


def asset_file(folder: Path, asset: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "history.csv").write_text("Timestamp,flow\n2026-01-01T00:00:00Z,1.0\n")
    path = folder / "asset.toml"
    path.write_text(textwrap.dedent(f"""\
        asset = "{asset}"
        [lookout]
        upload_frequency = "PT5M"
        delay_offset_minutes = 2
        sampling_rate = "PT1M"
        input = "file://{folder}/input/"
        output = "file://{folder}/output/"
        [components]
        pump = ["flow"]
        [alarms.hooks.journal]
        kind = "file"
        path = "{folder}/alarms.jsonl"
        [[alarms.rules]]
        name = "anomaly"
        kind = "anomaly"
        min_consecutive = 2
        clear_after = 100
        hooks = ["journal"]
        [[sources]]
        name = "history"
        kind = "replay"
        path = "history.csv"
        """))
    return path


def results_body(window: Window, abnormal: bool) -> bytes:
    lines = [json.dumps({"timestamp": format_csv_time(window.start + 60 * i), "prediction": int(abnormal),
                         "prediction_reason": "ANOMALY_DETECTED" if abnormal else "NO_ANOMALY_DETECTED",
                         "anomaly_score": 0.9 if abnormal else 0.1,
                         "diagnostics": [{"name": "pump\\flow", "value": 1.0}]}) for i in range(1, 6)]
    return ("\n".join(lines) + "\n").encode()


def put(folder: Path, window: Window, abnormal: bool) -> Path:
    path = folder / "output" / results_key("", window)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(results_body(window, abnormal))
    return path


def raised(folder: Path) -> list[dict]:
    journal = folder / "alarms.jsonl"
    lines = journal.read_text().splitlines() if journal.exists() else []
    return [a for a in map(json.loads, lines) if a["state"] == "raised"]


async def wait_until(predicate, timeout_secs: float) -> None:
    deadline = time.monotonic() + timeout_secs
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def lines_with(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_broken_results_prefix_stalls_neither_itself_nor_the_others(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="l4e")
    good, bad = tmp_path / "good", tmp_path / "bad"
    windows = [Window(int(T0) + 300 * k, int(T0) + 300 * (k + 1)) for k in range(4)]
    clock = ScaledClock(T0 + 3600, SPEED)
    runners = []
    for folder in (good, bad):
        path = asset_file(folder, folder.name)
        config = load(path)
        runner = AssetRunner(config, path, folder / "state", clock)
        runner.results_poller = ResultsPoller(config.asset, config.lookout, folder / "state", clock)
        runners.append(runner)
    put(good, windows[0], abnormal=False)
    put(good, windows[1], abnormal=True)
    # the broken prefix: a folder named like a window start that is no instant (February 30th), then a
    # results object that is a directory (unreadable until replaced), then an abnormal window
    garbage = bad / "output" / "2026-02-30T00:00:00Z" / "results.jsonl"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00\xff not json\n")
    put(bad, windows[0], abnormal=False)
    # a listed object whose every read fails (EIO from a failing disk: no real peer gives it on demand as root,
    # and the folder store no longer lists a link that loops, so the read is the one thing faked)
    unreadable = put(bad, windows[1], abnormal=False)
    failing = {str(unreadable)}
    real_get = FileStore.get

    def get(self, key):
        if str(self.root / key) in failing:
            raise StoreUnavailable(f"cannot read {self.root / key}: [Errno 5] Input/output error")
        return real_get(self, key)

    monkeypatch.setattr(FileStore, "get", get)
    put(bad, windows[2], abnormal=True)
    put(bad, windows[3], abnormal=True)

    agent = Agent(runners, clock)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: raised(good), 10)  # the healthy asset is served at once
        polls = runners[1].results_poller.stats.polls
        await wait_until(lambda: runners[1].results_poller.stats.polls >= polls + 5, 10)  # several retries
        assert not raised(bad)  # stopped at the unreadable object (it may come back): nothing after it yet
        failing.clear()  # the disk reads again
        await wait_until(lambda: raised(bad), 10)
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)

    alarm = raised(bad)[0]
    assert alarm["window_start"] == windows[2].start  # handled in order, after the window that was unreadable
    assert raised(good)[0]["window_start"] == windows[1].start
    assert runners[1].results_poller.stats.executions_succeeded == 4  # the garbage folder is no execution
    # each failure: one line when it starts, one when it ends; never a traceback per poll
    visible = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("l4e")]
    assert len([r for r in visible if "does not name a real window start" in r.getMessage()]) == 1
    starts = [r for r in visible if "cannot read results object" in r.getMessage()]
    ends = [r for r in visible if "reading results works again" in r.getMessage()]
    assert (len(starts), len(ends)) == (1, 1)
    assert starts[0].levelno == logging.WARNING and starts[0].getMessage().startswith("bad: ")
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO], "no traceback"
    assert not lines_with(caplog, "raised an exception")  # APScheduler's per-wake-up traceback
