"""Benchmark of the local L4E service's fleet mode (not run by CI): PostgreSQL + procrastinate workers.

    .venv/bin/python tests/bench/bench_lookout_fleet.py [--schedulers 2000] [--workers 1,2,4] [--backlog 3]
        [--steady 2] [--speed 15] [--sensors 300] [--store folder|s3]

N schedulers × PT5M (delay 0), one model over ``--sensors`` sensors in 3 components, each scheduler with its
own input prefix and its own data (so no parse cache is shared), on a scaled clock, over a folder store or
moto's S3 server. For each worker count (worker processes: ``python -m agent.lookout_local worker``):

1. throughput: the N schedulers are created with ``--backlog`` windows already due (their ``_last_end`` is
   moved back in the database), the workers start, dispatch and drain the backlog: executions per second
   from the moment every worker is ready to the last backlog execution recorded;
2. lag: then the plant keeps writing one window per scheduler per upload period (N × speed / 300
   executions/s offered); for ``--steady`` windows due after the drain, the lag from end + delay to the
   results written, in wall seconds (what a fleet on the real clock sees), p50 and p99;
3. duplicates: task runs beyond one per execution (procrastinate attempts) plus executions recorded twice
   for a window (must be 0; the primary key forbids the second).

Scaling efficiency = throughput(w) / (w × throughput(1)). A PostgreSQL server is started in a temporary
folder (Debian's binaries), as the tests do. The plant's writes and the API run in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.core.clock import ScaledClock  # noqa: E402
from agent.lookout_local import LocalLookoutService  # noqa: E402
from agent.pipeline.store import FileStore, S3Store  # noqa: E402
from agent.pipeline.windows import format_name_timestamp  # noqa: E402
from tests.lookout_local.conftest import ingest, make_client, train  # noqa: E402
from tests.lookout_local.pg import PgServer  # noqa: E402
from tests.lookout_local.procs import Fleet  # noqa: E402

F = 300
BUCKET = "plant-data"
SIM_START = pd.Timestamp("2026-01-03T00:00:00Z").timestamp()
HISTORY_START = pd.Timestamp("2026-01-01T00:00:00")


def components(sensors: int) -> dict[str, list[str]]:
    per = sensors // 3
    return {f"c{c}": [f"s{c}_{i:03d}" for i in range(per)] for c in range(3)}


def history(minutes: int, comps: dict[str, list[str]], seed: int = 11) -> dict[str, np.ndarray]:
    """Correlated 1-minute values per component (rows × sensors): 3 latent factors + noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    factors = np.stack([np.sin(2 * np.pi * t / 1440), np.cos(2 * np.pi * t / 360), rng.normal(0, 0.3, minutes)])
    out = {}
    for comp, sensors in comps.items():
        n = len(sensors)
        values = rng.uniform(10, 100, (n, 1)) + 5 * rng.normal(size=(n, 3)) @ factors + rng.normal(0, 0.3, (n, minutes))
        out[comp] = values.T
    return out


class Plant:
    """Writes each scheduler's files the way the agent does: ``<prefix><component>_<yyyyMMddHHmmss>.csv`` with
    rows for [start, end] at PT1M. Row values come from pre-formatted history lines, offset per scheduler."""

    def __init__(self, store, comps: dict[str, list[str]], values: dict[str, np.ndarray]) -> None:
        self.store = store
        self.comps = comps
        self.lines = {c: [",".join(f"{v:.4f}" for v in row) for row in values[c]] for c in comps}
        self.headers = {c: "Timestamp," + ",".join(s) for c, s in comps.items()}
        self.rows = len(next(iter(self.lines.values())))

    def write(self, names: list[str], start: int) -> None:
        for i, name in enumerate(names):
            for comp in self.comps:
                body = [self.headers[comp]]
                for k in range(F // 60 + 1):
                    ts = pd.Timestamp(start + 60 * k, unit="s").strftime("%Y-%m-%dT%H:%M:%S.%f")
                    body.append(ts + "," + self.lines[comp][(i * 37 + start // 60 + k) % self.rows])
                key = f"in/{name}/{comp}_{format_name_timestamp(start, 'yyyyMMddHHmmss', 0)}.csv"
                self.store.put(key, ("\n".join(body) + "\n").encode())


def cpu_secs(pid: int, children: bool = False) -> float:
    """utime + stime of a process (+ its reaped children's with ``children``), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_cpu(pg: PgServer) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster with its reaped backends, plus the live ones."""
    master = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = cpu_secs(master, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == master:
            total += cpu_secs(int(stat.parent.name))
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def db_rows(db: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(db, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def run(w: int, args, ctx: dict) -> dict:
    client, clock, db, plant, fleet = ctx["client"], ctx["clock"], ctx["db"], ctx["plant"], ctx["fleet"]
    names = [f"w{w}-{i:05d}" for i in range(args.schedulers)]
    for name in names:
        client.create_inference_scheduler(
            ModelName="fleet-model", InferenceSchedulerName=name, DataUploadFrequency="PT5M",
            DataDelayOffsetInMinutes=0,
            DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": f"in/{name}/"}},
            DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": f"out/{name}/"}},
            RoleArn="arn:aws:iam::123456789012:role/l4e")
    grid = int(clock.now() // F) * F
    first = grid - args.backlog * F
    # the backlog: every scheduler has ``backlog`` windows due when the workers start
    db_rows(db, "UPDATE lookout_resources SET doc = jsonb_set(doc::jsonb, '{_last_end}', to_jsonb(%s::int))::text, "
                "due_at = 0 WHERE kind = 'inference-scheduler' AND name LIKE %s", (first, f"w{w}-%"))
    for start in range(first, grid + 2 * F, F):
        plant.write(names, start)
    stop = threading.Event()

    def keep_writing():
        written = grid + 2 * F
        while not stop.is_set():
            while written <= clock.now() + F:  # the next window's file exists before the window ends
                plant.write(names, written)
                written += F
            stop.wait(0.2)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    procs = []
    threads = [threading.Thread(target=lambda: procs.append(fleet.worker())) for _ in range(w)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ready = time.time()
    cpu0 = sum(cpu_secs(p.pid) for p in procs), pg_cpu(ctx["pg"])
    xacts = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    xact0 = db_rows(db, xacts)[0][0]
    backlog_count = args.schedulers * args.backlog
    pattern = f"w{w}-%"

    def finished(upto_end: float) -> list[float]:
        rows = db_rows(db, "SELECT doc FROM lookout_executions WHERE scheduler LIKE %s AND status <> 'IN_PROGRESS' "
                           "AND data_start + 300 <= %s", (pattern, upto_end))
        return [json.loads(r[0])["_finished_at"] for r in rows]

    deadline = time.monotonic() + args.timeout
    while len(done := finished(grid)) < backlog_count:
        if time.monotonic() > deadline:
            raise SystemExit(f"backlog not drained within {args.timeout}s ({len(done)}/{backlog_count})")
        time.sleep(0.2)
    drained = max(done)
    cpu1 = sum(cpu_secs(p.pid) for p in procs), pg_cpu(ctx["pg"])
    time.sleep(1.0)  # PostgreSQL publishes its statistics about once a second
    xact1 = db_rows(db, xacts)[0][0]
    executed = db_rows(db, "SELECT count(*) FROM lookout_executions WHERE scheduler LIKE %s AND status <> "
                           "'IN_PROGRESS'", (pattern,))[0][0]
    throughput = backlog_count / (drained - ready)
    # steady state: the windows due (end + delay) after the drain, at the offered rate
    first_due = (int(clock_sim(clock, drained) // F) + 1) * F
    last_due = first_due + (args.steady - 1) * F
    while True:
        rows = db_rows(db, "SELECT data_start, status, doc FROM lookout_executions WHERE scheduler LIKE %s AND "
                           "data_start + 300 BETWEEN %s AND %s", (pattern, first_due, last_due))
        if len(rows) == args.schedulers * args.steady and all(r[1] != "IN_PROGRESS" for r in rows):
            break
        if time.monotonic() > deadline + (last_due - clock.now()) / clock.speed + 60:
            raise SystemExit("steady windows did not finish")
        time.sleep(0.2)
    lags = [json.loads(doc)["_finished_at"] - clock_wall(clock, start + F) for start, _status, doc in rows]
    statuses = {s for _start, s, _doc in rows}
    stop.set()
    writer.join(30)
    for p in procs:
        fleet.stop(p)
    for name in names:
        client.stop_inference_scheduler(InferenceSchedulerName=name)
    # a finished task's attempts count its final run too: anything above 1 is a repeated run
    extra_runs = db_rows(db, "SELECT coalesce(sum(attempts - 1), 0) FROM procrastinate_jobs WHERE status IN "
                             "('succeeded', 'failed') AND task_name = 'l4e.run_execution' AND "
                             "args->>'scheduler' LIKE %s", (pattern,))[0][0]
    twice = db_rows(db, "SELECT count(*) - count(DISTINCT (scheduler, data_start)) FROM lookout_executions "
                        "WHERE scheduler LIKE %s", (pattern,))[0][0]
    failed = db_rows(db, "SELECT count(*) FROM lookout_executions WHERE scheduler LIKE %s AND status = 'FAILED'",
                     (pattern,))[0][0]
    return {"workers": w, "throughput": throughput, "lag_p50": percentile(lags, 50), "lag_p99": percentile(lags, 99),
            "duplicates": int(extra_runs) + int(twice), "failed": int(failed), "statuses": sorted(statuses),
            "offered": args.schedulers * clock.speed / F,
            "worker_ms": 1000 * (cpu1[0] - cpu0[0]) / executed, "pg_ms": 1000 * (cpu1[1] - cpu0[1]) / executed,
            "xacts": (xact1 - xact0) / executed}


def clock_sim(clock: ScaledClock, wall: float) -> float:
    return clock.start + (wall - clock.anchor) * clock.speed


def clock_wall(clock: ScaledClock, sim: float) -> float:
    return clock.anchor + (sim - clock.start) / clock.speed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedulers", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--backlog", type=int, default=3, help="windows per scheduler due when the workers start")
    parser.add_argument("--steady", type=int, default=2, help="windows per scheduler measured for the lag")
    parser.add_argument("--speed", type=float, default=15.0, help="simulated seconds per wall second")
    parser.add_argument("--sensors", type=int, default=300)
    parser.add_argument("--store", choices=("folder", "s3"), default="folder")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each drain, wall seconds")
    args = parser.parse_args()
    workers = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    pg = PgServer()
    pg.start()
    moto = None
    try:
        db = pg.new_database()
        state_dir = tmp / "state"
        if args.store == "s3":
            import boto3
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, port = moto.get_host_and_port()
            os.environ.update(AWS_ENDPOINT_URL_S3=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            store, store_url = S3Store(s3, BUCKET), "s3"
        else:
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
        clock = ScaledClock.persistent(SIM_START, args.speed, state_dir / "clock.json")
        svc = LocalLookoutService(state_dir, store_url, clock=clock, db_url=db, embedded_worker=False).start()
        client = make_client(svc.endpoint_url)
        fleet = Fleet(db, state_dir, store_url, pd.Timestamp(SIM_START, unit="s").isoformat(), args.speed, 30.0)
        trainer = fleet.worker()
        client.create_dataset(DatasetName="fleet", DatasetSchema={"InlineDataSchema": schema})
        t0 = time.monotonic()
        assert ingest(client, "fleet")["Status"] == "SUCCESS"
        assert train(client, "fleet-model", "fleet")["Status"] == "SUCCESS"
        print(f"setup: {args.sensors} sensors, ingest + train {time.monotonic() - t0:.1f}s; store {args.store}; "
              f"{os.cpu_count()} cores; PostgreSQL {pg.bin.parent.name}", flush=True)
        fleet.stop(trainer)
        noise = np.random.default_rng(5)
        plant = Plant(store, comps, {c: v + noise.normal(0, 0.2, v.shape) for c, v in values.items()})
        ctx = {"client": client, "clock": clock, "db": db, "plant": plant, "fleet": fleet, "pg": pg}
        results = []
        print(f"{'workers':>7} {'exec/s':>8} {'efficiency':>10} {'offered/s':>9} {'lag p50 s':>9} {'lag p99 s':>9} "
              f"{'dup':>4} {'failed':>6} {'worker CPU ms/exec':>18} {'PG CPU ms/exec':>14} {'PG xact/exec':>12}",
              flush=True)
        for w in workers:
            r = run(w, args, ctx)
            results.append(r)
            one = results[0]["throughput"] / results[0]["workers"]  # per worker, from the first (smallest) count
            eff = r["throughput"] / (w * one)
            print(f"{w:>7} {r['throughput']:>8.1f} {eff:>10.2f} {r['offered']:>9.1f} {r['lag_p50']:>9.2f} "
                  f"{r['lag_p99']:>9.2f} {r['duplicates']:>4} {r['failed']:>6} {r['worker_ms']:>18.1f} "
                  f"{r['pg_ms']:>14.2f} {r['xacts']:>12.1f}", flush=True)
        fleet.close()
        svc.stop()
        bad = [r for r in results if r["duplicates"]]
        return 1 if bad else 0
    finally:
        if moto is not None:
            moto.stop()
        pg.close()


if __name__ == "__main__":
    sys.exit(main())
