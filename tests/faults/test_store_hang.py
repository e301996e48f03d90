"""moto's S3 server frozen with SIGSTOP for 12 windows: it accepts connections and never answers.

What must hold: every put is bounded (the agent's own S3 client and the uploader's total timeout), the
outage is exactly two log lines (a WARNING when it starts, an INFO with the windows delayed when it ends),
every window is delivered once and in order, and no scheduler warning reaches the log although the upload
job is still running at many of its wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import boto3
import pandas as pd
import pytest

from agent.config import load
from agent.core.clock import ScaledClock
from agent.pipeline.store import S3Store
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.conftest import free_port
from tests.helpers import T0, asset_file, write_history

SPEED = 120.0  # a PT5M window takes 2.5 s of wall time
OUTAGE_WINDOWS = 12


class MotoProcess:
    """moto_server in its own process, so that it can be frozen (SIGSTOP) and thawed (SIGCONT)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    server = MotoProcess()
    try:
        yield server
    finally:
        server.close()


class RecordingStore:
    """The agent's own S3Store with a log of confirmed puts (an observer: every call reaches moto)."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.confirmed: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        try:
            self.inner.put(key, data)
        except Exception as exc:
            with self._lock:
                self.errors.append(str(exc))
            raise
        with self._lock:
            self.confirmed.append(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_frozen_s3_is_one_warning_one_info_and_every_window_once_in_order(tmp_path, moto_process,
                                                                                   monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="l4e.upload")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_process.url)  # the agent builds its client as in production
    boto3.client("s3", endpoint_url=moto_process.url).create_bucket(Bucket="plant-l4e")
    write_history(tmp_path / "history.csv", minutes=5 + 5 * OUTAGE_WINDOWS + 20)
    path = asset_file(tmp_path, "s3://plant-l4e/pump-07/input/")
    path.write_text(path.read_text().replace("[upload]\n", "[upload]\ntimeout_secs = 1.5\nconnect_timeout_secs = 1\n"))
    config = load(path)
    clock = ScaledClock(T0.timestamp() - 60, SPEED)
    runner = AssetRunner(config, path, tmp_path / "state", clock)
    store = RecordingStore(runner.store)
    runner.uploader.store = store
    agent = Agent([runner], clock)
    until = (T0 + pd.Timedelta(minutes=5 + 5 * OUTAGE_WINDOWS + 15, seconds=10)).timestamp()
    agent_task = asyncio.create_task(agent.run(until=until))

    async def wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            assert not agent_task.done(), agent_task
            await asyncio.sleep(0.05)

    await wait(lambda: len(store.confirmed) >= 1, 30)
    moto_process.freeze()
    frozen_at = clock.now()
    await wait(lambda: clock.now() >= frozen_at + OUTAGE_WINDOWS * 300, 60)
    # nothing answered, not even with an error: only the client's read timeout ended the puts
    assert store.errors and all("timeout" in e.lower() for e in store.errors), store.errors
    assert runner.uploader.failing_for() > 0
    assert runner.uploader.backlog() >= OUTAGE_WINDOWS - 1  # piled up in the outbox, not dropped
    moto_process.thaw()
    assert await asyncio.wait_for(agent_task, 60) == 0

    n = int((until - T0.timestamp()) // 300)  # windows due by `until`: every one must be there
    expected = [f"pump-07/input/pump_{(T0 + pd.Timedelta(minutes=5 * k)).strftime('%Y%m%d%H%M%S')}.csv"
                for k in range(n)]
    assert store.confirmed == expected  # exactly once each, oldest first
    client = boto3.client("s3", endpoint_url=moto_process.url)
    assert sorted(S3Store(client, "plant-l4e").list()) == expected
    assert runner.outbox.entries() == []

    # the outage in the log: exactly two lines, a WARNING at the start and an INFO with the count at the end
    upload_lines = [r for r in caplog.records if r.name == "l4e.upload" and r.levelno >= logging.INFO]
    assert [r.levelname for r in upload_lines] == ["WARNING", "INFO"], [r.getMessage() for r in upload_lines]
    assert "no answer within 1.5s" in upload_lines[0].getMessage() or "timeout" in upload_lines[0].getMessage()
    delayed = int(upload_lines[1].getMessage().split(" window(s) delayed")[0].rsplit(" ", 1)[1])
    assert delayed >= OUTAGE_WINDOWS - 1
    assert runner.uploader.stats.windows_late >= 1  # counted, though not logged one by one
    warnings = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"l4e.upload: {upload_lines[0].getMessage()}"], warnings  # no scheduler warning at all
    assert not [r for r in caplog.records if r.exc_info]
    # the upload job was still waiting for the frozen store at many wake-ups: skipped quietly
    assert agent.scheduler.overlaps["pump-07.upload"] > 0
