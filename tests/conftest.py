"""Shared fixtures: a clean environment per test, free ports, and moto's S3 server over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.ci_policy import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401  (hooks: no skip under CI)
from tests.ports import free_port

_KEEP = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "TERM", "USER", "SHELL",
         "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CI"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No L4E_AGENT_*/AWS_*/NOTIFY_SOCKET leaks into or out of a test; AWS calls get dummy credentials."""
    for key in list(os.environ):
        if key.startswith(("L4E_", "AWS_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM")) and key not in _KEEP:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield




class MotoS3:
    """moto's S3 server on 127.0.0.1 (a real HTTP endpoint). ``stop()``/``start()`` simulate an outage;
    moto keeps its buckets in process memory, so objects survive a restart on the same port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                          connect_timeout=2, read_timeout=5))


@pytest.fixture
def moto_s3() -> Iterator[MotoS3]:
    import urllib.request

    server = MotoS3()
    server.start()
    # moto keeps buckets in process memory across server instances: start every test from an empty S3
    urllib.request.urlopen(urllib.request.Request(server.url + "/moto-api/reset", method="POST"), timeout=10).read()
    try:
        yield server
    finally:
        server.stop()
