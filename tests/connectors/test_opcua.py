"""connectors.opcua against a real asyncua Server on 127.0.0.1 (see opcua_peer.py for its address space)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from agent.core.clock import ScaledClock, SystemClock
from agent.core.errors import ConnectionLost, ConnectorError
from agent.core.model import Reading
from connectors.opcua.certs import make_client_certificate
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.write_back import write_opcua
from tests.connectors.opcua_peer import CuttableLink, OpcUaPeer, Secure

pytestmark = pytest.mark.timeout(60)

FAST = {
    "publishing_interval_ms": 50,
    "sampling_interval_ms": 0,
    "poll_interval_ms": 50,
    "backoff_initial_secs": 0.05,
    "backoff_max_secs": 0.4,
    "timeout_secs": 2,
}
NODES = [
    {"sensor": "flow", "node_id": "ns=2;s=Pump07.Flow"},
    {"sensor": "run", "browse_path": "0:Objects/2:Pump07/2:Run"},
]


def config(peer: OpcUaPeer, **overrides) -> OpcUaSourceConfig:
    fields = {"name": "plc1", "kind": "opcua", "endpoint": peer.endpoint, "nodes": NODES, **FAST, **overrides}
    return OpcUaSourceConfig(**fields)


@pytest.fixture
async def peer() -> AsyncIterator[OpcUaPeer]:
    server = await OpcUaPeer().start()
    yield server
    await server.stop()


class Collector:
    """Runs ``connector.readings()`` in a task and hands its batches to the test, in order."""

    def __init__(self, connector: OpcUaConnector) -> None:
        self.connector = connector
        self.batches: asyncio.Queue[list[Reading]] = asyncio.Queue()

    async def _run(self) -> None:
        async for batch in self.connector.readings():
            self.batches.put_nowait(batch)

    async def next(self, timeout: float = 5.0) -> list[Reading]:
        return await asyncio.wait_for(self.batches.get(), timeout)

    async def until(self, predicate: Callable[[Reading], bool], timeout: float = 5.0) -> Reading:
        """The first reading (in later batches) for which predicate holds."""
        async with asyncio.timeout(timeout):
            while True:
                for reading in await self.batches.get():
                    if predicate(reading):
                        return reading


@asynccontextmanager
async def collecting(connector: OpcUaConnector) -> AsyncIterator[Collector]:
    collector = Collector(connector)
    task = asyncio.create_task(collector._run())
    try:
        yield collector
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def by_sensor(batch: list[Reading]) -> dict[str, Reading]:
    return {r.sensor: r for r in batch}


# ----------------------------------------------------------------------------------------- values


async def test_subscription_delivers_values_with_source_timestamps(peer: OpcUaPeer) -> None:
    connector = OpcUaConnector(config(peer), SystemClock(), Path("."))
    async with collecting(connector) as got:
        first = by_sensor(await got.next())
        assert first["flow"].value == 1.5 and first["run"].value == 1.0  # Boolean → 1.0; browse path resolved
        stamped = datetime.now(UTC) - timedelta(seconds=7)
        await peer.set("flow", 2.25, source_ts=stamped)
        reading = await got.until(lambda r: r.sensor == "flow")
    assert reading.value == 2.25
    assert reading.ts == pytest.approx(stamped.timestamp(), abs=1e-6)
    assert connector.stats.readings["flow"] == 2 and connector.stats.connected is False
    assert connector.retimed["flow"] == 0


async def test_server_and_received_timestamps(peer: OpcUaPeer) -> None:
    old = datetime.now(UTC) - timedelta(seconds=30)
    server_conn = OpcUaConnector(config(peer, timestamp="server"), SystemClock(), Path("."))
    received_conn = OpcUaConnector(config(peer, timestamp="received"), SystemClock(), Path("."))
    async with collecting(server_conn) as by_server, collecting(received_conn) as by_received:
        await by_server.next()
        await by_received.next()
        before = time.time()
        await peer.set("flow", 3.0, source_ts=old)
        server_reading = await by_server.until(lambda r: r.value == 3.0)
        received_reading = await by_received.until(lambda r: r.value == 3.0)
    after = time.time()
    # The peer stamps ServerTimestamp when the value is written; the source timestamp is 30 s older.
    assert before - 0.01 <= server_reading.ts <= after
    assert before <= received_reading.ts <= after


async def test_clock_skew_guard_and_scaled_clock_use_received_time(peer: OpcUaPeer) -> None:
    skewed = OpcUaConnector(config(peer, max_clock_skew_secs=60), SystemClock(), Path("."))
    clock = ScaledClock(start=1_000_000.0, speed=10.0)
    scaled = OpcUaConnector(config(peer), clock, Path("."))
    async with collecting(skewed) as got, collecting(scaled) as got_scaled:
        await got.next()
        await got_scaled.next()
        before = time.time()
        await peer.set("flow", 4.0, source_ts=datetime.now(UTC) + timedelta(hours=1))  # a PLC clock ahead
        reading = await got.until(lambda r: r.value == 4.0)
        scaled_reading = await got_scaled.until(lambda r: r.value == 4.0)
    assert before <= reading.ts <= time.time()
    assert skewed.retimed["flow"] == 1
    # On a scaled timeline the server's wall-clock stamps mean nothing: the clock's own time is used.
    assert 1_000_000.0 <= scaled_reading.ts <= clock.now()


async def test_bad_and_uncertain_values_are_counted_not_delivered(peer: OpcUaPeer) -> None:
    connector = OpcUaConnector(config(peer), SystemClock(), Path("."))
    async with collecting(connector) as got:
        await got.next()
        await peer.set("flow", 9.0, status=ua.StatusCodes.BadSensorFailure)
        await peer.set("run", False)
        batch = await got.until(lambda r: r.sensor == "run")
        await peer.set("flow", 8.0, status=ua.StatusCodes.UncertainLastUsableValue)
        await peer.set("run", True)
        await got.until(lambda r: r.sensor == "run" and r.value == 1.0)
        await peer.set("flow", 5.0, status=0x0000_0480)  # Good with the Overflow info bit: still Good
        good = await got.until(lambda r: r.sensor == "flow")
    assert batch.value == 0.0
    assert connector.stats.bad_quality["flow"] == 2
    assert good.value == 5.0  # and nothing from flow in between: `until` would have returned it
    assert connector.stats.readings["flow"] == 2


async def test_absolute_deadband_suppresses_small_changes(peer: OpcUaPeer) -> None:
    cfg = config(peer, deadband={"type": "absolute", "value": 1.0})
    connector = OpcUaConnector(cfg, SystemClock(), Path("."))
    async with collecting(connector) as got:
        await got.next()
        await peer.set("flow", 2.0)  # |2.0 - 1.5| < 1.0: the server keeps it to itself
        await peer.set("run", False)
        await got.until(lambda r: r.sensor == "run")
        await peer.set("flow", 3.5)
        reading = await got.until(lambda r: r.sensor == "flow")
    assert reading.value == 3.5
    assert connector.stats.readings["flow"] == 2


async def test_missing_password_env_is_a_clear_probe_error(peer: OpcUaPeer) -> None:
    cfg = config(
        peer,
        username="operator",
        password_env="L4E_TEST_OPCUA_PASSWORD",
        security={"allow_credentials_over_none": True},
    )
    report = await OpcUaConnector(cfg, SystemClock(), Path(".")).probe()
    assert not report.ok and "L4E_TEST_OPCUA_PASSWORD is not set" in report.error


async def test_non_numeric_value_is_a_read_error_logged_once(peer: OpcUaPeer, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [*NODES, {"sensor": "label", "node_id": "ns=2;s=Pump07.Label"}]
    connector = OpcUaConnector(config(peer, nodes=nodes), SystemClock(), Path("."))
    with caplog.at_level(logging.WARNING, logger="connectors.opcua"):
        async with collecting(connector) as got:
            assert set(by_sensor(await got.next())) == {"flow", "run"}
            await peer.set("label", "running")
            await peer.set("run", False)
            await got.until(lambda r: r.sensor == "run")
    assert connector.stats.read_errors["label"] == 2
    assert len([r for r in caplog.records if r.name == "connectors.opcua" and "label" in r.getMessage()]) == 1


async def test_poll_reads_in_batches_and_never_resends_an_unrefreshed_value(peer: OpcUaPeer) -> None:
    nodes = [*NODES, {"sensor": "count", "node_id": "ns=2;s=Pump07.Count"}]
    connector = OpcUaConnector(config(peer, mode="poll", nodes=nodes), SystemClock(), Path("."))
    async with collecting(connector) as got:
        first = by_sensor(await got.next())
        assert {k: r.value for k, r in first.items()} == {"flow": 1.5, "run": 1.0, "count": 7.0}
        stamped = datetime.now(UTC) - timedelta(seconds=3)
        await peer.set("count", 8, source_ts=stamped)
        # Several 50 ms polls ran in between; only the refreshed point comes back.
        second = await got.next()
        await peer.set("flow", 1.5)  # same value, new source timestamp: a fresh sample
        third = await got.next()
    assert [(r.sensor, r.value) for r in second] == [("count", 8.0)]
    assert second[0].ts == pytest.approx(stamped.timestamp(), abs=1e-6)
    assert [(r.sensor, r.value) for r in third] == [("flow", 1.5)]


async def test_probe_reports_values_types_status_and_timestamps(peer: OpcUaPeer) -> None:
    nodes = [
        *NODES,
        {"sensor": "setpt", "node_id": "ns=2;s=Pump07.Setpt"},
        {"sensor": "ghost", "browse_path": "0:Objects/2:Pump07/2:Nope"},
    ]
    await peer.set("flow", 0.0, status=ua.StatusCodes.BadSensorFailure)
    report = await OpcUaConnector(config(peer, nodes=nodes), SystemClock(), Path(".")).probe()
    lines = {line.sensor: line for line in report.lines}
    assert not report.ok
    assert (lines["run"].value, lines["run"].type, lines["run"].status) == (True, "Boolean", "Good")
    assert lines["run"].extra == {"node": "ns=2;s=Pump07.Run"}
    assert (lines["setpt"].value, lines["setpt"].type) == (10, "UInt16")
    assert lines["setpt"].source_ts and lines["setpt"].server_ts and not lines["setpt"].error
    assert lines["flow"].status == "BadSensorFailure" and lines["flow"].error
    assert "BadNoMatch" in lines["ghost"].error
    text = report.format()
    assert "FAILED" in text and "type=UInt16" in text and "source_ts=" in text


async def test_probe_and_write_to_an_unreachable_server_fail_cleanly() -> None:
    gone = OpcUaPeer()  # never started: nothing listens on its port
    report = await OpcUaConnector(config(gone), SystemClock(), Path(".")).probe()
    assert not report.ok and "refused" in report.error
    with pytest.raises(ConnectionLost, match="refused"):  # retriable: the alarm hook retries it
        await write_opcua(config(gone), "ns=2;s=Pump07.Setpt", 1, Path("."))


async def test_write_opcua_uses_the_node_data_type(peer: OpcUaPeer) -> None:
    cfg = config(peer)
    await write_opcua(cfg, "ns=2;s=Pump07.Setpt", 42.0, Path("."))
    await write_opcua(cfg, "ns=2;s=Pump07.Run", 0, Path("."))
    await write_opcua(cfg, "ns=2;s=Pump07.Flow", 7, Path("."))
    assert peer.value("setpt").Value == ua.Variant(42, ua.VariantType.UInt16)
    assert peer.value("run").Value == ua.Variant(False, ua.VariantType.Boolean)
    assert peer.value("flow").Value == ua.Variant(7.0, ua.VariantType.Double)
    with pytest.raises(ConnectorError, match="not a whole number"):
        await write_opcua(cfg, "ns=2;s=Pump07.Setpt", 1.5, Path("."))
    with pytest.raises(ConnectorError, match="out of range"):
        await write_opcua(cfg, "ns=2;s=Pump07.Setpt", 70000, Path("."))
    with pytest.raises(ConnectorError, match="BadNodeIdUnknown"):
        await write_opcua(cfg, "ns=2;s=Pump07.Nope", 1, Path("."))
    assert peer.value("setpt").Value.Value == 42


# ----------------------------------------------------------------------------------------- recovery


def _client_tasks() -> int:
    """Tasks of this process that are not the in-process server's own (it leaks per-session tasks)."""

    def in_server(task: asyncio.Task) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and "asyncua/server" in code.co_filename

    return sum(1 for t in asyncio.all_tasks() if not in_server(t))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(("mode", "restarts"), [("subscribe", 20), ("poll", 5)])
async def test_server_restarts_resume_without_leaks(
    peer: OpcUaPeer, caplog: pytest.LogCaptureFixture, mode: str, restarts: int
) -> None:
    connector = OpcUaConnector(config(peer, mode=mode), SystemClock(), Path("."))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="connectors.opcua"):
        async with collecting(connector) as got:
            await got.next()
            tasks, fds = _client_tasks(), _open_fds()
            for i in range(restarts):
                await peer.restart()
                t0 = time.monotonic()
                await peer.set("flow", 100.0 + i)
                await got.until(lambda r, v=100.0 + i: r.value == v, timeout=10)
                # Detection is immediate (socket closed); then at most one backoff step per refused attempt.
                assert time.monotonic() - t0 < FAST["backoff_max_secs"] * 4 + 1
            assert _client_tasks() <= tasks
            assert _open_fds() <= fds
    assert connector.stats.reconnects == restarts
    # `run` never changed, yet each new session vouches for it again (rule 2a): one reading per session, and no
    # more (polls of the same sample within a session are not repeated).
    assert connector.stats.readings["run"] == restarts + 1
    ours = [r for r in caplog.records if r.name == "connectors.opcua"]
    warnings = [r for r in ours if r.levelno == logging.WARNING]
    connections = [r for r in ours if r.levelno == logging.INFO and "connected" in r.getMessage()]
    assert len(connections) == restarts + 1  # the first connection, then one line per recovery
    assert len(warnings) <= 2 * restarts  # "lost", then perhaps one different "refused": never per attempt
    assert time.monotonic() - started < 50


async def test_cancellation_stops_the_connector_at_any_point_of_a_reconnect(peer: OpcUaPeer) -> None:
    """Cancellation is the only stop signal: it must never be lost, whatever the connector is doing."""
    for step in range(30):
        connector = OpcUaConnector(config(peer), SystemClock(), Path("."))
        collector = Collector(connector)
        task = asyncio.create_task(collector._run())
        await collector.next()
        await peer.restart()
        await asyncio.sleep(step * 0.008)  # lands the cancel on detection, teardown, backoff or reconnect
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, f"cancellation lost at step {step}"
        assert task.cancelled()


async def test_a_cancellation_a_library_swallows_is_given_back(peer: OpcUaPeer, monkeypatch) -> None:
    """Python 3.11's wait_for (used all through asyncua) loses a cancel that lands as the awaited call
    completes: the call returns and the connector would stream on forever. That race cannot be produced on
    demand, so the session opening is wrapped to lose the cancel the same way; the connector must still stop
    before it reads a value."""
    import connectors.opcua.connector as module

    real_open = module._open_client
    swallowed = asyncio.Event()

    async def open_losing_the_cancel(*args, **kwargs):
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:  # what the race does: the awaited call "completes", the cancel is gone
            swallowed.set()
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(module, "_open_client", open_losing_the_cancel)
    connector = OpcUaConnector(config(peer), SystemClock(), Path("."))
    collector = Collector(connector)
    task = asyncio.create_task(collector._run())
    await asyncio.sleep(0.1)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert swallowed.is_set() and done and task.cancelled()
    assert collector.batches.empty() and connector.connect_attempts == 1


async def test_teardown_does_not_swallow_a_cancellation(peer: OpcUaPeer) -> None:
    """asyncua's disconnect() swallows CancelledError while it awaits its own tasks (9 of 30 here before
    the fix); the connector's teardown must give the cancellation back, at every point of the teardown."""
    from connectors.opcua.session import _close, _open_client

    cfg = config(peer)
    for spins in range(30):
        client = await _open_client(cfg, Path("."))
        stopped = asyncio.Event()

        async def teardown_then_wait(client=client, stopped=stopped) -> None:
            await _close(client, 2)
            await stopped.wait()  # stands for the rest of the reconnect loop

        task = asyncio.create_task(teardown_then_wait())
        for _ in range(spins):
            await asyncio.sleep(0)  # one loop iteration each: the cancel lands at a different await
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        stopped.set()
        assert done and task.cancelled(), f"cancellation swallowed after {spins} loop iterations"


async def test_stale_subscription_is_detected_and_recovered(peer: OpcUaPeer) -> None:
    """A server that keeps the socket open but stops publishing (a hung runtime) is treated as lost."""
    connector = OpcUaConnector(config(peer, stale_after_intervals=4), SystemClock(), Path("."))
    async with collecting(connector) as got:
        await got.next()
        server = peer.server.iserver.subscription_service
        for sub in list(server.subscriptions.values()):
            await sub.stop()  # publishing stops; the session and its socket stay up
        await peer.set("flow", 6.5)
        reading = await got.until(lambda r: r.value == 6.5, timeout=10)
    assert reading.value == 6.5 and connector.stats.reconnects == 1


async def test_a_silently_cut_link_is_detected_and_recovered(peer: OpcUaPeer) -> None:
    """No FIN, no RST, no byte: keep-alives stop, the session is declared lost and rebuilt once mended."""
    link = await CuttableLink(peer.port).start()
    cfg = config(peer, endpoint=link.endpoint, timeout_secs=1, stale_after_intervals=10)
    connector = OpcUaConnector(cfg, SystemClock(), Path("."))
    try:
        async with collecting(connector) as got:
            await got.next()
            link.cut()
            async with asyncio.timeout(10):
                while connector.stats.connected:  # observing a state over time: no event to await
                    await asyncio.sleep(0.05)
            await peer.set("flow", 11.0)
            link.mend()
            reading = await got.until(lambda r: r.value == 11.0, timeout=15)
    finally:
        await link.stop()
    assert reading.value == 11.0 and connector.stats.reconnects == 1


async def test_a_missing_node_does_not_stop_the_others(peer: OpcUaPeer, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [*NODES, {"sensor": "ghost", "node_id": "ns=2;s=Pump07.Nope"}]
    connector = OpcUaConnector(config(peer, nodes=nodes), SystemClock(), Path("."))
    with caplog.at_level(logging.WARNING, logger="connectors.opcua"):
        async with collecting(connector) as got:
            assert set(by_sensor(await got.next())) == {"flow", "run"}
    assert connector.stats.read_errors["ghost"] == 1
    assert ["BadNodeIdUnknown" in r.getMessage() for r in caplog.records if r.name == "connectors.opcua"] == [True]


# ----------------------------------------------------------------------------------------- security


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Server and client key pairs; the client's made by make_client_certificate (as `opcua-cert` does)."""
    folder = tmp_path_factory.mktemp("pki")

    def generate() -> None:  # in a thread: asyncio.run must not touch the test's event loop
        asyncio.run(
            setup_self_signed_certificate(
                folder / "server-key.pem",
                folder / "server-cert.der",
                "urn:l4e-agent:test-server",
                socket.gethostname(),
                [ExtendedKeyUsageOID.SERVER_AUTH],
                {},
            )
        )
        make_client_certificate(folder / "client" / "cert.der", folder / "client" / "key.pem")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(generate).result()
    (folder / "password.txt").write_text("s3cret\n")
    (folder / "wrong.txt").write_text("guess\n")
    return {"folder": folder}


@pytest.fixture
async def secure_peer(pki: dict[str, Path]) -> AsyncIterator[OpcUaPeer]:
    folder = pki["folder"]
    server = await OpcUaPeer(
        secure=Secure(folder / "server-cert.der", folder / "server-key.pem", "operator", "s3cret")
    ).start()
    yield server
    await server.stop()


def secure_config(peer: OpcUaPeer, password_file: str, **overrides) -> OpcUaSourceConfig:
    # Relative paths: resolved against the asset file's folder (base_dir).
    return config(
        peer,
        security={
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": "client/cert.der",
            "private_key": "client/key.pem",
        },
        username="operator",
        password_file=password_file,
        **overrides,
    )


def test_make_client_certificate_is_private_and_idempotent(pki: dict[str, Path]) -> None:
    from cryptography import x509

    key, cert = pki["folder"] / "client" / "key.pem", pki["folder"] / "client" / "cert.der"
    assert key.stat().st_mode & 0o777 == 0o600
    before = cert.read_bytes()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(make_client_certificate, cert, key).result()
    assert cert.read_bytes() == before  # still valid for this host: kept
    san = x509.load_der_x509_certificate(before).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier)[0].startswith("urn:l4e-agent:")


async def test_secure_channel_with_user_password(secure_peer: OpcUaPeer, pki: dict[str, Path]) -> None:
    connector = OpcUaConnector(secure_config(secure_peer, "password.txt"), SystemClock(), pki["folder"])
    async with collecting(connector) as got:
        assert by_sensor(await got.next())["flow"].value == 1.5
    report = await connector.probe()
    assert report.ok, report.format()
    await write_opcua(secure_config(secure_peer, "password.txt"), "ns=2;s=Pump07.Setpt", 3, pki["folder"])
    assert secure_peer.value("setpt").Value.Value == 3


async def test_wrong_password_is_logged_once_and_retried_with_backoff(
    secure_peer: OpcUaPeer, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = secure_config(secure_peer, "wrong.txt", backoff_initial_secs=0.2, backoff_max_secs=0.8)
    connector = OpcUaConnector(cfg, SystemClock(), pki["folder"])
    with caplog.at_level(logging.DEBUG, logger="connectors.opcua"):
        async with collecting(connector) as got:
            started = time.monotonic()
            async with asyncio.timeout(15):
                while connector.connect_attempts < 4:
                    await asyncio.sleep(0.05)  # observing attempts over time: there is no event to await
            elapsed = time.monotonic() - started
            assert got.batches.empty()
    # Full-jitter backoff waits at least 0.1 + 0.2 + 0.4 s between the first four attempts.
    assert elapsed >= 0.7
    warnings = [r.getMessage() for r in caplog.records if r.name == "connectors.opcua" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rejected the user identity" in warnings[0]
    assert "password_file" in warnings[0]
    assert not connector.stats.connected


# ----------------------------------------------------------------------------------------- config


def test_config_rejects_both_or_neither_address() -> None:
    base = {"name": "p", "kind": "opcua", "endpoint": "opc.tcp://10.0.0.5:4840"}
    with pytest.raises(ValidationError, match="exactly one of node_id and browse_path"):
        OpcUaSourceConfig(**base, nodes=[{"sensor": "a", "node_id": "ns=2;s=A", "browse_path": "0:Objects/2:A"}])
    with pytest.raises(ValidationError, match="exactly one of node_id and browse_path"):
        OpcUaSourceConfig(**base, nodes=[{"sensor": "a"}])


def test_config_rejects_inline_password_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match=r"inline `password` is not accepted.*password_file or password_env"):
        OpcUaSourceConfig(
            name="p",
            kind="opcua",
            endpoint="opc.tcp://h:4840",
            username="u",
            password="x",
            nodes=[{"sensor": "a", "node_id": "ns=2;s=A"}],
        )


def test_config_rejects_inline_password_in_the_security_table_too() -> None:
    with pytest.raises(ValidationError, match="use password_file or password_env"):
        OpcUaSourceConfig(
            name="p",
            kind="opcua",
            endpoint="opc.tcp://h:4840",
            security={"policy": "None", "password": "x"},
            nodes=[{"sensor": "a", "node_id": "ns=2;s=A"}],
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "http://h:4840"}, "String should match pattern"),
        ({"nodes": [{"sensor": "a", "node_id": "ns=2;x=A"}]}, "not a valid NodeId"),
        ({"nodes": [{"sensor": "a", "browse_path": "Objects/Pump"}]}, "namespace index"),
        ({"nodes": [{"sensor": "a", "node_id": "i=1"}, {"sensor": "a", "node_id": "i=2"}]}, "used twice: a"),
        ({"security": {"policy": "Basic256Sha256"}}, "needs certificate and private_key"),
        ({"password_env": "PW"}, "a password needs a username"),
        ({"security": {"policy": "Basic128Rsa15"}}, "Input should be"),
        ({"polling": 5}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(change: dict, message: str) -> None:
    fields = {
        "name": "p",
        "kind": "opcua",
        "endpoint": "opc.tcp://h:4840",
        "nodes": [{"sensor": "a", "node_id": "ns=2;s=A"}],
        **change,
    }
    with pytest.raises(ValidationError, match=message):
        OpcUaSourceConfig(**fields)


def test_nodes_share_their_set_of_given_fields_and_copies_stay_apart() -> None:
    """20,000 nodes in a file: one set of field names for all (memory), never changed through one of them."""
    from connectors.opcua.config import NodeConfig

    a, b = NodeConfig(sensor="a", node_id="ns=2;s=A"), NodeConfig(sensor="b", node_id="ns=2;s=B")
    assert a.model_fields_set is b.model_fields_set and a.model_fields_set == {"sensor", "node_id"}
    moved = a.model_copy(update={"node_id": "ns=2;s=C"})
    bare = a.model_copy(update={"node_id": None, "browse_path": "0:Objects/2:A"})
    assert bare.model_fields_set == {"sensor", "node_id", "browse_path"}
    assert a.model_fields_set == b.model_fields_set == moved.model_fields_set == {"sensor", "node_id"}
    assert a.model_dump(exclude_unset=True) == {"sensor": "a", "node_id": "ns=2;s=A"}
    assert NodeConfig(sensor="c", browse_path="0:Objects/2:C").model_fields_set == {"sensor", "browse_path"}


def test_every_config_field_is_documented() -> None:
    from connectors.opcua.config import DeadbandConfig, NodeConfig, SecurityConfig

    for model in (OpcUaSourceConfig, NodeConfig, SecurityConfig, DeadbandConfig):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert undocumented == [], model.__name__
    cfg = OpcUaSourceConfig(name="p", kind="opcua", endpoint="opc.tcp://h:4840", nodes=NODES)
    assert cfg.sensors(Path(".")) == ["flow", "run"]
