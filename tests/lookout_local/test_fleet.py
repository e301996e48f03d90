"""Fleet mode (PostgreSQL state, procrastinate workers, stateless replicas) under faults, with real processes:
a worker SIGKILLed mid-execution, an API replica killed while clients call, the database restarted."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import botocore.exceptions
import psycopg
import pytest

from agent.core.clock import ScaledClock, parse_instant
from agent.core.model import Window
from agent.lookout_local import LocalLookoutService
from agent.lookout_local.inference import run_window
from agent.lookout_local.modeling import TrainedModel
from agent.lookout_local.scheduler import input_config
from agent.lookout_local.schema import parse_schema
from agent.pipeline.store import FileStore
from agent.pipeline.windows import object_key

from . import synth
from .conftest import BUCKET, ingest, make_client, train, wait_for, write_history
from .pg import PgServer
from .procs import Fleet

F = 300
SPEED = 600.0                      # a 5-minute window every 0.5 wall seconds
CLOCK_START = "2026-01-04T00:00:00Z"
IN_PREFIX = "fleet/input/"
N_WINDOWS_OF_INPUT = 240           # input files for two simulated hours past the start (≈ 2 wall minutes)
LEASE = 4.0


def write_inputs(store: FileStore, history: dict, start: int, count: int) -> None:
    """The agent's files for ``count`` windows from the grid point ``start`` (every scheduler reads them)."""
    for k in range(count):
        w = Window(start + k * F, start + (k + 1) * F)
        lo, hi = synth.minute_index(w.start), synth.minute_index(w.end)
        for comp, frame in history.items():
            store.put(object_key(IN_PREFIX, comp, "_", w.start, "yyyyMMddHHmmss"), synth.to_csv(frame.iloc[lo:hi + 1]))


@pytest.fixture(scope="module")
def own_pg_server():
    """A PostgreSQL server of this module's own: the restart test stops and starts it, and whatever happens
    there must not reach the other modules' server."""
    server = PgServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, history, own_pg_server):
    """One database, shared state folder and store, a trained model ``fm``; the API replica in this process
    (no embedded worker: subprocess workers do all the work); ``Fleet`` starts more processes."""
    pg_server = own_pg_server
    root = tmp_path_factory.mktemp("fleet")
    state_dir, store_root = root / "state", root / "store"
    store = FileStore(store_root / BUCKET)
    write_history(store, {c: f.iloc[:3 * synth.DAY] for c, f in history.items()})
    start = parse_instant(CLOCK_START)
    clock = ScaledClock.persistent(start, SPEED, state_dir / "clock.json")
    write_inputs(store, history, int(clock.now() // F) * F - 2 * F, N_WINDOWS_OF_INPUT)
    db_url = pg_server.new_database()
    procs = Fleet(db_url, state_dir, store_root.as_uri() + "/", CLOCK_START, SPEED, LEASE)
    svc = LocalLookoutService(state_dir, store_root.as_uri() + "/", clock=clock, db_url=db_url,
                              embedded_worker=False).start()
    client = make_client(svc.endpoint_url)
    first = procs.worker()
    assert ingest(client, "fleet-data")["Status"] == "SUCCESS"
    assert train(client, "fm", "fleet-data")["Status"] == "SUCCESS"
    assert procs.stop(first) == 0  # SIGTERM: the worker drains and exits cleanly
    yield {"svc": svc, "client": client, "store": store, "procs": procs, "db": db_url, "clock": clock,
           "state_dir": state_dir, "pg": pg_server}
    procs.close()
    svc.stop()


def create_schedulers(client, prefix: str, count: int, model: str = "fm") -> list[str]:
    names = [f"{prefix}-{i:02d}" for i in range(count)]
    for name in names:
        client.create_inference_scheduler(
            ModelName=model, InferenceSchedulerName=name, DataUploadFrequency="PT5M", DataDelayOffsetInMinutes=0,
            DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": IN_PREFIX}},
            DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": f"{name}/out/"}},
            RoleArn="arn:aws:iam::123456789012:role/l4e", ClientToken=f"token-{name}")
    return names


def all_executions(client, name: str) -> list[dict]:
    out, token = [], None
    for _ in range(1000):
        kwargs = {"InferenceSchedulerName": name, **({"NextToken": token} if token else {})}
        page = client.list_inference_executions(**kwargs)
        out += page["InferenceExecutionSummaries"]
        token = page.get("NextToken")
        if not token:
            return out
    raise AssertionError("pagination did not end")


def stop_all(client, names: list[str]) -> None:
    for name in names:
        client.stop_inference_scheduler(InferenceSchedulerName=name)
    for name in names:
        wait_for(lambda n=name: client.describe_inference_scheduler(InferenceSchedulerName=n)["Status"] == "STOPPED",
                 timeout=30)


def settled(client, names: list[str]) -> bool:
    return all(e["Status"] != "IN_PROGRESS" for n in names for e in all_executions(client, n))


def check_windows(client, names: list[str]) -> int:
    """Every scheduler's executions: one per window, contiguous windows, none left IN_PROGRESS."""
    total = 0
    for name in names:
        starts = sorted(e["DataStartTime"].timestamp() for e in all_executions(client, name))
        assert len(starts) == len(set(starts)), f"{name}: a window executed twice"
        assert starts and all(b - a == F for a, b in itertools.pairwise(starts)), f"{name}: windows missing"
        total += len(starts)
    return total


def jobs(db: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def test_a_worker_killed_mid_execution_leaves_it_to_another(fleet):
    client, procs, db = fleet["client"], fleet["procs"], fleet["db"]
    names = create_schedulers(client, "kill", 12)
    # no worker runs: the windows pile up (schedulers stay PENDING), so the next worker has a backlog and is
    # certainly in the middle of an execution when it is killed
    wait_for(lambda: fleet["clock"].now() > client.describe_inference_scheduler(
        InferenceSchedulerName=names[0])["CreatedAt"].timestamp() + 4 * F, timeout=10)
    cut, stuck_ids = None, []
    for _attempt in range(5):  # bounded: a kill can land between two tasks, or after a record and before the
        victim = procs.worker()  # task's own end; only a kill in the middle of an execution is the case here
        # every scheduler dispatched (its executions created), then killed while it runs a task
        wait_for(lambda: jobs(db, "SELECT count(*) FROM lookout_resources WHERE name LIKE 'kill-%%' AND due_at > 0")
                 == [(len(names),)], timeout=30, interval=0.01)
        wait_for(lambda: jobs(db, "SELECT id FROM procrastinate_jobs WHERE status='doing' AND "
                                  "task_name='l4e.run_execution' AND NOT (id = ANY(%s))", (stuck_ids,)),
                 timeout=30, interval=0.005)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # a dead worker finishes nothing: what is 'doing' now was cut, in the middle or after its record
        for job_id, args in jobs(db, "SELECT id, args FROM procrastinate_jobs WHERE status='doing' AND "
                                     "task_name='l4e.run_execution' AND NOT (id = ANY(%s))", (stuck_ids,)):
            stuck_ids.append(job_id)
            execution = next(e for e in all_executions(client, args["scheduler"])
                             if e["DataStartTime"].timestamp() == args["start"])
            if execution["Status"] == "IN_PROGRESS" and cut is None:
                cut = (job_id, args)
        if cut is not None:
            break
    assert cut is not None, f"no kill landed in the middle of an execution in 5 tries (cut tasks: {stuck_ids})"
    job_id, args = cut
    # the dead worker's last sign of life, on the database's clock
    (last_beat,), = jobs(db, "SELECT w.last_heartbeat FROM procrastinate_workers w JOIN procrastinate_jobs j "
                             "ON j.worker_id = w.id WHERE j.id = %s", (job_id,))
    procs.worker()
    stop_all(client, names)
    wait_for(lambda: settled(client, names), timeout=60)
    # a task cut after its record is run again too (and finds it finished): wait until none is left
    wait_for(lambda: jobs(db, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND "
                              "args->>'scheduler' LIKE 'kill-%%'") == [(0,)], timeout=60)
    # the lease, not luck: it ran again only after the dead worker's heartbeat was older than the lease, and
    # only the cut tasks needed a second attempt (procrastinate counts the finishing one too)
    for cut_id in stuck_ids:
        assert jobs(db, "SELECT status, attempts FROM procrastinate_jobs WHERE id=%s", (cut_id,)) == [("succeeded", 2)]
    assert jobs(db, "SELECT DISTINCT attempts FROM procrastinate_jobs WHERE NOT (id = ANY(%s)) AND "
                    "args->>'scheduler' LIKE 'kill-%%'", (stuck_ids,)) == [(1,)]
    started = [at for (at,) in jobs(db, "SELECT at FROM procrastinate_events WHERE job_id = %s AND type = 'started' "
                                        "ORDER BY at", (job_id,))]
    assert len(started) == 2 and (started[1] - last_beat).total_seconds() >= LEASE, (last_beat, started)
    total = check_windows(client, names)
    # one task per execution, every one succeeded (none failed, none duplicated)
    rows = jobs(db, "SELECT status, count(*) FROM procrastinate_jobs WHERE task_name='l4e.run_execution' AND "
                    "args->>'scheduler' LIKE 'kill-%%' GROUP BY status")
    assert dict(rows) == {"succeeded": total}
    done = next(e for e in all_executions(client, args["scheduler"]) if e["DataStartTime"].timestamp() == args["start"])
    assert done["Status"] == "SUCCESS", done.get("FailedReason")
    # the results object is the one a single clean run writes: same key, same bytes
    desc = client.describe_inference_scheduler(InferenceSchedulerName=args["scheduler"])
    model_doc = client.describe_model(ModelName="fm")
    scratch = FileStore(fleet["state_dir"].parent / "scratch")
    window = Window(int(args["start"]), int(args["end"]))
    key, _ = run_window(fleet["store"], scratch, input_config(desc), f"{args['scheduler']}/out/",
                        parse_schema(model_doc["Schema"]), TrainedModel.load(fleet["state_dir"] / "models" / "fm"),
                        window, F)
    assert key == done["CustomerResultObject"]["Key"]
    assert fleet["store"].get(key) == scratch.get(key)


def test_a_killed_replica_leaves_the_other_answering(fleet):
    procs = fleet["procs"]
    procs.worker()
    (r1, url1), (_r2, url2) = procs.replica(), procs.replica()
    c1, c2 = make_client(url1), make_client(url2)
    names = create_schedulers(c1, "rep", 2)
    errors, answers, stop = [], [0], threading.Event()

    def call_r2():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c2.describe_inference_scheduler(InferenceSchedulerName=names[0])
                c2.list_inference_executions(InferenceSchedulerName=names[0])
                answers[0] += 1
            except botocore.exceptions.BotoCoreError as exc:
                errors.append(exc)

    caller = threading.Thread(target=call_r2)
    caller.start()
    try:
        wait_for(lambda: answers[0] > 5, timeout=20)
        c1.describe_inference_scheduler(InferenceSchedulerName=names[0])
        r1.kill()
        r1.wait(10)
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            c1.describe_inference_scheduler(InferenceSchedulerName=names[0])
        seen = answers[0]
        wait_for(lambda: answers[0] > seen + 5, timeout=20)
    finally:
        stop.set()
        caller.join(30)
    assert errors == []
    # the state written through the dead replica is all there, and writes go on through the other one
    created = c2.describe_inference_scheduler(InferenceSchedulerName=names[1])
    again = create_schedulers(c2, "rep", 2)  # same ClientTokens: the creations made through r1 are returned
    assert again == names
    assert c2.list_inference_schedulers(InferenceSchedulerNameBeginsWith="rep-")["InferenceSchedulerSummaries"][1][
        "InferenceSchedulerArn"] == created["InferenceSchedulerArn"]
    # every scheduler has run a window through the surviving replica's state before they are stopped
    wait_for(lambda: all(any(e["Status"] == "SUCCESS" for e in all_executions(c2, n)) for n in names), timeout=60)
    stop_all(c2, names)
    wait_for(lambda: settled(c2, names), timeout=60)
    check_windows(c2, names)


def test_workers_and_replicas_recover_from_a_database_restart(fleet):
    client, procs, pg = fleet["client"], fleet["procs"], fleet["pg"]
    procs.worker()
    _r, url = procs.replica()
    remote = make_client(url)
    names = create_schedulers(client, "pgr", 3)
    wait_for(lambda: all(any(e["Status"] == "SUCCESS" for e in all_executions(client, n)) for n in names), timeout=30)
    pg.restart()
    restarted_at = fleet["clock"].now()
    # the replicas answer again (the pool replaces dead connections), in this process and in the other one
    for c in (client, remote):
        wait_for(lambda c=c: _answers(c, names[0]), timeout=30, interval=0.2)

    def executed_after_restart():
        return all(any(e["Status"] == "SUCCESS" and e["DataStartTime"].timestamp() > restarted_at
                       for e in all_executions(remote, n)) for n in names)

    # and the same worker process keeps dispatching and executing new windows
    wait_for(executed_after_restart, timeout=60, interval=0.2)
    stop_all(remote, names)
    wait_for(lambda: settled(remote, names), timeout=60)
    check_windows(remote, names)
    assert all(p.poll() is None for p in procs.procs[-2:])  # neither process had to restart


def test_a_task_that_fails_for_good_leaves_its_execution_failed_not_in_progress(fleet, monkeypatch):
    """What escapes a task body (a bug; the database gone longer than the retries) is retried, and after the
    last attempt the lease sweep records the execution FAILED: nothing stays IN_PROGRESS for ever. A bug on
    demand is a fault no real peer produces, so the body is replaced by one that raises."""
    from agent.lookout_local import fleet as fleet_module

    procs = fleet["procs"]
    for proc in procs.procs:  # the other tests' workers would run the task without the bug
        if proc.poll() is None:
            procs.stop(proc)
    monkeypatch.setattr(fleet_module, "RETRY", {"max_attempts": 1, "wait": 0})

    def broken(self, scheduler, start, end):
        raise RuntimeError("a bug in the task body")

    monkeypatch.setattr(fleet_module.Tasks, "_run_execution", broken)
    worker = LocalLookoutService(fleet["state_dir"], fleet["svc"].store_url, clock=fleet["clock"], db_url=fleet["db"],
                                 lease_secs=1.0).start()
    client = fleet["client"]
    try:
        names = create_schedulers(client, "bug", 1)
        wait_for(lambda: any(e["Status"] == "FAILED" for e in all_executions(client, names[0])), timeout=30)
        stop_all(client, names)
    finally:
        worker.stop()
    failed = [e for e in all_executions(client, names[0]) if e["Status"] == "FAILED"]
    assert failed and all("the task failed 2 times" in e["FailedReason"] for e in failed), failed
    rows = jobs(fleet["db"], "SELECT status, attempts FROM procrastinate_jobs WHERE task_name='l4e.run_execution' "
                             "AND args->>'scheduler' = %s AND status = 'failed'", (names[0],))
    assert rows and all(attempts == 2 for _, attempts in rows), rows  # the first run and its one retry


def test_workers_on_hosts_without_a_shared_folder(fleet, tmp_path):
    """The dataset one host ingested trains on a second host, and the model it trained scores on a third:
    each worker has its own state folder (only the scaled clock's anchor is copied: a demo-clock detail)."""
    client, db = fleet["client"], fleet["db"]
    procs = fleet["procs"]
    for proc in procs.procs:
        if proc.poll() is None:
            procs.stop(proc)
    hosts = []
    for host in ("b", "c"):
        state = tmp_path / host / "state"
        state.mkdir(parents=True)
        (state / "clock.json").write_bytes((fleet["state_dir"] / "clock.json").read_bytes())
        hosts.append((state, Fleet(db, state, fleet["svc"].store_url, CLOCK_START, SPEED, LEASE)))
    (b_state, b), (c_state, c) = hosts
    try:
        b.worker()
        assert train(client, "fm-b", "fleet-data")["Status"] == "SUCCESS"
        fetched = [p.name for p in (b_state / "datasets").iterdir()]
        assert len(fetched) == 1 and fetched[0].startswith("fleet-data@"), fetched  # fetched from the database
        b.stop(b.procs[0])
        c.worker()
        names = create_schedulers(client, "hosts", 1, model="fm-b")
        wait_for(lambda: any(e["Status"] == "SUCCESS" for e in all_executions(client, names[0])), timeout=30)
        stop_all(client, names)
        wait_for(lambda: settled(client, names), timeout=30)
    finally:
        b.close()
        c.close()
    fetched = [p.name for p in (c_state / "models").iterdir()]
    # fm-b, fetched from the database (a scheduler of an earlier test still running on fm may add fm@…)
    assert [n for n in fetched if n.startswith("fm-b")] == [n for n in fetched if n.startswith("fm-b@")] != [], fetched
    assert not (c_state / "datasets").exists()  # inference needs the model only
    done = [e for e in all_executions(client, names[0]) if e["Status"] == "SUCCESS"]
    assert all(fleet["store"].get(e["CustomerResultObject"]["Key"]) for e in done)
    client.delete_inference_scheduler(InferenceSchedulerName=names[0])
    client.delete_model(ModelName="fm-b")
    assert jobs(db, "SELECT count(*) FROM lookout_artifacts WHERE kind='model' AND name='fm-b'") == [(0,)]


def _answers(client, name: str) -> bool:
    try:
        client.describe_inference_scheduler(InferenceSchedulerName=name)
        return True
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        return False


def test_worker_refuses_to_start_without_a_database(tmp_path, caplog):
    from agent.cli import main

    assert main(["lookout", "worker", "--state-dir", str(tmp_path)]) == 78
    assert "--db postgresql://" in caplog.text
    assert main(["lookout", "worker", "--db", "mysql://x@y/z", "--state-dir", str(tmp_path)]) == 78
    assert "allowed: postgresql://" in caplog.text
    assert main(["lookout", "serve", "--db", "sqlite:///x", "--state-dir", str(tmp_path)]) == 78
    db = ["--db", "postgresql://nobody@127.0.0.1:1/x", "--state-dir", str(tmp_path)]
    assert main(["lookout", "worker", *db, "--lease-secs", "0"]) == 78
    assert "--lease-secs 0.0: must be > 0" in caplog.text
    assert main(["lookout", "worker", *db, "--tick-secs", "-1"]) == 78
    assert main(["lookout", "worker", *db, "--keep-executions-days", "0"]) == 78
    assert "--keep-executions-days 0.0: must be > 0 days" in caplog.text
    assert main(["lookout", "worker", *db]) == 1  # valid options, no database there: not a config error
    assert "cannot prepare the database" in caplog.text
    caplog.clear()
    assert main(["lookout", "serve", *db, "--port", "0"]) == 1  # the service too, with the reason and no traceback
    assert "cannot prepare the database: OperationalError" in caplog.text and "Traceback" not in caplog.text

