"""End to end with the replay connector at an accelerated clock into a folder store and into moto's S3
server over HTTP: every object name and every row checked against the README's Decisions."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from agent.config import load
from agent.core.clock import ScaledClock
from agent.pipeline.store import FileStore, S3Store
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.helpers import CSV_REL_TOL, T0, asset_file, parse_csv, reference_windows, write_history

ROOT = Path(__file__).resolve().parents[2]
SPEED = 120.0
# The replay connector skips rows older than the clock at start; the clock starts a little before the data so
# the process start-up (≈1 s of wall time = minutes of clock time at 120×) costs no row.


def check_objects(objects: dict[str, bytes], frame: pd.DataFrame, prefix: str, windows: int) -> None:
    """Names (rule 3), header (rule 4), rows in (start, end] (rule 2) and values against pandas."""
    reference = reference_windows(frame, 60, 300)
    expected_keys = []
    for k in range(windows):
        start = T0 + pd.Timedelta(minutes=5 * k)
        expected_keys.append(f"{prefix}pump_{start.strftime('%Y%m%d%H%M%S')}.csv")
    assert sorted(objects) == expected_keys
    for k, key in enumerate(expected_keys):
        start = T0 + pd.Timedelta(minutes=5 * k)
        header, rows = parse_csv(objects[key])
        assert header == ["Timestamp", "flow", "pressure", "temp"]
        assert [r[0] for r in rows] == [(start + pd.Timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%S.%f")
                                        for m in range(1, 6)]
        ref = reference[start]
        for row, (_, ref_row) in zip(rows, ref.iterrows(), strict=True):
            for cell, sensor in zip(row[1:], header[1:], strict=True):
                assert math.isclose(float(cell), ref_row[sensor], rel_tol=CSV_REL_TOL), (key, row[0], sensor)
        assert objects[key].endswith(b"\n")


async def test_replay_into_folder_store_at_120x(tmp_path):
    frame = write_history(tmp_path / "history.csv", minutes=30)
    store_dir = tmp_path / "store" / "plant-l4e" / "pump-07" / "input"
    path = asset_file(tmp_path, f"file://{store_dir}/")
    config = load(path)
    clock = ScaledClock(T0.timestamp() - 60, SPEED)  # a lead so start-up time costs no row
    runner = AssetRunner(config, path, tmp_path / "state", clock)
    events = []
    runner.event_listeners.append(events.append)
    until = (T0 + pd.Timedelta(minutes=20, seconds=10)).timestamp()
    assert await asyncio.wait_for(Agent([runner], clock).run(until=until), 60) == 0
    store = FileStore(store_dir)
    objects = {key: store.get(key) for key in store.list()}
    check_objects(objects, frame, "", windows=4)
    assert runner.uploader.stats.uploaded == 4
    assert runner.outbox.entries() == []
    assert [e for e in events if e.kind != "window_written"] == []  # every window had data
    # the uploaded windows are a training history of their own (provision --from-windows)
    from agent.lookout.provision import history_from_windows

    history = history_from_windows(config)
    assert list(history.columns) == ["flow", "pressure", "temp"]
    assert len(history) == 20 and history.index.is_monotonic_increasing
    assert history.index[0] == T0 + pd.Timedelta(minutes=1)
    ref = reference_windows(frame, 60, 300)
    assert math.isclose(history["pressure"].iloc[7], ref[T0 + pd.Timedelta(minutes=5)]["pressure"].iloc[2])
    assert sorted(e.details["window_start"] for e in events) == [T0.timestamp() + 300 * k for k in range(4)]


def test_cli_run_into_moto_s3_over_http(tmp_path, moto_s3):
    client = moto_s3.client()
    client.create_bucket(Bucket="plant-l4e")
    frame = write_history(tmp_path / "history.csv", minutes=30)
    path = asset_file(tmp_path, "s3://plant-l4e/pump-07/input/")
    env = dict(os.environ, AWS_ENDPOINT_URL_S3=moto_s3.url)
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(tmp_path / "state"),
         "--clock-start", (T0 - pd.Timedelta(minutes=3)).isoformat(), "--speed", str(SPEED),
         "--until", (T0 + pd.Timedelta(minutes=15, seconds=10)).isoformat()],
        env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = S3Store(client, "plant-l4e")
    objects = {key: store.get(key) for key in store.list("pump-07/input/")}
    check_objects(objects, frame, "pump-07/input/", windows=3)
    # nothing else in the bucket: no temporary or duplicate objects
    assert list(store.list()) == sorted(objects)
