"""Fixtures: the local L4E service on 127.0.0.1 (any free port) over a FileStore in a tmp folder, reached
through an unmodified boto3 ``lookoutequipment`` client; synthetic history ingested and a model trained.
Every service fixture runs on both state backends: SQLite (embedded) and PostgreSQL (a real server started
for the session, a fresh database per fixture, the work done by an embedded procrastinate worker).
(The clean environment per test comes from tests/conftest.py.)"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from agent.lookout_local import LocalLookoutService
from agent.pipeline.store import FileStore

from . import synth
from .pg import PgServer

BUCKET = "plant-data"
HISTORY_PREFIX = "history/"


def make_client(endpoint: str, key: str = "x", secret: str = "x"):
    return boto3.client("lookoutequipment", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(retries={"total_max_attempts": 1}))


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def write_history(store: FileStore, frames: dict, prefix: str = HISTORY_PREFIX, parts: int = 2) -> None:
    """Each component's frame split into ``parts`` CSVs under ``<prefix><component>/``."""
    for comp, frame in frames.items():
        size = -(-len(frame) // parts)
        for i in range(parts):
            store.put(f"{prefix}{comp}/part{i}.csv", synth.to_csv(frame.iloc[i * size:(i + 1) * size]))


def ingest(client, name: str, prefix: str = HISTORY_PREFIX, key_pattern: str | None = None) -> dict:
    """Create (if needed) and ingest a dataset; returns the finished job description."""
    with contextlib.suppress(client.exceptions.ConflictException):
        client.create_dataset(DatasetName=name, DatasetSchema={"InlineDataSchema": synth.schema()})
    s3 = {"Bucket": BUCKET, "Prefix": prefix}
    if key_pattern:
        s3["KeyPattern"] = key_pattern
    job = client.start_data_ingestion_job(DatasetName=name, IngestionInputConfiguration={"S3InputConfiguration": s3},
                                          RoleArn="arn:aws:iam::123456789012:role/l4e")
    return wait_for(lambda: (d := client.describe_data_ingestion_job(JobId=job["JobId"]))["Status"] != "IN_PROGRESS"
                    and d)


def train(client, name: str, dataset: str, **extra) -> dict:
    client.create_model(ModelName=name, DatasetName=dataset,
                        DataPreProcessingConfiguration={"TargetSamplingRate": "PT1M"}, **extra)
    return wait_for(lambda: (d := client.describe_model(ModelName=name))["Status"] != "IN_PROGRESS" and d)


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (started on first use)."""
    server = PgServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request):
    """The state backend name; ``db_url()`` for the service fixtures."""
    return request.param


@pytest.fixture(scope="module")
def db_factory(backend, request):
    """``db_factory()`` → None (SQLite) or the URL of a fresh PostgreSQL database."""
    if backend == "sqlite":
        return lambda: None
    server = request.getfixturevalue("pg_server")
    return server.new_database


def start_service(state_dir: Path, store_url: str, db_url: str | None, **kwargs) -> LocalLookoutService:
    """A started service; with PostgreSQL, a short lease and poll so the tests' waits stay short."""
    if db_url is not None:
        kwargs.setdefault("lease_secs", 4.0)
    return LocalLookoutService(state_dir, store_url, db_url=db_url, **kwargs).start()


@pytest.fixture
def service(tmp_path: Path, db_factory):
    svc = start_service(tmp_path / "state", (tmp_path / "store").as_uri() + "/", db_factory())
    yield svc
    svc.stop()


@pytest.fixture
def client(service):
    return make_client(service.endpoint_url)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store" / BUCKET)


@pytest.fixture(scope="module")
def history():
    """Five days of synthetic 1-minute data: the first three are the training history."""
    return synth.series(5 * synth.DAY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, history, db_factory):
    """A service (system clock) with dataset ``hist`` ingested and model ``m1`` trained; module-wide."""
    root = tmp_path_factory.mktemp("trained")
    store = FileStore(root / "store" / BUCKET)
    write_history(store, {c: f.iloc[:3 * synth.DAY] for c, f in history.items()})
    svc = start_service(root / "state", (root / "store").as_uri() + "/", db_factory())
    client = make_client(svc.endpoint_url)
    job = ingest(client, "hist")
    assert job["Status"] == "SUCCESS", job
    model = train(client, "m1", "hist")
    assert model["Status"] == "SUCCESS", model
    yield svc, client, store
    svc.stop()
