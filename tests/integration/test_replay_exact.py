"""Replay is exact: it starts at the clock's anchor whatever the start-up latency, resumes after what the agent
already holds when it is killed and restarted, and the same inputs give the same bytes."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from pathlib import Path

import pandas as pd

from agent.config import load
from agent.core.clock import ScaledClock
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.helpers import CSV_REL_TOL, T0, asset_file, parse_csv, reference_windows, start_agent, write_history

SPEED = 300.0


def objects(store_dir: Path) -> dict[str, bytes]:
    store = FileStore(store_dir)
    return {key: store.get(key) for key in store.list()}


def assert_windows_match_pandas(objs: dict[str, bytes], frame: pd.DataFrame, windows: int) -> None:
    reference = reference_windows(frame, 60, 300)
    expected = [f"pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv" for k in range(windows)]
    assert sorted(objs) == expected
    for k, key in enumerate(expected):
        header, rows = parse_csv(objs[key])
        ref = reference[T0 + pd.Timedelta(minutes=5 * k)]
        assert len(rows) == len(ref) == 5
        for row, (_, ref_row) in zip(rows, ref.iterrows(), strict=True):
            for cell, sensor in zip(row[1:], header[1:], strict=True):
                assert math.isclose(float(cell), ref_row[sensor], rel_tol=CSV_REL_TOL), (key, row[0], sensor)


async def test_first_window_at_300x_equals_an_independent_resample(tmp_path):
    frame = write_history(tmp_path / "history.csv", minutes=12)
    store_dir = tmp_path / "store"
    path = asset_file(tmp_path, f"file://{store_dir}/", fill_limit=2)
    clock = ScaledClock(T0.timestamp(), SPEED)  # the first row is 10 s after the anchor: 33 ms of wall time
    await asyncio.sleep(0.3)  # start-up latency (90 s of clock): the old replay skipped every row before it
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)
    until = (T0 + pd.Timedelta(minutes=10, seconds=10)).timestamp()
    assert await asyncio.wait_for(Agent([runner], clock).run(until=until), 60) == 0
    assert_windows_match_pandas(objects(store_dir), frame, windows=2)


def run_cli(path: Path, state: Path, until: pd.Timestamp):
    return start_agent(path, state, clock_start=(T0 - pd.Timedelta(seconds=30)).isoformat(), speed=SPEED,
                       until=until.isoformat())


def test_kill_9_and_restart_lose_and_repeat_no_row_and_two_runs_are_byte_identical(tmp_path):
    frame = write_history(tmp_path / "history.csv", minutes=40)
    until = T0 + pd.Timedelta(minutes=30, seconds=10)
    runs = {}
    for name in ("killed", "clean"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "history.csv").write_bytes((tmp_path / "history.csv").read_bytes())
        store_dir = folder / "store"
        path = asset_file(folder, f"file://{store_dir}/", fill_limit=2)
        state = folder / "state"
        if name == "killed":
            proc = run_cli(path, state, until)
            deadline = time.monotonic() + 30
            # kill in the middle of a window, once some windows are out and the spool holds readings
            while len(list(store_dir.glob("*.csv"))) < 2 or not list((state / "spool").glob("*.l4es")):
                assert time.monotonic() < deadline and proc.poll() is None, "no progress before the kill"
                time.sleep(0.02)
            time.sleep(0.15)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)  # reaps it and closes its stderr pipe
            before = len(list(store_dir.glob("*.csv")))
            assert 2 <= before < 6
        proc = run_cli(path, state, until)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        runs[name] = objects(store_dir)
    # nothing lost before the kill and nothing sent twice: every row equals the independent resample
    assert_windows_match_pandas(runs["killed"], frame, windows=6)
    assert runs["killed"] == runs["clean"]  # same CSV, same settings: the same bytes, crash or not


def test_a_lagging_replay_holds_its_windows_open_but_not_forever(tmp_path):
    write_history(tmp_path / "history.csv", minutes=12)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/", grace=5)
    clock = ScaledClock(T0.timestamp() + 400, 1.0)  # a window (T0, T0+300] is due by the clock
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)
    replay = runner.connectors[0]
    replay.stats.watermark = T0.timestamp() + 250  # rows after T0+250 not handed over yet (a loaded machine)
    assert runner.plan.due_up_to(runner.close_time()) == T0.timestamp()  # (T0, T0+300] stays open
    replay.stats.watermark = T0.timestamp() + 301  # every row of it is out
    assert runner.plan.due_up_to(runner.close_time()) == T0.timestamp() + 300
    replay.stats.watermark = T0.timestamp() - 10_000  # a stuck source holds the others back one period at most
    assert runner.close_time() >= clock.now() - 300 - 1
