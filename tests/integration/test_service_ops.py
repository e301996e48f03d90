"""The agent as systemd runs it: sd_notify on a real datagram socket, the watchdog fed only while data flows,
/metrics and /healthz over HTTP during a run, SIGHUP with an invalid file, SIGTERM drain."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from tests.conftest import free_port
from tests.helpers import T0, assert_soon, asset_file, start_agent, write_history


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET. Drain it while waiting: a datagram socket queues only a few
    messages (net.unix.max_dgram_qlen, 10 by default) and the agent's next ones are dropped (EAGAIN)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def seen(self, text: str) -> bool:
        self.drain()
        return any(text in m for _, m in self.messages)


def get(url: str) -> tuple[int, str]:
    """(status, body); raises URLError when nothing listens (test_steady_plant stops polling on it)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(body: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + "{"))


def test_notify_watchdog_metrics_health_reload_and_drain(tmp_path):
    write_history(tmp_path / "history.csv", minutes=12)
    store = tmp_path / "store"
    port = free_port()
    extra = f"\n[metrics]\nenabled = true\nport = {port}\n[health]\nsource_silent_secs = 60\n"
    path = asset_file(tmp_path, f"file://{store}/", grace=5, extra=extra)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="300000")
    agent = start_agent(path, tmp_path / "state", clock_start=(T0 - pd.Timedelta(minutes=1)).isoformat(), speed=60,
                        env=env)
    try:
        assert_soon(lambda: notify.seen("READY=1"), 30, "READY=1")
        base = f"http://127.0.0.1:{port}"
        assert_soon(lambda: notify.drain() or metric(get(base + "/metrics")[1], "l4e_windows_written_total") >= 2,
                    30, "two windows")
        status, body = get(base + "/metrics")
        assert status == 200
        assert metric(body, "l4e_readings_total") >= 2 * 5 * 6 * 3  # 2 windows × 5 min × 6/min × 3 sensors
        assert 'l4e_source_connected{source="history"} 1.0' in body.splitlines()
        assert get(base + "/healthz")[0] == 200
        notify.drain()
        pings_while_flowing = sum("WATCHDOG=1" in m for _, m in notify.messages)
        assert pings_while_flowing >= 2

        # the history ends at T0 + 12 min: after 60 s of clock time without readings the source is silent
        assert_soon(lambda: notify.drain() or get(base + "/healthz")[0] == 503, 40, "healthz 503")
        code, reason = get(base + "/healthz")
        assert code == 503
        assert "silent" in reason and "history" in reason
        notify.drain()
        time.sleep(0.5)  # let an in-flight ping arrive
        notify.drain()
        cut = time.monotonic()
        time.sleep(1.5)
        notify.drain()
        assert not any("WATCHDOG=1" in m for t, m in notify.messages if t > cut)  # pings stopped with the data
        assert any("unhealthy" in m for _, m in notify.messages)

        # the metrics tell what happened: every written window is an object in the store
        body = get(base + "/metrics")[1]
        assert metric(body, "l4e_windows_written_total") == len(list(store.glob("pump_*.csv")))

        # SIGHUP with a broken file: refused, the agent keeps running on the old configuration
        good = path.read_text()
        path.write_text(good.replace('upload_frequency = "PT5M"', 'upload_frequency = "PT7M"'))
        agent.send_signal(signal.SIGHUP)
        assert_soon(lambda: notify.seen("RELOADING=1"), 10, "RELOADING=1")
        time.sleep(0.5)
        assert agent.poll() is None
        assert get(base + "/metrics")[0] == 200
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
        stopping = notify.seen("STOPPING=1")
        notify.sock.close()
    assert agent.returncode == 0, err[-2000:]
    assert "reload refused" in err and "lookout.upload_frequency" in err
    assert stopping
    # drained: the due windows are in the store, nothing left in the outbox
    assert len(list(store.glob("pump_*.csv"))) == 3  # windows ending 00:05, 00:10, 00:15: all due by SIGTERM
    assert not [p for p in (tmp_path / "state" / "outbox").rglob("*.csv")]
    assert re.search(r"agent stopped", err)
