"""Who may call ``lookout serve``, and over what: off loopback only with access keys (or an explicit, logged
--allow-anonymous), HTTPS with --tls-cert/--tls-key that boto3 and the agent's client reach with a CA bundle."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import load
from agent.core.errors import ConfigError
from agent.lookout.client import make_client
from agent.lookout_local import serve_main
from tests.helpers import assert_once, logfmt_events

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "testing", "testing"  # what tests/conftest.py gives every AWS client of the test process


def serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", "lookout", "serve", "--port", "0", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, wait (bounded); the process's stderr. Fails unless it exited 0."""
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def client(endpoint: str, verify=None):
    return boto3.client("lookoutequipment", endpoint_url=endpoint, region_name="us-east-1", verify=verify,
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10))


def test_serve_off_loopback_without_keys_exits_78_naming_the_flags(tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent", "lookout", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--state-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 78, done.stderr
    assert "--access-key" in done.stderr and "--allow-anonymous" in done.stderr, done.stderr


@pytest.mark.parametrize(("flags", "warning"), [
    (("--allow-anonymous",), "without access keys (--allow-anonymous)"),
    (("--access-key", f"{KEY_ID}:{SECRET}"), "access keys in use over plain HTTP"),
])
def test_serve_off_loopback_warns_once_at_start(tmp_path, flags, warning):
    proc = serve("--host", "0.0.0.0", "--state-dir", str(tmp_path), *flags)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://0.0.0.0:"), line
        port = int(line.rsplit(":", 1)[1])
        assert client(f"http://127.0.0.1:{port}").list_datasets()["DatasetSummaries"] == []
    finally:
        err = stop(proc)
    assert_once(logfmt_events(err), warning)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "l4e test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls_endpoint(pki, tmp_path_factory):
    """``lookout serve`` over HTTPS with access keys, on 127.0.0.1; its https:// endpoint."""
    proc = serve("--state-dir", str(tmp_path_factory.mktemp("tls-state")), "--tls-cert", str(pki["cert"]),
                 "--tls-key", str(pki["key"]), "--access-key", f"{KEY_ID}:{SECRET}")
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on https://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[-1]
    finally:
        stop(proc)


def test_boto3_reaches_the_tls_service_with_the_ca_bundle_only(tls_endpoint, pki):
    assert client(tls_endpoint, verify=str(pki["ca"])).list_datasets()["DatasetSummaries"] == []
    with pytest.raises(botocore.exceptions.SSLError):
        client(tls_endpoint).list_datasets()  # botocore's own CAs do not know the test CA
    with pytest.raises(botocore.exceptions.ConnectionClosedError):  # plain HTTP on the TLS port: closed
        client(tls_endpoint.replace("https://", "http://")).list_datasets()


def test_a_stalled_tls_handshake_delays_no_other_client(tls_endpoint, pki):
    host, port = tls_endpoint.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=5):  # connects, never says hello
        assert client(tls_endpoint, verify=str(pki["ca"])).list_datasets()["DatasetSummaries"] == []


def asset_file(tmp_path: Path, endpoint: str, ca_bundle: str) -> Path:
    path = tmp_path / "pump.toml"
    path.write_text(textwrap.dedent(f"""\
        asset = "pump"
        [lookout]
        endpoint_url = "{endpoint}"
        ca_bundle = "{ca_bundle}"
        upload_frequency = "PT5M"
        sampling_rate = "PT1M"
        input = "file://{tmp_path}/in/"
        [components]
        pump = ["p"]
        [[sources]]
        name = "h"
        kind = "replay"
        path = "h.csv"
        """))
    (tmp_path / "h.csv").write_text("Timestamp,p\n2026-01-01T00:00:00Z,1\n")
    return path


def test_the_agents_lookout_client_takes_a_ca_bundle_relative_to_the_asset_file(tls_endpoint, pki, tmp_path):
    (tmp_path / "ca.pem").write_bytes(pki["ca"].read_bytes())
    lk = load(asset_file(tmp_path, tls_endpoint, "ca.pem")).lookout
    assert lk.ca_bundle == tmp_path.resolve() / "ca.pem"
    assert make_client(lk.endpoint_url, lk.region, lk.ca_bundle).list_datasets()["DatasetSummaries"] == []
    with pytest.raises(ConfigError) as err:
        load(asset_file(tmp_path, tls_endpoint, "absent.pem"))
    assert err.value.key == "lookout.ca_bundle"


def test_serve_refuses_half_or_unusable_tls_options(tmp_path, pki):
    state = ("--state-dir", str(tmp_path))
    assert serve_main([*state, "--tls-cert", str(pki["cert"])]) == 78
    assert serve_main([*state, "--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(pki["key"])]) == 78
    assert serve_main([*state, "--tls-cert", str(pki["ca"]), "--tls-key", str(pki["key"])]) == 78  # not its key
