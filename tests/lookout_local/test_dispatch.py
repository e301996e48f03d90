"""The fleet dispatcher shares the due schedulers between dispatchers (as separate workers run them, each with
its own connection pool): every due window gets one execution and one queued task (none twice, none lost),
each scheduler is dispatched by exactly one dispatcher, and a scheduler an API call holds is passed over for
that tick, then dispatched by the next one."""

from __future__ import annotations

import threading

import psycopg
import pytest

from agent.lookout_local.context import Context
from agent.lookout_local.dispatch import Dispatcher
from agent.lookout_local.fleet import deferrer
from agent.lookout_local.pgstate import PgState
from agent.lookout_local.stores import Stores

F = 300
NOW = 1_800_000_000  # on the PT5M grid
SCHEDULERS = 120
DISPATCHERS = 4
DUE = 2  # windows due per scheduler at NOW


class FixedClock:
    def now(self) -> float:
        return float(NOW)


class CountingDispatcher(Dispatcher):
    """Counts the schedulers it dispatched (changed), per name."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dispatched: list[str] = []

    def dispatch(self, name: str) -> int | None:
        made = super().dispatch(name)
        if made is not None:
            self.dispatched.append(name)
        return made


def scheduler(name: str) -> dict:
    return {"InferenceSchedulerName": name, "InferenceSchedulerArn": f"arn:aws:lookoutequipment:us-east-1:"
            f"123456789012:inference-scheduler/{name}/x", "ModelName": "m", "ModelArn": "arn:m",
            "Status": "RUNNING", "DataUploadFrequency": "PT5M", "DataDelayOffsetInMinutes": 0,
            "DataInputConfiguration": {"S3InputConfiguration": {"Bucket": "b", "Prefix": f"in/{name}/"}},
            "DataOutputConfiguration": {"S3OutputConfiguration": {"Bucket": "b", "Prefix": f"out/{name}/"}},
            "CreatedAt": 0.0, "_last_end": NOW - DUE * F}


@pytest.fixture
def fleet_db(pg_server, tmp_path):
    """A database with SCHEDULERS running schedulers, DUE windows due each; a dispatcher factory."""
    url = pg_server.new_database()
    seed = PgState(url, pool_size=1)
    for i in range(SCHEDULERS):
        doc = scheduler(f"s{i:03d}")
        seed.put("inference-scheduler", doc["InferenceSchedulerName"], doc["InferenceSchedulerArn"], 0.0, doc)
    seed.close()
    states: list[PgState] = []

    def dispatcher() -> CountingDispatcher:
        state = PgState(url, pool_size=2)
        states.append(state)
        ctx = Context(state, Stores(tmp_path.as_uri() + "/"), FixedClock(), tmp_path)
        return CountingDispatcher(ctx, deferrer(state))

    yield url, dispatcher
    for state in states:
        state.close()


def rows(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def test_racing_dispatchers_share_the_work_and_dispatch_every_window_once(fleet_db):
    url, make = fleet_db
    dispatchers = [make() for _ in range(DISPATCHERS)]
    barrier = threading.Barrier(DISPATCHERS)
    errors: list[BaseException] = []

    def run(d: Dispatcher) -> None:
        try:
            barrier.wait(10)
            d.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    windows = SCHEDULERS * DUE
    assert rows(url, "SELECT count(*), count(DISTINCT (scheduler, data_start)), count(*) FILTER (WHERE status = "
                     "'IN_PROGRESS') FROM lookout_executions")[0] == (windows, windows, windows)
    assert rows(url, "SELECT count(*), count(DISTINCT (args->>'scheduler', args->>'start')) FROM procrastinate_jobs "
                     "WHERE task_name = 'l4e.run_execution' AND status = 'todo'")[0] == (windows, windows)
    # every scheduler advanced to NOW and due at the next window's end
    assert rows(url, "SELECT count(*) FROM lookout_resources WHERE due_at = %s AND (doc::jsonb->>'_last_end')::int "
                     "= %s", (NOW + F, NOW))[0][0] == SCHEDULERS
    # each scheduler looked at by one dispatcher only: none read one another had just dispatched
    dispatched = [name for d in dispatchers for name in d.dispatched]
    assert sorted(dispatched) == [f"s{i:03d}" for i in range(SCHEDULERS)]


def test_a_scheduler_held_by_an_api_call_is_passed_over_then_dispatched(fleet_db):
    url, make = fleet_db
    dispatcher = make()
    with psycopg.connect(url) as held, held.transaction():
        # what an API call changing s000 holds (PgState.get's lock) while the dispatcher ticks
        held.execute("SELECT pg_advisory_xact_lock(hashtextextended('inference-scheduler/s000', 0))")
        assert dispatcher.tick() == (SCHEDULERS - 1) * DUE  # returns: the held one is not claimed again and again
        assert rows(url, "SELECT count(*) FROM lookout_executions WHERE scheduler = 's000'")[0][0] == 0
    assert dispatcher.tick() == DUE
    assert rows(url, "SELECT count(*) FROM lookout_executions WHERE scheduler = 's000'")[0][0] == DUE
    assert dispatcher.tick() == 0
