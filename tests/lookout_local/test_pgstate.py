"""PostgreSQL state guarantees that hold across processes: each check uses several independent connection
pools (as separate replicas and workers have) racing on the same key."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from agent.lookout_local import LocalLookoutService
from agent.lookout_local.pgstate import PgState

from .conftest import make_client

RACERS = 8


def race(fn) -> list:
    """Run ``fn(i)`` in RACERS threads released at once; their results in order."""
    barrier = threading.Barrier(RACERS)
    results: list = [None] * RACERS

    def run(i):
        barrier.wait(10)
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def states(pg_server):
    url = pg_server.new_database()
    pools = [PgState(url, pool_size=1) for _ in range(RACERS)]
    yield pools
    for p in pools:
        p.close()


def test_one_execution_per_window_whoever_races(states):
    doc = {"Status": "IN_PROGRESS", "DataStartTime": 600.0}
    created = race(lambda i: states[i].create_execution("s1", 600.0, {**doc, "by": i}))
    assert sorted(created) == [False] * (RACERS - 1) + [True]
    assert len(states[0].executions("s1")) == 1
    assert states[0].executions("s1")[0]["by"] == created.index(True)


def test_an_execution_is_recorded_once(states):
    states[0].create_execution("s1", 600.0, {"Status": "IN_PROGRESS"})
    finished = race(lambda i: states[i].finish_execution("s1", 600.0, {"Status": "SUCCESS", "by": i}))
    assert sorted(finished) == [False] * (RACERS - 1) + [True]
    assert states[0].get_execution("s1", 600.0) == {"Status": "SUCCESS", "by": finished.index(True)}


def test_read_modify_write_is_serialised_across_pools(states):
    states[0].put("dataset", "d", "arn:d", 1.0, {"n": 0})

    def increment(i):
        with states[i].transaction():
            doc = states[i].get("dataset", "d")
            doc["n"] += 1
            states[i].put("dataset", "d", "arn:d", 1.0, doc)

    assert race(increment) == [None] * RACERS
    assert states[0].get("dataset", "d") == {"n": RACERS}  # no lost update


def test_two_replicas_creating_the_same_dataset(tmp_path, pg_server):
    url = pg_server.new_database()
    store = (tmp_path / "store").as_uri() + "/"
    replicas = [LocalLookoutService(tmp_path / "state", store, db_url=url, embedded_worker=False).start()
                for _ in range(2)]
    try:
        clients = [make_client(r.endpoint_url) for r in replicas]

        def create(i):
            return clients[i % 2].create_dataset(DatasetName="same")["DatasetArn"]

        results = race(create)
        arns = [r for r in results if isinstance(r, str)]
        conflicts = [r for r in results if isinstance(r, ClientError)
                     and r.response["Error"]["Code"] == "ConflictException"]
        assert len(arns) == 1 and len(conflicts) == RACERS - 1, results
        assert clients[1].describe_dataset(DatasetName="same")["DatasetArn"] == arns[0]
    finally:
        for r in replicas:
            r.stop()
