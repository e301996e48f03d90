"""OPC-UA server identity (connectors.opcua.trust) against real asyncua servers on 127.0.0.1.

Two servers with different certificates answer, one after the other, on the same port with Basic256Sha256
SignAndEncrypt and a UserName token. A user manager on each server records every login attempt, which is how
the tests prove that no credentials reach a server whose certificate is not trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from agent.config import load
from agent.core.clock import ScaledClock, SystemClock
from agent.core.errors import ConnectorError
from agent.core.model import Reading
from connectors.opcua.certs import make_client_certificate
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.trust import fingerprint, first_certificate, parse_fingerprint
from tests.connectors.opcua_peer import OpcUaPeer, Secure, free_port

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "publishing_interval_ms": 50,
    "sampling_interval_ms": 0,
    "backoff_initial_secs": 0.05,
    "backoff_max_secs": 0.4,
    "timeout_secs": 2,
}


class RecordingUsers:
    """asyncua user manager: records every login attempt (any token), accepts operator/s3cret."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str | None, str | None]] = []

    def get_user(self, iserver, username=None, password=None, certificate=None):
        self.attempts.append((username, password))
        return User(role=UserRole.User) if (username, password) == ("operator", "s3cret") else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two server key pairs with the same application URI (a replaced PLC, or an impostor) and a client pair."""
    folder = tmp_path_factory.mktemp("trust-pki")

    def generate() -> None:  # in a thread: asyncio.run must not touch the test's event loop
        for name in ("a", "b"):
            asyncio.run(
                setup_self_signed_certificate(
                    folder / f"server-{name}-key.pem",
                    folder / f"server-{name}.der",
                    "urn:l4e-agent:test-server",
                    socket.gethostname(),
                    [ExtendedKeyUsageOID.SERVER_AUTH],
                    {"organizationName": f"server {name}"},
                )
            )
        make_client_certificate(folder / "client" / "cert.der", folder / "client" / "key.pem")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(generate).result()
    (folder / "password.txt").write_text("s3cret\n")
    return folder


def der(pki: Path, name: str) -> bytes:
    return (pki / f"server-{name}.der").read_bytes()


@asynccontextmanager
async def server(pki: Path, name: str, port: int) -> AsyncIterator[tuple[OpcUaPeer, RecordingUsers]]:
    users = RecordingUsers()
    secure = Secure(pki / f"server-{name}.der", pki / f"server-{name}-key.pem", "operator", "s3cret")
    peer = await OpcUaPeer(port=port, secure=secure, users=users).start()
    try:
        yield peer, users
    finally:
        await peer.stop()


def source(pki: Path, port: int, **security) -> dict:
    return {
        "name": "plc1",
        "kind": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{port}/",
        "nodes": [{"sensor": "flow", "node_id": "ns=2;s=Pump07.Flow"}],
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(pki / "client" / "cert.der"),
            "private_key": str(pki / "client" / "key.pem"),
            **security,
        },
        "username": "operator",
        "password_file": str(pki / "password.txt"),
        **FAST,
    }


class Collector:
    """Runs ``connector.readings()`` in a task; the test awaits readings of a sensor."""

    def __init__(self, connector: OpcUaConnector) -> None:
        self.connector = connector
        self.batches: asyncio.Queue[list[Reading]] = asyncio.Queue()

    async def run(self) -> None:
        async for batch in self.connector.readings():
            self.batches.put_nowait(batch)

    async def reading(self, timeout: float = 10.0) -> Reading:
        return (await asyncio.wait_for(self.batches.get(), timeout))[0]

    def drain(self) -> None:
        while not self.batches.empty():
            self.batches.get_nowait()


@asynccontextmanager
async def collecting(connector: OpcUaConnector) -> AsyncIterator[Collector]:
    collector = Collector(connector)
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def eventually(predicate, timeout: float, what: str) -> None:
    """Wait (bounded) for a condition observed over time: retries and backoff have no event to await."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def opcua_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "connectors.opcua" and r.levelno == level]


# ----------------------------------------------------------------------------------------- pin on first use


async def test_first_certificate_is_pinned_a_different_one_is_refused_before_any_credentials(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    state = tmp_path / "state"
    fp_a, fp_b = fingerprint(der(pki, "a")), fingerprint(der(pki, "b"))
    connector = OpcUaConnector(OpcUaSourceConfig(**source(pki, port)), SystemClock(), pki, state_dir=state)
    pin = state / "trust" / "plc1.der"
    with caplog.at_level(logging.DEBUG, logger="connectors.opcua"):
        async with collecting(connector) as got:
            async with server(pki, "a", port) as (_, users_a):
                assert (await got.reading()).value == 1.5
                assert pin.read_bytes() == der(pki, "a")
                assert users_a.attempts == [("operator", "s3cret")]
                assert connector.stats.untrusted is None
            got.drain()
            async with server(pki, "b", port) as (peer_b, users_b):
                await eventually(lambda: connector.stats.untrusted is not None, 20, "the refusal")
                refused_at = connector.connect_attempts
                await eventually(lambda: connector.connect_attempts >= refused_at + 3, 20, "three more attempts")
                # B answered every attempt up to CreateSession; ActivateSession (the UserName token) never came.
                assert users_b.attempts == []
                assert got.batches.empty() and not connector.stats.connected
                assert pin.read_bytes() == der(pki, "a")  # the pin is never replaced behind the operator's back
                reason = connector.stats.untrusted
                assert fp_a in reason and fp_b in reason and "before sending any credentials" in reason
                assert f"--source plc1 --accept-certificate {fp_b}" in reason

                # The explicit step (what `probe --accept-certificate` runs): a wrong fingerprint changes nothing.
                helper = OpcUaConnector(OpcUaSourceConfig(**source(pki, port)), SystemClock(), pki, state_dir=state)
                with pytest.raises(ConnectorError, match=f"presents {fp_b}, not {fp_a}; nothing was accepted"):
                    await helper.accept_certificate(fp_a)
                assert pin.read_bytes() == der(pki, "a") and users_b.attempts == []
                message = await helper.accept_certificate(fp_b.replace(":", "").lower())
                assert fp_b in message and str(pin) in message
                # The running connector, still retrying with backoff, picks the new pin up: no restart.
                assert (await got.reading()).value == 1.5
                assert users_b.attempts == [("operator", "s3cret")]
                assert connector.stats.untrusted is None and connector.stats.connected
                assert pin.read_bytes() == der(pki, "b")
                assert peer_b.value("flow").Value.Value == 1.5
    infos = opcua_records(caplog, logging.INFO)
    assert len([m for m in infos if "pinned the server certificate" in m]) == 1
    assert any(fp_a in m and str(pin) in m for m in infos if "pinned" in m)
    assert any("trusted again" in m for m in infos)
    refusals = [m for m in opcua_records(caplog, logging.WARNING) if "not trusted" in m]
    assert len(refusals) == 1, refusals  # a transition, not one line per retry
    assert fp_a in refusals[0] and fp_b in refusals[0]


# ----------------------------------------------------------------------------------------- trust list


async def test_a_trust_list_refuses_other_servers_and_a_new_file_in_trust_dir_is_picked_up(
    pki: Path, tmp_path: Path
) -> None:
    port = free_port()
    listed = tmp_path / "server-a.pem"
    listed.write_bytes(x509.load_der_x509_certificate(der(pki, "a")).public_bytes(Encoding.PEM))
    folder = tmp_path / "trusted"
    folder.mkdir()
    state = tmp_path / "state"
    cfg = OpcUaSourceConfig(**source(pki, port, server_certificate=[str(listed)], trust_dir=str(folder)))
    connector = OpcUaConnector(cfg, SystemClock(), pki, state_dir=state)
    async with collecting(connector) as got:
        async with server(pki, "a", port) as (_, users_a):
            assert (await got.reading()).value == 1.5
            assert users_a.attempts == [("operator", "s3cret")]
        got.drain()
        async with server(pki, "b", port) as (_, users_b):
            await eventually(lambda: connector.stats.untrusted is not None, 20, "the refusal")
            assert f"server_certificate {listed}" in connector.stats.untrusted
            assert users_b.attempts == []
            (folder / "server-b.der").write_bytes(der(pki, "b"))  # the operator adds the new certificate
            assert (await got.reading()).value == 1.5
            assert users_b.attempts == [("operator", "s3cret")]
            assert connector.stats.untrusted is None
    assert not (state / "trust").exists()  # a trust list is never extended by a first-use pin


# ----------------------------------------------------------------------------------------- probe


async def test_probe_shows_the_fingerprint_and_trust_and_never_pins(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    fp_a = fingerprint(der(pki, "a"))
    async with server(pki, "a", port) as (_, users):
        probe = OpcUaConnector(OpcUaSourceConfig(**source(pki, port)), SystemClock(), pki, state_dir=state)
        text = (await probe.probe()).format()
        assert text.startswith("source plc1: OK")
        assert f"server certificate {fp_a}" in text and "first use (not pinned yet)" in text
        assert f"--accept-certificate {fp_a}" in text
        assert not (state / "trust").exists()

        strict = OpcUaSourceConfig(**source(pki, port, trust_on_first_use=False))
        report = await OpcUaConnector(strict, SystemClock(), pki, state_dir=state).probe()
        assert not report.ok and "no certificate is trusted yet and trust_on_first_use is false" in report.error
        assert f"{fp_a}" in report.format() and ": untrusted (none)" in report.format()
        empty = tmp_path / "trusted"
        empty.mkdir()
        listed = OpcUaSourceConfig(**source(pki, port, trust_dir=str(empty)))
        report = await OpcUaConnector(listed, SystemClock(), pki, state_dir=state).probe()
        assert not report.ok and "the trust list (server_certificate, trust_dir) is empty" in report.error
        assert users.attempts == [("operator", "s3cret")]  # the first probe's only; none for the refused ones

        await OpcUaConnector(strict, SystemClock(), pki, state_dir=state).accept_certificate(fp_a)
        text = (await OpcUaConnector(strict, SystemClock(), pki, state_dir=state).probe()).format()
        assert text.startswith("source plc1: OK")
        assert f"{fp_a}" in text and f": trusted (accepted in {state / 'trust' / 'plc1.der'})" in text
        assert "--accept-certificate" not in text


# ----------------------------------------------------------------------------------------- the agent


ASSET = """\
asset = "line"
state_dir = "{state}"
[lookout]
upload_frequency = "PT5M"
delay_offset_minutes = 1
sampling_rate = "PT1M"
input = "file://{store}/"
[components]
pump = ["flow"]
[health]
source_silent_secs = 3600
[[sources]]
name = "plc1"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/"
publishing_interval_ms = 50
sampling_interval_ms = 0
backoff_initial_secs = 0.05
backoff_max_secs = 0.4
timeout_secs = 2
username = "operator"
password_file = "{pki}/password.txt"
nodes = [ {{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }} ]
[sources.security]
policy = "Basic256Sha256"
certificate = "{pki}/client/cert.der"
private_key = "{pki}/client/key.pem"
[alarms.hooks.journal]
kind = "file"
path = "{alarms}"
[[alarms.rules]]
name = "plc-identity"
kind = "source_untrusted"
hooks = ["journal"]
"""


async def cli(*args: str) -> tuple[int, str]:
    """Run ``l4e-agent ARGS`` in a child process (the event loop keeps serving the agent meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def test_the_agent_raises_source_untrusted_and_the_documented_probe_step_restores_the_data(
    pki: Path, tmp_path: Path
) -> None:
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner
    from agent.runtime.metrics import render
    from agent.runtime.supervision import Supervision

    port = free_port()
    state, journal = tmp_path / "state", tmp_path / "alarms.jsonl"
    path = tmp_path / "line.toml"
    path.write_text(ASSET.format(state=state, store=tmp_path / "store", port=port, pki=pki, alarms=journal))
    fp_b = fingerprint(der(pki, "b"))
    clock = ScaledClock(time.time(), 10.0)  # alarm checks every second of wall time
    runner = AssetRunner(load(path), path, state, clock)
    supervision = Supervision([runner])
    agent = Agent([runner], clock)
    task = asyncio.create_task(agent.run())
    try:
        async with server(pki, "a", port):
            await eventually(lambda: runner.stats.readings >= 1, 20, "readings from server A")
        async with server(pki, "b", port) as (_, users_b):
            await eventually(lambda: journal.exists() and "raised" in journal.read_text(), 30, "the alarm")
            raised = [json.loads(line) for line in journal.read_text().splitlines()]
            assert [(a["rule"], a["state"]) for a in raised] == [("plc-identity", "raised")]
            assert fp_b in json.dumps(raised[0])
            assert [e.kind for e in runner.stats.events if e.kind.startswith("source_")] == ["source_untrusted"]
            assert 'l4e_source_untrusted{source="plc1"} 1.0' in render(supervision.registry)
            ok, reason = supervision.health()
            assert not ok and "untrusted sources ['plc1']" in reason
            assert users_b.attempts == []
            before = runner.stats.readings

            # The documented steps, as an operator runs them (README, Sources): probe, then --accept-certificate.
            code, text = await cli("probe", str(path))
            assert code == 1 and text.startswith("source plc1: FAILED (server certificate not trusted")
            assert f"{fp_b} (O=server b" in text and ": untrusted (" in text
            hint = f"to trust this certificate: l4e-agent probe {path} --source plc1 --accept-certificate {fp_b}"
            assert hint in text
            assert users_b.attempts == []
            code, text = await cli("probe", str(path), "--source", "plc1", "--accept-certificate", fp_b)
            assert code == 0, text
            assert f"accepted the server certificate {fp_b}" in text
            assert f"{fp_b}" in text and ": trusted (accepted in " in text and "source plc1: OK" in text

            await eventually(lambda: runner.stats.readings > before, 20, "readings from server B")
            await eventually(lambda: "cleared" in journal.read_text(), 30, "the alarm cleared")
            assert ("operator", "s3cret") in users_b.attempts
            assert 'l4e_source_untrusted{source="plc1"} 0.0' in render(supervision.registry)
            assert [e.kind for e in runner.stats.events if e.kind.startswith("source_")] == [
                "source_untrusted", "source_trusted"]
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)


# ----------------------------------------------------------------------------------------- policy None


def test_policy_none_takes_no_credentials_unless_allowed_and_has_no_certificate_to_pin() -> None:
    base = {"name": "p", "kind": "opcua", "endpoint": "opc.tcp://h:4840", "nodes": [{"sensor": "a", "node_id": "i=1"}]}
    with pytest.raises(ValidationError, match="allow_credentials_over_none = true"):
        OpcUaSourceConfig(**base, username="operator", password_env="PW")
    OpcUaSourceConfig(**base, username="operator", password_env="PW", security={"allow_credentials_over_none": True})
    OpcUaSourceConfig(**base)  # anonymous over None: nothing to protect, nothing to check
    with pytest.raises(ValidationError, match="server_certificate/trust_dir need a secured policy"):
        OpcUaSourceConfig(**base, security={"server_certificate": "server.der"})


async def test_probe_over_policy_none_says_the_identity_is_not_checked(tmp_path: Path) -> None:
    peer = await OpcUaPeer().start()
    try:
        cfg = OpcUaSourceConfig(name="plc1", kind="opcua", endpoint=peer.endpoint,
                                nodes=[{"sensor": "flow", "node_id": "ns=2;s=Pump07.Flow"}], **FAST)
        text = (await OpcUaConnector(cfg, SystemClock(), tmp_path, state_dir=tmp_path).probe()).format()
    finally:
        await peer.stop()
    assert text.startswith("source plc1: OK")
    assert "security policy None: the server's identity is not checked" in text
    assert not (tmp_path / "trust").exists()


# ----------------------------------------------------------------------------------------- small parts


def test_fingerprints_parse_in_every_common_form_and_chains_are_cut(pki: Path) -> None:
    cert = der(pki, "a")
    fp = fingerprint(cert)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 64 + 31
    for typed in (fp, fp.lower(), fp[7:], fp[7:].replace(":", ""), " sha256 " + fp[7:].replace(":", " ")):
        assert parse_fingerprint(typed) == fp
    for bad in ("SHA256:AB", "xyz", fp[:-2] + "ZZ"):
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            parse_fingerprint(bad)
    assert first_certificate(cert + der(pki, "b")) == cert


def test_cli_accept_certificate_needs_a_source(tmp_path: Path) -> None:
    import subprocess

    fp = "SHA256:" + ":".join(["AB"] * 32)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "probe", str(tmp_path / "x.toml"), "--accept-certificate", fp],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "--accept-certificate needs --source NAME" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "agent", "probe", "x.toml", "--source", "p", "--accept-certificate", "12"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "not a SHA-256 fingerprint" in result.stderr


