"""sd_notify over a real AF_UNIX datagram socket, as systemd's manager receives it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.sdnotify import Notifier, ProgressCheck, WatchdogGate, all_healthy, watchdog_interval_secs


class Manager:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket, like PID 1's."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def receive(self, timeout: float = 2.0) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return out


@pytest.fixture
def notifier_for() -> Iterator[Callable[[str], Notifier]]:
    """``notifier_for(address)``: a Notifier whose socket is closed after the test."""
    made: list[Notifier] = []

    def make(address: str) -> Notifier:
        made.append(Notifier(address))
        return made[-1]

    yield make
    for notifier in made:
        notifier.close()


@pytest.fixture
def manager() -> Iterator[Manager]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="l4e-notify-"))
    path = folder / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield Manager(sock, str(path))
    sock.close()
    path.unlink()
    folder.rmdir()


@pytest.fixture
def abstract_manager() -> Iterator[Manager]:
    name = f"l4e-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield Manager(sock, "@" + name)
    sock.close()


def test_messages_arrive_as_systemd_expects(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready("collecting 3 sensors")
    assert manager.receive() == ["READY=1", "STATUS=collecting 3 sensors"]
    assert notifier.status("uploading\nwindow 12")
    assert manager.receive() == ["STATUS=uploading window 12"]
    assert notifier.watchdog()
    assert manager.receive() == ["WATCHDOG=1"]
    assert notifier.reloading()
    reload_msg = manager.receive()
    assert reload_msg[0] == "RELOADING=1"
    assert reload_msg[1].startswith("MONOTONIC_USEC=") and int(reload_msg[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert manager.receive() == ["STOPPING=1"]
    notifier.close()


def test_abstract_namespace_socket(notifier_for, abstract_manager: Manager) -> None:
    notifier = notifier_for(abstract_manager.address)
    assert notifier.ready()
    assert abstract_manager.receive() == ["READY=1"]


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_unset_removes_variable_for_children(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    notifier = Notifier.from_env(unset=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert notifier.ready()
    assert manager.receive() == ["READY=1"]
    notifier.close()


def test_vanished_manager_does_not_raise(notifier_for, manager: Manager) -> None:
    notifier = notifier_for(manager.address)
    manager.sock.close()
    Path(manager.address).unlink()
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    Path(manager.address).touch()  # so the fixture's cleanup finds it


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # inherited from another service
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_secs(env) == expected


async def test_gate_pings_only_while_healthy(notifier_for, manager: Manager) -> None:
    state = {"ok": True}
    notifier = notifier_for(manager.address)
    gate = WatchdogGate(notifier, lambda: (state["ok"], "no reading for 120 s"), interval_secs=0.01)
    assert gate.enabled
    task = asyncio.create_task(gate.run())
    await _until(lambda: gate.pings >= 3)
    state["ok"] = False
    pings_when_data_stopped = gate.pings
    await asyncio.sleep(0.1)  # ~10 ticks: none may ping
    assert gate.pings == pings_when_data_stopped
    state["ok"] = True
    await _until(lambda: gate.pings > pings_when_data_stopped)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    messages = [m[0] for m in manager.pending()]
    first_status = messages.index("STATUS=unhealthy: no reading for 120 s")
    assert messages[first_status + 1] == "STATUS=healthy"  # no ping in between
    assert set(messages[:first_status]) == {"WATCHDOG=1"}
    assert messages[-1] == "WATCHDOG=1"


def test_gate_treats_a_raising_check_as_unhealthy(notifier_for, manager: Manager) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    gate = WatchdogGate(notifier_for(manager.address), broken, interval_secs=1.0)
    assert not gate.tick()
    assert manager.receive() == ["STATUS=unhealthy: health check raised RuntimeError: boom"]


async def test_gate_without_watchdog_returns_at_once(notifier_for, manager: Manager) -> None:
    gate = WatchdogGate(notifier_for(manager.address), lambda: True, environ={})
    assert not gate.enabled
    await asyncio.wait_for(gate.run(), timeout=1.0)


def test_progress_check_fails_when_the_total_stops_growing() -> None:
    now = [1000.0]
    readings = [0]
    check = ProgressCheck("readings", lambda: readings[0], max_stall_secs=60, monotonic=lambda: now[0])
    assert check() == (True, "")
    now[0] += 59
    assert check() == (True, "")  # a fresh start gets max_stall_secs to produce data
    readings[0] += 5
    now[0] += 30
    assert check() == (True, "")
    now[0] += 61
    assert check() == (False, "readings: no progress for 61 s")
    readings[0] += 1
    assert check() == (True, "")


def test_all_healthy_joins_reasons() -> None:
    check = all_healthy(lambda: True, lambda: (False, "plc1 down"), lambda: False)
    assert check() == (False, "plc1 down; unhealthy")
    assert all_healthy(lambda: (True, ""), lambda: True)() == (True, "")


def test_gate_stops_pinging_when_data_stops(notifier_for, manager: Manager) -> None:
    """The watchdog path end to end: readings stop → the progress check fails → no more pings."""
    now = [0.0]
    readings = [0]
    health = all_healthy(ProgressCheck("readings", lambda: readings[0], 10, monotonic=lambda: now[0]))
    gate = WatchdogGate(notifier_for(manager.address), health, interval_secs=5)
    for _ in range(4):
        readings[0] += 3
        now[0] += 5
        assert gate.tick()
    now[0] += 11
    assert not gate.tick()
    messages = [m[0] for m in manager.pending()]
    assert messages == ["WATCHDOG=1"] * 4 + ["STATUS=unhealthy: readings: no progress for 11 s"]


async def _until(condition, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
