"""Supervision boundaries (a broad ``except Exception`` that keeps the agent running) log a failure's traceback
once, then count it: a bug hit again and again must not flood the journal with the same traceback.

Real parts: the asset runner with its real spool and listeners, the metrics server over real HTTP. The failing
parts are the bugs themselves (a listener and a connector that raise), injected where a real one would raise.
"""

from __future__ import annotations

import asyncio
import http.client
import logging

import pytest

import agent.runtime.asset as asset_module
from agent.config import load
from agent.core.clock import ScaledClock
from agent.core.model import Event
from agent.runtime.asset import AssetRunner
from agent.runtime.httpd import MetricsServer
from tests.helpers import asset_file, write_history


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and r.exc_info]


def runner_for(tmp_path) -> AssetRunner:
    write_history(tmp_path / "history.csv", minutes=1)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/")
    return AssetRunner(load(path), path, tmp_path / "state", ScaledClock(0, 1))


def test_a_failing_event_listener_logs_its_traceback_once_then_counts(tmp_path, caplog) -> None:
    runner = runner_for(tmp_path)
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise KeyError(event.kind)

    runner.event_listeners[:0] = [broken]  # first: the listeners after it must still get every event
    runner.event_listeners.append(seen.append)
    caplog.set_level(logging.DEBUG)
    events = [Event("window_missing", f"pump/{k}", "no data", float(k)) for k in range(3)]
    for event in events:
        runner.emit([event])
    assert seen == events
    assert runner.listener_failures[broken.__qualname__] == 3
    assert len(tracebacks(caplog, "event listener")) == 1
    assert [r.levelno for r in caplog.records if "event listener" in r.getMessage()] == [
        logging.ERROR, logging.DEBUG, logging.DEBUG]
    runner.spool.close()


class CrashingSource:
    """A connector with a bug: every ``readings()`` raises the same error at once."""

    name = "history"

    def __init__(self) -> None:
        self.calls = 0

    async def readings(self):
        self.calls += 1
        raise ZeroDivisionError("division by zero in the decoder")
        yield  # an async generator, like every connector's readings()


async def test_a_source_crashing_the_same_way_logs_one_traceback(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(asset_module, "CONNECTOR_RESTART_BACKOFF_INITIAL_SECS", 0.01)
    monkeypatch.setattr(asset_module, "CONNECTOR_RESTART_BACKOFF_MAX_SECS", 0.02)
    runner = runner_for(tmp_path)
    source = CrashingSource()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(runner._pump(source))
    try:
        async with asyncio.timeout(10):
            while source.calls < 4:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runner.spool.close()
    crashes = [r for r in caplog.records if "source history crashed" in r.getMessage()]
    assert len(crashes) >= 3 and all("ZeroDivisionError" in r.getMessage() for r in crashes)
    assert len(tracebacks(caplog, "source history crashed")) == 1
    assert runner.stats.task_restarts["history"] == len(crashes)


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def test_a_status_page_bug_logs_one_traceback_per_path(caplog) -> None:
    from prometheus_client import CollectorRegistry

    def status() -> dict:
        raise ValueError("a status field the page cannot render")

    caplog.set_level(logging.DEBUG)
    async with MetricsServer(CollectorRegistry(), lambda: (True, ""), port=0, status=status) as server:
        codes = [await asyncio.to_thread(get, server.port, path) for path in ["/api/status"] * 3 + ["/"] * 2]
        assert await asyncio.to_thread(get, server.port, "/healthz") == 200  # the server itself carries on
    assert codes == [500] * 5
    assert dict(server.failures) == {"/api/status": 3, "/": 2}
    logged = tracebacks(caplog, "metrics request")
    assert sorted(r.getMessage().split()[3] for r in logged) == ["/", "/api/status"]
