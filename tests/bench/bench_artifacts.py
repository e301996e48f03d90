"""Benchmark: a big ingestion through a fleet worker, and that worker's peak memory (not run by CI).

    .venv/bin/python tests/bench/bench_artifacts.py [--gib 1] [--components 3] [--sensors 50] [--files 8]

A PostgreSQL server in a temporary folder (Debian's binaries, as the tests use), the API in this process
(no embedded worker), one ``python -m agent.lookout_local worker`` process, a folder store holding ``--gib``
GiB of CSV: ``--components`` components of ``--sensors`` sensors, ``--files`` timestamp-ordered files each,
rows at 1 s, values with 6 decimals (written in blocks: this process never holds them either). The worker
ingests (CSV -> Parquet, then publishes the dataset's files to PostgreSQL in chunks). Printed: the worker's
VmHWM idle (after start-up, the baseline) and after the ingestion, read from /proc/<pid>/status, the
ingestion's wall time, the rows, the Parquet and published sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.lookout_local import LocalLookoutService  # noqa: E402
from tests.lookout_local.conftest import make_client  # noqa: E402
from tests.lookout_local.pg import PgServer  # noqa: E402
from tests.lookout_local.procs import Fleet  # noqa: E402

BUCKET = "plant-data"
START = pd.Timestamp("2025-01-01T00:00:00")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def write_csvs(root: Path, gib: float, components: int, sensors: int, files: int) -> tuple[int, int]:
    """The history under ``root/history/<component>/<yyyymmddHHMMSS>.csv``; returns (bytes, rows)."""
    rng = np.random.default_rng(5)
    block = 10_000
    tails = {c: ["," + ",".join(f"{v:.6f}" for v in row) + "\n" for row in rng.normal(50, 20, (block, sensors))]
             for c in range(components)}
    row_bytes = len("2025-01-01T00:00:00") + sum(len(t) for t in tails[0]) / block
    rows_per_file = int(gib * 2**30 / row_bytes / components / files)
    total, rows = 0, 0
    header = ",".join(["Timestamp", *(f"s{i:03d}" for i in range(sensors))]) + "\n"
    for c in range(components):
        folder = root / "history" / f"c{c}"
        folder.mkdir(parents=True)
        for f in range(files):
            first = f * rows_per_file
            path = folder / f"{(START + pd.Timedelta(seconds=first)).strftime('%Y%m%d%H%M%S')}.csv"
            with open(path, "w") as fh:
                fh.write(header)
                for a in range(first, first + rows_per_file, block):
                    n = min(block, first + rows_per_file - a)
                    stamps = (START + pd.to_timedelta(np.arange(a, a + n), unit="s")).strftime("%Y-%m-%dT%H:%M:%S")
                    fh.writelines(s + t for s, t in zip(stamps, tails[c], strict=False))
            total += path.stat().st_size
            rows += rows_per_file
    return total, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    pg = PgServer()
    pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="l4e-bench-artifacts-"))
    fleet = svc = None
    try:
        db = pg.new_database()
        t0 = time.monotonic()
        size, rows = write_csvs(tmp / "store" / BUCKET, args.gib, args.components, args.sensors, args.files)
        print(f"CSV: {size / 2**30:.2f} GiB, {rows:,} rows, {args.components} components x {args.sensors} sensors, "
              f"{args.files} files each (written in {time.monotonic() - t0:.0f}s)", flush=True)
        store_url = (tmp / "store").as_uri() + "/"
        svc = LocalLookoutService(tmp / "api", store_url, db_url=db, embedded_worker=False).start()
        client = make_client(svc.endpoint_url)
        fleet = Fleet(db, tmp / "worker", store_url, pd.Timestamp.now().isoformat(), 1.0, 30.0)
        worker = fleet.worker()
        time.sleep(3.0)  # idle: start-up done, the dispatcher polling
        idle_hwm = status_kib(worker.pid, "VmHWM")
        comps = {f"c{c}": [f"s{i:03d}" for i in range(args.sensors)] for c in range(args.components)}
        schema = json.dumps({"Components": [
            {"ComponentName": c, "Columns": [{"Name": "Timestamp", "Type": "DATETIME"}]
             + [{"Name": s, "Type": "DOUBLE"} for s in sensors]} for c, sensors in comps.items()]})
        client.create_dataset(DatasetName="big", DatasetSchema={"InlineDataSchema": schema})
        t1 = time.monotonic()
        job = client.start_data_ingestion_job(
            DatasetName="big", RoleArn="arn:aws:iam::123456789012:role/l4e",
            IngestionInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "history/"}})
        peak_rss = 0
        while (d := client.describe_data_ingestion_job(JobId=job["JobId"]))["Status"] == "IN_PROGRESS":
            peak_rss = max(peak_rss, status_kib(worker.pid, "VmRSS"))
            if time.monotonic() - t1 > args.timeout:
                raise SystemExit(f"ingestion not finished within {args.timeout}s")
            time.sleep(0.2)
        secs = time.monotonic() - t1
        if d["Status"] != "SUCCESS":
            raise SystemExit(f"ingestion {d['Status']}: {d.get('FailedReason')}")
        hwm = status_kib(worker.pid, "VmHWM")
        with psycopg.connect(db) as conn:
            published, chunks = conn.execute("SELECT sum(size), sum(chunks) FROM lookout_artifacts "
                                             "WHERE kind='dataset' AND name='big'").fetchone()
        parquet = sum(p.stat().st_size for p in (tmp / "worker" / "datasets" / "big").glob("*.parquet"))
        print(f"ingestion: {secs:.0f}s wall ({size / 2**20 / secs:.0f} MiB/s of CSV), rows "
              f"{rows:,}; Parquet {parquet / 2**20:.0f} MiB, published "
              f"{int(published) / 2**20:.0f} MiB in {chunks} chunks")
        print(f"worker VmHWM: idle {idle_hwm / 1024:.0f} MiB, after the ingestion {hwm / 1024:.0f} MiB "
              f"(+{(hwm - idle_hwm) / 1024:.0f} MiB); VmRSS sampled peak {peak_rss / 1024:.0f} MiB")
    finally:
        if fleet is not None:
            fleet.close()
        if svc is not None:
            svc.stop()
        pg.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
