"""The store is down for several windows, then back: every window delivered exactly once, oldest first."""

from __future__ import annotations

import asyncio
import threading
import time

import pandas as pd

from agent.config import load
from agent.core.clock import ScaledClock
from agent.pipeline.store import S3Store
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.helpers import T0, asset_file, write_history

SPEED = 120.0


class RecordingStore:
    """A real S3Store with a log of confirmed puts (an observer, not a fake: every call reaches moto)."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.confirmed: list[str] = []
        self.failed = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        try:
            self.inner.put(key, data)
        except Exception:
            with self._lock:
                self.failed += 1
            raise
        with self._lock:
            self.confirmed.append(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_outage_then_recovery_delivers_each_window_once_in_order(tmp_path, moto_s3):
    client = moto_s3.client()
    client.create_bucket(Bucket="plant-l4e")
    write_history(tmp_path / "history.csv", minutes=40)
    path = asset_file(tmp_path, "s3://plant-l4e/pump-07/input/")
    config = load(path)
    clock = ScaledClock(T0.timestamp() - 60, SPEED)
    store = RecordingStore(S3Store(client, "plant-l4e"))
    runner = AssetRunner(config, path, tmp_path / "state", clock, store=store, prefix="pump-07/input/")
    until = (T0 + pd.Timedelta(minutes=40, seconds=10)).timestamp()
    agent_task = asyncio.create_task(Agent([runner], clock).run(until=until))

    async def wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    await wait(lambda: len(store.confirmed) >= 1, 30)
    moto_s3.stop()
    outage_from = clock.now()
    # keep it down for three windows' worth of clock time
    await wait(lambda: clock.now() >= outage_from + 3 * 300, 30)
    assert store.failed >= 1
    backlog_during = runner.uploader.backlog()
    assert backlog_during >= 2  # windows piled up in the outbox, not dropped
    moto_s3.start()
    assert await asyncio.wait_for(agent_task, 60) == 0

    expected = [f"pump-07/input/pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv"
                for k in range(8)]  # windows ending 00:05 … 00:40, all due by `until`
    assert store.confirmed == expected  # exactly once each, oldest first
    assert sorted(S3Store(moto_s3.client(), "plant-l4e").list()) == expected
    assert runner.uploader.stats.windows_late >= 1  # the outage made some windows late, and that is counted
    assert runner.outbox.entries() == []
