"""kill -9 in the middle of a window, then restart: no flushed reading lost, no duplicate or partial object."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore
from tests.helpers import CSV_REL_TOL, T0, asset_file, parse_csv, start_agent, wait_for, write_history

SPEED = 60.0


def start_replay(path: Path, state: Path, until: pd.Timestamp):
    return start_agent(path, state, clock_start=(T0 - pd.Timedelta(minutes=2)).isoformat(), speed=SPEED,
                       until=until.isoformat())


def test_kill_9_mid_window_then_restart(tmp_path):
    write_history(tmp_path / "history.csv", minutes=30, step_secs=5)
    store_dir = tmp_path / "store"
    path = asset_file(tmp_path, f"file://{store_dir}/", grace=5)
    state = tmp_path / "state"
    store = FileStore(store_dir)
    until = T0 + pd.Timedelta(minutes=20, seconds=10)

    first = start_replay(path, state, until)
    try:
        # wait until two windows are in the store, then a bit into the third window, and kill -9
        assert wait_for(lambda: len(list(store.list())) >= 2, 60), "agent wrote nothing"
        anchor = json.loads((state / "clock.json").read_text())
        clock_now = lambda: anchor["start"] + (time.time() - anchor["anchor"]) * anchor["speed"]  # noqa: E731
        mid_third = T0.timestamp() + 12.5 * 60
        assert wait_for(lambda: clock_now() >= mid_third, 60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)  # reaps it and closes its stderr pipe
    assert first.returncode == -signal.SIGKILL
    killed_at = clock_now()

    # what was durable at the kill: the spool segments of the open windows
    flushed = Spool(state / "spool", 300)
    flushed_rows = []
    for end in flushed.windows():
        table = flushed.read(end).to_pandas()
        flushed_rows.append(table)
    flushed_df = pd.concat(flushed_rows) if flushed_rows else pd.DataFrame(columns=["sensor", "ts", "value"])
    assert len(flushed_df) > 0, "nothing was in the spool at the kill"
    # at most one fsync interval (1 s of wall time = 60 s of clock) may be unflushed
    assert flushed_df["ts"].max() >= killed_at - SPEED * 1.0 - 5

    second = start_replay(path, state, until)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]

    keys = list(store.list())
    expected = [f"pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv" for k in range(4)]
    assert keys == expected  # each window once, nothing else (no temporary, no duplicate)
    for key in keys:
        header, rows = parse_csv(store.get(key))
        assert header == ["Timestamp", "flow", "pressure", "temp"]
        assert len(rows) == 5 and all(len(r) == 4 for r in rows)  # complete, not partial

    # every flushed reading is in the output: the grid point it falls in has the mean of the flushed readings
    # of that interval (the plant's rows during the downtime were never read, so nothing else can be there)
    header, rows = parse_csv(store.get(keys[2]))
    by_time = {r[0]: r for r in rows}
    flushed_df["g"] = np.ceil(flushed_df["ts"] / 60) * 60
    checked = 0
    for (g, sensor), part in flushed_df.groupby(["g", "sensor"]):
        stamp = pd.Timestamp(g, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")
        if stamp not in by_time or g > killed_at - SPEED:  # the last, possibly partial, interval
            continue
        cell = by_time[stamp][header.index(sensor)]
        assert cell != "", (stamp, sensor)
        assert math.isclose(float(cell), part["value"].mean(), rel_tol=CSV_REL_TOL), (stamp, sensor)
        checked += 1
    assert checked >= 3
    assert not os.listdir(state / "outbox" / ".tmp")
