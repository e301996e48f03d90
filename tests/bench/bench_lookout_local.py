"""Benchmark of the local L4E service's data path (not run by CI).

    .venv/bin/python tests/bench/bench_lookout_local.py [--days 30] [--train-sensors 50]
                                                         [--infer-sensors 300] [--windows 30]

1. Training: ``--days`` of 1-minute data × ``--train-sensors`` sensors (5 components) as CSV in a FileStore;
   ingestion (CSV → Parquet + data quality) and training (resample at PT1M, fit, evaluate) with the same
   functions the service's worker runs. Baseline: a plain ``pandas.read_csv`` of the same files.
2. Inference: a model over ``--infer-sensors`` sensors (6 components, 3 days of history), then
   ``--windows`` 5-minute windows scored as the scheduler does (list, read, resample, score, write
   results.jsonl). Baseline: ``pandas.read_csv`` of each window's files.

3. API: ``--calls`` DescribeDataset round trips through boto3 over HTTP to an embedded service.
   Baseline: the same boto3 call answered by a stub HTTP server returning a fixed body (pure client +
   HTTP cost), so the ratio is the service's own share.

Reports wall seconds, the ratio to the baseline, and RSS (current and peak, MiB, from /proc/self/status).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agent.core.model import Window
from agent.lookout_local.inference import InputConfig, run_window
from agent.lookout_local.ingest import ingest
from agent.lookout_local.modeling import TrainedModel, train
from agent.lookout_local.schema import Component
from agent.pipeline.store import FileStore
from agent.pipeline.windows import object_key

START = pd.Timestamp("2026-01-01T00:00:00")


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def plant(minutes: int, sensors: int, components: int, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Correlated data: 3 latent factors → sensors, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    factors = np.stack([np.sin(2 * np.pi * t / 1440), np.cos(2 * np.pi * t / 360), rng.normal(0, 0.3, minutes)])
    values = rng.uniform(10, 100, (sensors, 1)) + 5 * rng.normal(size=(sensors, 3)) @ factors \
        + rng.normal(0, 0.3, (sensors, minutes))
    stamps = START + pd.to_timedelta(t, unit="min")
    per = sensors // components
    out = {}
    for c in range(components):
        frame = pd.DataFrame(values[c * per:(c + 1) * per].T, columns=[f"s{c}_{i}" for i in range(per)])
        frame.insert(0, "Timestamp", stamps)
        out[f"comp{c}"] = frame
    return out


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%f", float_format="%.6f").encode()


def schema(frames: dict[str, pd.DataFrame]) -> list[Component]:
    return [Component(name, "Timestamp", tuple(f.columns[1:])) for name, f in frames.items()]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_training(root: Path, days: int, sensors: int) -> None:
    frames = plant(days * 1440, sensors, 5)
    store = FileStore(root / "store" / "bench")
    for name, frame in frames.items():
        store.put(f"history/{name}/data.csv", to_csv(frame))
    size = sum((root / "store" / "bench" / "history" / n / "data.csv").stat().st_size for n in frames) / 2**20
    comps = schema(frames)
    base, _ = timed(lambda: [pd.read_csv(root / "store" / "bench" / "history" / n / "data.csv") for n in frames])
    t_ingest, _ = timed(lambda: ingest(store, "bench", "history/", None, comps, root / "ds"))
    rss_i = rss_mib()
    t_train, metrics = timed(lambda: train(root / "ds", comps, 60, (None, None), (None, None), [], None, root / "m"))
    rss_t = rss_mib()
    print(f"training data: {days} days x 1 min x {sensors} sensors = {days * 1440} rows, {size:.1f} MiB CSV")
    print(f"  baseline pandas.read_csv     {base:7.3f} s")
    print(f"  ingestion (CSV->Parquet+DQ)  {t_ingest:7.3f} s  = {t_ingest / base:5.2f} x baseline   "
          f"RSS {rss_i[0]:.0f} MiB (peak {rss_i[1]:.0f})")
    print(f"  training (resample+fit+eval) {t_train:7.3f} s  = {t_train / base:5.2f} x baseline   "
          f"RSS {rss_t[0]:.0f} MiB (peak {rss_t[1]:.0f})   flagged {metrics['anomalous_points']}"
          f"/{metrics['evaluated_points']}")


def bench_inference(root: Path, sensors: int, windows: int) -> None:
    history_minutes = 3 * 1440
    frames = plant(history_minutes + windows * 5 + 10, sensors, 6, seed=5)
    comps = schema(frames)
    store = FileStore(root / "store" / "infer")
    for name, frame in frames.items():
        store.put(f"history/{name}/data.csv", to_csv(frame.iloc[:history_minutes]))
    ingest(store, "infer", "history/", None, comps, root / "ds300")
    train(root / "ds300", comps, 60, (None, None), (None, None), [], None, root / "m300")
    model = TrainedModel.load(root / "m300")
    cfg = InputConfig("infer", "input/", "_", "yyyyMMddHHmmss", 0)
    first = int(START.timestamp()) + history_minutes * 60
    wins = [Window(first + k * 300, first + (k + 1) * 300) for k in range(windows)]
    for w in wins:
        lo = (w.start - int(START.timestamp())) // 60
        for name, frame in frames.items():
            store.put(object_key("input/", name, "_", w.start, "yyyyMMddHHmmss"), to_csv(frame.iloc[lo:lo + 6]))

    def baseline():
        for w in wins:
            for name in frames:
                pd.read_csv(store.root / object_key("input/", name, "_", w.start, "yyyyMMddHHmmss"))

    def infer():
        flagged = 0
        for w in wins:
            _key, anomalous = run_window(store, store, cfg, "output/", comps, model, w, 300)
            flagged += anomalous
        return flagged

    base, _ = timed(baseline)
    t_inf, flagged = timed(infer)
    rss = rss_mib()
    print(f"inference: {windows} windows of 5 min x {sensors} sensors ({len(comps)} files per window)")
    print(f"  baseline pandas.read_csv     {base / windows * 1e3:7.1f} ms/window")
    print(f"  window (find+read+score+put) {t_inf / windows * 1e3:7.1f} ms/window = {t_inf / base:5.2f} x baseline"
          f"   RSS {rss[0]:.0f} MiB (peak {rss[1]:.0f})   anomalous windows {flagged}/{windows}")


def bench_api(root: Path, calls: int) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import boto3
    from botocore.config import Config

    from agent.lookout_local import LocalLookoutService

    def client(endpoint):
        return boto3.client("lookoutequipment", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="x", aws_secret_access_key="x",
                            config=Config(retries={"total_max_attempts": 1}))

    with LocalLookoutService(root / "api-state", (root / "api-store").as_uri() + "/") as svc:
        c = client(svc.endpoint_url)
        c.create_dataset(DatasetName="api")
        reply = json.dumps({k: v for k, v in c.describe_dataset(DatasetName="api").items()
                            if k != "ResponseMetadata"}, default=lambda d: d.timestamp()).encode()
        t_svc, _ = timed(lambda: [c.describe_dataset(DatasetName="api") for _ in range(calls)])

    class Stub(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    c = client(f"http://127.0.0.1:{stub.server_address[1]}")
    c.describe_dataset(DatasetName="api")
    t_stub, _ = timed(lambda: [c.describe_dataset(DatasetName="api") for _ in range(calls)])
    stub.shutdown()
    stub.server_close()
    print(f"API: {calls} DescribeDataset calls through boto3 over HTTP")
    print(f"  baseline stub server         {t_stub / calls * 1e3:7.2f} ms/call")
    print(f"  local service                {t_svc / calls * 1e3:7.2f} ms/call = {t_svc / t_stub:5.2f} x baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--train-sensors", type=int, default=50)
    parser.add_argument("--infer-sensors", type=int, default=300)
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"start RSS {rss_mib()[0]:.0f} MiB")
        bench_training(Path(tmp), args.days, args.train_sensors)
        bench_inference(Path(tmp), args.infer_sensors, args.windows)
        bench_api(Path(tmp), args.calls)


if __name__ == "__main__":
    main()
