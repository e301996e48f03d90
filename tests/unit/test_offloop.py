"""The event loop never waits on the disk: during a run (windows written, uploaded, the spool flushed and
acknowledged, a drain at the end) no fsync, write, rename or unlink of the agent runs on the loop's thread.

The calls are observed, not replaced: os.fsync, os.write, os.replace and os.unlink are wrapped to note the
thread each call came from, then do the real work on real files."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter

import pandas as pd

from agent.config import load
from agent.core.clock import ScaledClock
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.helpers import T0, asset_file, write_history


def test_no_blocking_file_call_runs_on_the_event_loop(tmp_path, monkeypatch):
    write_history(tmp_path / "history.csv", minutes=20, step_secs=5)
    store_dir = tmp_path / "store"
    path = asset_file(tmp_path, f"file://{store_dir}/", grace=5)
    clock = ScaledClock(T0.timestamp(), 300.0)
    runner = AssetRunner(load(path), path, tmp_path / "state", clock)  # built before the loop, like the CLI
    on_loop: Counter = Counter()
    off_loop: Counter = Counter()
    loop_thread: list[int] = []

    def observed(name, real):
        def call(*args, **kwargs):
            (on_loop if threading.get_ident() in loop_thread else off_loop)[name] += 1
            return real(*args, **kwargs)
        return call

    for name in ("fsync", "write", "replace", "unlink"):
        monkeypatch.setattr(os, name, observed(name, getattr(os, name)))

    async def main() -> int:
        loop_thread.append(threading.get_ident())
        return await Agent([runner], clock).run(until=T0.timestamp() + 16 * 60)

    assert asyncio.run(main()) == 0
    keys = list(FileStore(store_dir).list())
    assert len(keys) >= 2  # windows ending 00:05, 00:10 (and 00:15 unless the replay lagged on a loaded machine)
    assert keys == [f"pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv" for k in range(len(keys))]
    assert off_loop["fsync"] >= 6 and off_loop["replace"] >= 3 and off_loop["unlink"] >= 3  # the work was done
    assert on_loop == Counter(), on_loop
