"""Fleet scaling on a small machine (not run by CI): 1, 2 and 4 ``lookout worker`` processes, each confined to
a fixed CPU quota by a cgroup, against one PostgreSQL; then the same with 2 API replicas serving clients.

    .venv/bin/python tests/bench/bench_fleet_scaling.py [--cpus 0.2] [--workers 1,2,4] [--per-worker 30]
        [--sensors 300] [--modes direct,replicas,dispatch] [--dispatch-schedulers 1000] [--size-sample 50000]

Why confined: on a machine with few cores shared with other jobs, unconfined workers fight the database and
each other for the same cores, and a second worker shows no throughput whatever the code does. Each worker
gets its own group with ``--cpus`` CPUs (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, whichever the
machine lets us use; see cpu_quota.py), so 4 workers need 4 × ``--cpus`` and the ratio measures the code,
not the machine. PostgreSQL (and the API replicas) run in a group with no quota and the same high weight:
protected, not limited, so they are not the bottleneck measured. The benchmark says which mechanism it used,
and exits 2 without a ratio when it cannot confine (not root, no cpu controller).

One run per worker count, with fresh worker processes:

1. warm-up: 2 × w schedulers with one window due each (every worker loads the model and fills its pools);
2. the measured backlog: ``--per-worker`` × w schedulers (one model over ``--sensors`` sensors in 3
   components, each scheduler with its own input prefix and data) with one PT5M window due each, as in a
   fleet where every scheduler's window ends at the same instant; the scaled clock runs so slowly that no
   other window comes due during the run;
3. throughput = executions finished per second between the 10th and 90th percentiles of the finish times
   (so neither the dispatch of the first nor the last worker's tail counts), compared with the 1-worker run
   of the same command: ratio = throughput(w) / throughput(1). Targets: ≥ 1.8 at 2, ≥ 3.4 at 4.

Also printed: how much of its quota each worker used (CPU seconds / wall seconds / quota: near 1.0 means
the quota was the limit, as intended; much less means the work waited on something else, the database or a
lock), the throttled periods, PostgreSQL's CPU per execution, transactions per execution, and the
correctness checks (every execution finished exactly once: procrastinate attempts beyond one, executions
recorded twice, executions missing). In ``replicas`` mode the schedulers are created through 2 ``lookout
serve --workers 0`` processes, and a client thread calls DescribeInferenceScheduler and
ListInferenceExecutions on them alternately (``--api-rate`` calls/s) during the run. In ``dispatch`` mode,
1, 2 and 4 dispatch-only processes (dispatch_only.py, confined like the workers) turn ``--dispatch-schedulers``
schedulers due at once into executions and queued tasks: schedulers per second and its ratio, CPU per
scheduler. Last, the bytes per row of the tables that grow with executions (``--size-sample`` copies of real
rows), for sizing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lookout_fleet import BUCKET, HISTORY_START, F, Plant, components, cpu_secs, db_rows, history  # noqa: E402
from cpu_quota import CpuGroups  # noqa: E402

from agent.core.clock import ScaledClock  # noqa: E402
from agent.lookout_local import LocalLookoutService  # noqa: E402
from agent.pipeline.store import FileStore  # noqa: E402
from tests.lookout_local.conftest import ingest, make_client, train  # noqa: E402
from tests.lookout_local.pg import PgServer  # noqa: E402
from tests.lookout_local.procs import Fleet  # noqa: E402

SIM_START = pd.Timestamp("2026-01-03T00:02:30Z").timestamp()  # mid-period: the next window ends 150 sim s later
SPEED = 0.01  # sim seconds per wall second: 150 sim s = 4 wall hours, so nothing else comes due in a run
TARGETS = {2: 1.8, 4: 3.4}


def pg_pids(pg: PgServer) -> list[int]:
    """The postmaster and its children (backends, background processes)."""
    master = int((pg.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def pg_cpu(pg: PgServer) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster with its reaped backends, plus the live ones."""
    pids = pg_pids(pg)
    return cpu_secs(pids[0], children=True) + sum(cpu_secs(p) for p in pids[1:])


def create(clients: list, names: list[str]) -> None:
    for i, name in enumerate(names):
        clients[i % len(clients)].create_inference_scheduler(
            ModelName="fleet-model", InferenceSchedulerName=name, DataUploadFrequency="PT5M",
            DataDelayOffsetInMinutes=0,
            DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": f"in/{name}/"}},
            DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": f"out/{name}/"}},
            RoleArn="arn:aws:iam::123456789012:role/l4e")


def release(db: str, pattern: str, last_end: int) -> None:
    """Make the matching schedulers RUNNING with the window ending after ``last_end`` due now."""
    db_rows(db, "UPDATE lookout_resources SET doc = jsonb_set(jsonb_set(doc::jsonb, '{_last_end}', "
                "to_jsonb(%s::int)), '{Status}', '\"RUNNING\"')::text, due_at = 0 "
                "WHERE kind = 'inference-scheduler' AND name LIKE %s", (last_end, pattern))


def finish_times(db: str, pattern: str) -> list[float]:
    rows = db_rows(db, "SELECT doc FROM lookout_executions WHERE scheduler LIKE %s AND status <> 'IN_PROGRESS'",
                   (pattern,))
    return sorted(json.loads(r[0])["_finished_at"] for r in rows)


def wait_finished(db: str, pattern: str, count: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while len(done := finish_times(db, pattern)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{pattern}: {len(done)}/{count} executions finished within {timeout:.0f}s")
        time.sleep(0.1)
    return done


TABLES = ("lookout_executions", "lookout_resources", "procrastinate_jobs", "procrastinate_events",
          "procrastinate_workers")


def row_ops(db: str) -> dict[str, tuple[int, int, int]]:
    """(inserted, updated, deleted) rows so far of the tables an execution touches."""
    rows = db_rows(db, "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
                       "WHERE relname = ANY(%s)", (list(TABLES),))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


class ApiLoad:
    """Clients calling the API replicas alternately at ``rate`` calls/s while a run lasts."""

    def __init__(self, clients: list, names: list[str], rate: float) -> None:
        self.clients, self.names, self.rate = clients, names, rate
        self.calls = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ApiLoad:
        if self.rate > 0 and self.clients:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(3)
        while not self._stop.wait(1.0 / self.rate):
            client = self.clients[self.calls % len(self.clients)]
            name = rng.choice(self.names)
            try:
                if self.calls % 2:
                    client.list_inference_executions(InferenceSchedulerName=name, MaxResults=10)
                else:
                    client.describe_inference_scheduler(InferenceSchedulerName=name)
            except Exception:
                self.errors += 1
            self.calls += 1


def run(w: int, tag: str, args, ctx: dict) -> dict:
    db, fleet, plant, groups, clients = ctx["db"], ctx["fleet"], ctx["plant"], ctx["groups"], ctx["clients"]
    grid = int(ctx["clock"].now() // F) * F
    warm = [f"{tag}{w}-warm-{i:03d}" for i in range(2 * w)]
    names = [f"{tag}{w}-{i:05d}" for i in range(args.per_worker * w)]
    create(clients, warm + names)
    for start in range(grid - 2 * F, grid + F, F):  # the due window [grid - F, grid] and its neighbours
        plant.write(warm + names, start)
    release(db, f"{tag}{w}-warm-%", grid - F)
    procs = []
    starters = [threading.Thread(target=lambda: procs.append(fleet.worker())) for _ in range(w)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    cgs = []
    for i, proc in enumerate(procs):
        group = groups.group(f"{tag}{w}-worker{i}", args.cpus)
        group.add(proc.pid)
        cgs.append(group)
    wait_finished(db, f"{tag}{w}-warm-%", len(warm), args.timeout)
    xacts = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    time.sleep(1.0)  # PostgreSQL publishes its statistics about once a second
    # write transactions are counted exactly by the transaction ids they take (each probe takes one too);
    # all transactions by PostgreSQL's statistics, which backends publish up to 10 s late when idle
    xid = "SELECT txid_current()"
    idle0, idle_t0 = db_rows(db, xid)[0][0], time.monotonic()
    time.sleep(args.idle)  # the idle workers' own writes (heartbeats)
    xid0 = db_rows(db, xid)[0][0]
    idle_rate = (xid0 - idle0 - 1) / (time.monotonic() - idle_t0)
    xact0 = db_rows(db, xacts)[0][0]
    ops0 = row_ops(db)
    throttled0 = [g.throttled()[0] for g in cgs]
    cpu0, pg0, t0 = [cpu_secs(p.pid) for p in procs], pg_cpu(ctx["pg"]), time.time()
    pattern = f"{tag}{w}-0%"
    with ApiLoad(ctx["api_clients"], names, args.api_rate) as load:
        release(db, pattern, grid - F)
        done = wait_finished(db, pattern, len(names), args.timeout)
    cpu1, pg1, t1 = [cpu_secs(p.pid) for p in procs], pg_cpu(ctx["pg"]), time.time()
    xid1 = db_rows(db, xid)[0][0]
    throttled = [g.throttled()[0] - t for g, t in zip(cgs, throttled0, strict=True)]
    time.sleep(1.0)
    xact1 = db_rows(db, xacts)[0][0]
    ops1 = row_ops(db)
    for proc in procs:
        fleet.stop(proc)
    for group in cgs:
        groups.release(group)
    db_rows(db, "UPDATE lookout_resources SET due_at = NULL WHERE kind = 'inference-scheduler' AND name LIKE %s",
            (f"{tag}{w}-%",))  # these schedulers are done with: nothing of theirs may come due in a later run
    n = len(done)
    lo, hi = int(0.1 * n), int(np.ceil(0.9 * n)) - 1
    throughput = (hi - lo) / (done[hi] - done[lo])
    extra_runs = db_rows(db, "SELECT coalesce(sum(attempts - 1), 0), count(*) FROM procrastinate_jobs WHERE "
                             "task_name = 'l4e.run_execution' AND args->>'scheduler' LIKE %s", (pattern,))[0]
    recorded = db_rows(db, "SELECT count(*), count(DISTINCT (scheduler, data_start)), "
                           "count(*) FILTER (WHERE status = 'FAILED') FROM lookout_executions WHERE scheduler LIKE %s",
                       (pattern,))[0]
    wall = t1 - t0
    return {"workers": w, "throughput": throughput, "n": n, "wall": wall,
            "quota_use": [(c1 - c0) / wall / args.cpus for c0, c1 in zip(cpu0, cpu1, strict=True)],
            "throttled": throttled, "worker_ms": 1000 * (sum(cpu1) - sum(cpu0)) / n, "pg_ms": 1000 * (pg1 - pg0) / n,
            "xacts": (xact1 - xact0) / n, "idle_writes": idle_rate / w, "writes": (xid1 - xid0 - 1) / n,
            "rows": {t: tuple((b - a) / n for a, b in zip(ops0.get(t, (0, 0, 0)), ops1.get(t, (0, 0, 0)), strict=True))
                     for t in TABLES},
            "extra_runs": int(extra_runs[0]), "jobs": int(extra_runs[1]),
            "twice": recorded[0] - recorded[1], "missing": len(names) - recorded[1], "failed": recorded[2],
            "api_calls": load.calls, "api_errors": load.errors}


def spawn_dispatcher(ctx: dict, log_path: Path) -> subprocess.Popen:
    """A dispatch-only process (dispatch_only.py) on the fleet's database, state folder, store and clock."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dispatch_only.py")), ctx["db"],
                                 str(ctx["state_dir"]), ctx["store_url"],
                                 pd.Timestamp(SIM_START, unit="s").isoformat(), str(SPEED)],
                                stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    with selectors.DefaultSelector() as sel:  # bounded: 60 s for the ready line
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline().decode() if sel.select(timeout=60.0) else ""
    if not line.startswith("dispatcher ready"):
        proc.kill()
        raise SystemExit(f"dispatch-only process did not start; see {log_path}")
    return proc


def dispatch_run(k: int, names: list[str], args, ctx: dict) -> dict:
    """k dispatch-only processes, each confined like a worker, turn len(names) due schedulers into executions
    and queued tasks; returns schedulers dispatched per second and CPU per scheduler. The executions and their
    tasks are deleted afterwards (nobody runs them). The processes are stopped whatever happens."""
    grid = int(ctx["clock"].now() // F) * F
    procs: list[subprocess.Popen] = []
    try:
        for i in range(k):
            procs.append(spawn_dispatcher(ctx, ctx["state_dir"].parent / f"dispatch-{k}-{i}.log"))
        return dispatched(k, names, procs, args, ctx, grid)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            proc.stdout.close()


def dispatched(k: int, names: list[str], procs: list, args, ctx: dict, grid: int) -> dict:
    """The measurement of dispatch_run over its running processes."""
    db, groups = ctx["db"], ctx["groups"]
    cgs = []
    for i, proc in enumerate(procs):
        cgs.append(groups.group(f"dispatch{k}-{i}", args.cpus))
        cgs[-1].add(proc.pid)
    time.sleep(1.0)
    cpu0, pg0 = [cpu_secs(p.pid) for p in procs], pg_cpu(ctx["pg"])
    t0 = time.time()
    release(db, "x%", grid - F)
    deadline = time.monotonic() + args.timeout
    count = "SELECT count(*) FROM lookout_executions WHERE scheduler LIKE 'x%%'"
    while db_rows(db, count)[0][0] < len(names):
        if time.monotonic() > deadline:
            raise SystemExit(f"dispatch of {len(names)} schedulers not done within {args.timeout:.0f}s")
        time.sleep(0.05)
    wall = time.time() - t0
    cpu1, pg1 = [cpu_secs(p.pid) for p in procs], pg_cpu(ctx["pg"])
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    for group in cgs:
        groups.release(group)
    jobs = db_rows(db, "SELECT count(*), count(DISTINCT args->>'scheduler') FROM procrastinate_jobs "
                       "WHERE args->>'scheduler' LIKE 'x%%'")[0]
    db_rows(db, "DELETE FROM procrastinate_jobs WHERE args->>'scheduler' LIKE 'x%%'")
    db_rows(db, "DELETE FROM lookout_executions WHERE scheduler LIKE 'x%%'")
    db_rows(db, "UPDATE lookout_resources SET due_at = NULL WHERE kind = 'inference-scheduler' AND name LIKE 'x%%'")
    n = len(names)
    return {"k": k, "rate": n / wall, "cpu_ms": 1000 * (sum(cpu1) - sum(cpu0)) / n,
            "pg_ms": 1000 * (pg1 - pg0) / n, "quota_use": [(c1 - c0) / wall / args.cpus
                                                           for c0, c1 in zip(cpu0, cpu1, strict=True)],
            "tasks": jobs[0], "distinct": jobs[1]}


def dispatch_report(results: list[dict], n: int) -> None:
    base = results[0]["rate"] / results[0]["k"]
    print(f"\ndispatch only ({n} schedulers due at once, each dispatcher confined like a worker):")
    print(f"{'dispatchers':>11} {'sched/s':>8} {'ratio':>6} {'quota used':>19} {'CPU ms/sched':>12} "
          f"{'PG ms/sched':>11} {'tasks':>6}")
    for r in results:
        use = "/".join(f"{u:.2f}" for u in r["quota_use"])
        print(f"{r['k']:>11} {r['rate']:>8.1f} {r['rate'] / base:>6.2f} {use:>19} {r['cpu_ms']:>12.2f} "
              f"{r['pg_ms']:>11.2f} {r['tasks']:>4}/{r['distinct']}", flush=True)


def report(mode: str, results: list[dict]) -> bool:
    """Print the mode's table; True when every target is met and every check is clean."""
    base = results[0]["throughput"] / results[0]["workers"]
    ok = True
    print(f"\n{mode}:")
    print(f"{'workers':>7} {'exec/s':>7} {'ratio':>6} {'target':>6} {'execs':>5} {'quota used':>19} "
          f"{'throttled':>15} {'wkr ms/ex':>9} {'PG ms/ex':>8} {'xact/ex':>7} {'dup':>3} {'lost':>4} {'failed':>6} "
          f"{'API calls/err':>13}")
    for r in results:
        w = r["workers"]
        ratio = r["throughput"] / base
        target = TARGETS.get(w)
        clean = r["extra_runs"] == 0 and r["twice"] == 0 and r["missing"] == 0 and r["failed"] == 0 \
            and r["jobs"] == r["n"] and r["api_errors"] == 0
        ok = ok and clean and (target is None or ratio >= target)
        use = "/".join(f"{u:.2f}" for u in r["quota_use"])
        thr = "/".join(str(t) for t in r["throttled"])
        print(f"{w:>7} {r['throughput']:>7.2f} {ratio:>6.2f} {target or '':>6} {r['n']:>5} {use:>19} {thr:>15} "
              f"{r['worker_ms']:>9.0f} {r['pg_ms']:>8.1f} {r['xacts']:>7.1f} {r['extra_runs'] + r['twice']:>3} "
              f"{r['missing']:>4} {r['failed']:>6} {r['api_calls']:>7}/{r['api_errors']}", flush=True)
    print("database per execution: write transactions (exact), rows inserted/updated/deleted:")
    for r in results:
        rows = "  ".join(f"{t.removeprefix('procrastinate_').removeprefix('lookout_')} "
                         + "/".join(f"{x:.1f}" for x in v) for t, v in r["rows"].items())
        print(f"{r['workers']:>7} workers: {r['writes']:.1f} write xact/exec (idle: {r['idle_writes']:.2f}/s per "
              f"worker); {rows}", flush=True)
    return ok


def sizes(db: str, sample: int) -> None:
    """Bytes per row of the tables that grow with executions, on ``sample`` copies of a real finished
    execution row inserted window after window (the order a fleet writes them) and ``sample`` / 2 copies of
    a finished task with its events, after VACUUM ANALYZE."""
    per = 1000
    windows = max(1, sample // per)
    db_rows(db, "CREATE TABLE size_probe (LIKE lookout_executions INCLUDING ALL)")
    db_rows(db, "INSERT INTO size_probe SELECT 'plant-' || lpad(s::text, 5, '0') || '-scheduler', "
                "e.data_start + 300 * k, e.status, e.doc FROM (SELECT * FROM lookout_executions WHERE "
                "status = 'SUCCESS' LIMIT 1) e, generate_series(1, %s) k, generate_series(1, %s) s ORDER BY k, s",
            (windows, per))
    # procrastinate keeps a finished task (and its events) KEEP_JOBS_HOURS: copies of a real one and its events
    db_rows(db, "WITH t AS (SELECT * FROM procrastinate_jobs WHERE status = 'succeeded' AND task_name = "
                "'l4e.run_execution' ORDER BY id LIMIT 1), copies AS (INSERT INTO procrastinate_jobs (queue_name, "
                "task_name, priority, lock, queueing_lock, args, status, scheduled_at, attempts) SELECT t.queue_name, "
                "t.task_name, t.priority, t.lock, t.queueing_lock, jsonb_set(t.args, '{start}', to_jsonb(k)), "
                "t.status, t.scheduled_at, t.attempts FROM t, generate_series(1, %s) k RETURNING id) "
                "INSERT INTO procrastinate_events (job_id, type, at) SELECT c.id, e.type, e.at FROM copies c, "
                "procrastinate_events e WHERE e.job_id = (SELECT id FROM t)", (windows * per // 2,))
    db_rows(db, "VACUUM ANALYZE size_probe")
    db_rows(db, "VACUUM ANALYZE procrastinate_jobs")
    db_rows(db, "VACUUM ANALYZE procrastinate_events")
    for table in ("size_probe", "procrastinate_jobs", "procrastinate_events"):
        n, heap, index, doc = db_rows(db, f"SELECT (SELECT count(*) FROM {table}), pg_table_size('{table}'), "
                                          f"pg_indexes_size('{table}'), "
                                          + ("(SELECT avg(pg_column_size(doc)) FROM size_probe)"
                                             if table == "size_probe" else "0"))[0]
        label = "lookout_executions (copies)" if table == "size_probe" else table
        print(f"{label}: {n} rows, table {heap / n:.0f} B/row, indexes {index / n:.0f} B/row"
              + (f", doc {float(doc):.0f} B stored" if doc else ""), flush=True)
    db_rows(db, "DROP TABLE size_probe")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=float, default=0.2, help="CPU quota of each worker (CPUs)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--per-worker", type=int, default=30, help="measured schedulers (one window each) per worker")
    parser.add_argument("--sensors", type=int, default=300)
    parser.add_argument("--modes", default="direct,replicas,dispatch")
    parser.add_argument("--api-rate", type=float, default=10.0, help="client calls/s on the replicas during a run")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each wait, wall seconds")
    parser.add_argument("--dispatch-schedulers", type=int, default=1000,
                        help="schedulers due at once in the dispatch mode")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle workers measured before each run")
    parser.add_argument("--size-sample", type=int, default=50_000,
                        help="execution rows copied from the run's to measure table and index bytes per row")
    args = parser.parse_args()
    workers = [int(x) for x in args.workers.split(",")]
    modes = args.modes.split(",")
    groups, how = CpuGroups.open("l4e-bench")
    if groups is None:
        print(f"cannot confine the workers to a CPU quota ({how}): no ratio printed", flush=True)
        return 2
    print(f"confinement: {how}; each worker {args.cpus} CPU; PostgreSQL and the API replicas unlimited "
          f"(same parent weight); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    pg = PgServer()
    pg.start()
    service = groups.group("postgresql", None)
    for pid in pg_pids(pg):  # backends forked later inherit the postmaster's group
        service.add(pid)
    fleet = None
    ok = True
    try:
        db = pg.new_database()
        state_dir = tmp / "state"
        store, store_url = FileStore(tmp / "store" / BUCKET), (tmp / "store").as_uri() + "/"
        comps = components(args.sensors)
        values = history(2 * 1440, comps)
        stamps = HISTORY_START + pd.to_timedelta(np.arange(2 * 1440), unit="min")
        for comp, sensors in comps.items():
            frame = pd.DataFrame(values[comp], columns=sensors)
            frame.insert(0, "Timestamp", stamps)
            store.put(f"history/{comp}/part0.csv",
                      frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%f", float_format="%.4f").encode())
        schema = json.dumps({"Components": [
            {"ComponentName": c, "Columns": [{"Name": "Timestamp", "Type": "DATETIME"}]
             + [{"Name": s, "Type": "DOUBLE"} for s in sensors]} for c, sensors in comps.items()]})
        clock = ScaledClock.persistent(SIM_START, SPEED, state_dir / "clock.json")
        svc = LocalLookoutService(state_dir, store_url, clock=clock, db_url=db, embedded_worker=False).start()
        client = make_client(svc.endpoint_url)
        fleet = Fleet(db, state_dir, store_url, pd.Timestamp(SIM_START, unit="s").isoformat(), SPEED, 30.0)
        trainer = fleet.worker()
        client.create_dataset(DatasetName="fleet", DatasetSchema={"InlineDataSchema": schema})
        t0 = time.monotonic()
        assert ingest(client, "fleet")["Status"] == "SUCCESS"
        model = train(client, "fleet-model", "fleet")
        assert model["Status"] == "SUCCESS", model
        fleet.stop(trainer)
        print(f"setup: {args.sensors} sensors, ingest + train {time.monotonic() - t0:.1f}s; PostgreSQL "
              f"{pg.bin.parent.name}", flush=True)
        plant = Plant(store, comps, values)
        ctx = {"db": db, "fleet": fleet, "plant": plant, "groups": groups, "clock": clock, "pg": pg}
        ctx.update(state_dir=state_dir, store_url=store_url)
        for mode in modes:
            if mode == "dispatch":
                names = [f"x{i:05d}" for i in range(args.dispatch_schedulers)]
                create([client], names)
                dispatch_report([dispatch_run(k, names, args, ctx) for k in workers], len(names))
                continue
            if mode == "replicas":
                api = groups.group("api", None)
                replicas = [fleet.replica() for _ in range(2)]
                for proc, _url in replicas:
                    api.add(proc.pid)
                ctx["clients"] = ctx["api_clients"] = [make_client(url) for _proc, url in replicas]
            else:
                ctx["clients"], ctx["api_clients"] = [client], []
            results = [run(w, mode[0], args, ctx) for w in workers]
            ok = report(mode, results) and ok
            if mode == "replicas":
                for proc, _url in replicas:
                    fleet.stop(proc)
                groups.release(api)
        svc.stop()
        if args.size_sample:
            print()
            sizes(db, args.size_sample)
        print("\nall targets met, every execution finished exactly once" if ok else "\nSHORT of a target or a check "
              "failed (see above)", flush=True)
        return 0 if ok else 1
    finally:
        if fleet is not None:
            fleet.close()
        pg.close()
        groups.close()


if __name__ == "__main__":
    sys.exit(main())
