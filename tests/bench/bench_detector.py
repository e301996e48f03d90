"""Benchmark of the detector's cost (``agent.detection``; not run by CI).

    .venv/bin/python tests/bench/bench_detector.py [--days 30] [--train-sensors 100]
                                                   [--score-sensors 300] [--repeats 30]

1. Training: ``--days`` of PT1M rows × ``--train-sensors`` sensors (43,200 rows × 100 by default) through
   ``Detector.fit``, in a subprocess that builds the data and then fits, so that its peak resident memory
   (VmHWM) is the fit's; a baseline subprocess builds the same data only. Time baseline: a plain numpy
   Mahalanobis fit of the same matrix (nanmean, nanstd, covariance, eigen-decomposition), in the same
   subprocess after the fit (median of 3; the fit is timed cold, as CreateModel's worker runs it). A third
   subprocess runs the local service's whole CreateModel training on the same data written as ingested
   Parquet files (resample at PT1M, fit, ModelMetrics scoring every training row). Targets: ≤ 30 s and
   ≤ 1 GiB peak.
2. Scoring: a 5-minute window of ``--score-sensors`` sensors, with the detector's ``context_rows`` of history
   before it, at PT1S (300 rows + context) and at PT1M (5 rows + context), through ``Detector.score`` and
   through the local service's ``TrainedModel.results_jsonl`` (scores + the results.jsonl bytes). Baseline: a
   plain numpy Mahalanobis distance of the same matrix (standardise, whiten, sum of squares). Target: ≤ 100 ms
   per window (median over ``--repeats``; the fastest call is printed too).

The data: a few latent factors (a daily and a 6-hour cycle, a slow random walk, fast noise) mixed into every
sensor, plus sensor noise; 1 % of the cells are empty and 0.5 % of the rows are grid points without data.
Prints wall figures, the ratio to the baseline and PASS/FAIL against the targets; exits 1 when a target fails.
numpy's BLAS runs its matrix products on every core by default; on a loaded machine (or a gateway busy with
the agent) threads on products this small cost more than they bring: compare a run under
``OPENBLAS_NUM_THREADS=1`` (the setting is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAIN_SECS_MAX = 30.0
TRAIN_PEAK_MIB_MAX = 1024.0
SCORE_MS_MAX = 100.0


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def plant(rows: int, sensors: int, rate: float, seed: int = 7) -> np.ndarray:
    """(rows × sensors) correlated readings ``rate`` seconds apart, with empty cells and empty rows."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows) * rate
    factors = np.stack([np.sin(2 * np.pi * t / 86400), np.cos(2 * np.pi * t / 21600),
                        np.cumsum(rng.normal(0, 0.01, rows)), rng.normal(0, 0.3, rows)])
    mixing = rng.normal(size=(len(factors), sensors))
    values = rng.uniform(10, 100, sensors) + 5 * factors.T @ mixing + rng.normal(0, 0.3, (rows, sensors))
    values[rng.random((rows, sensors)) < 0.01] = np.nan
    values[rng.random(rows) < 0.005] = np.nan
    return values


def names_for(sensors: int) -> list[str]:
    return [f"comp{i // 50}\\s{i}" for i in range(sensors)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def numpy_fit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The baseline: a plain Mahalanobis model (mean, scale, whitening) of the same matrix."""
    mean, scale = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    z = np.nan_to_num((values - mean) / scale)
    eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))
    return mean, scale, (eigvec / np.sqrt(np.maximum(eigval, 1e-12))) @ eigvec.T


def numpy_distance(values: np.ndarray, mean: np.ndarray, scale: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """The baseline: plain squared Mahalanobis distance per row."""
    return np.sum((np.nan_to_num((values - mean) / scale) @ whiten) ** 2, axis=1)


def write_dataset(values: np.ndarray, folder: Path) -> list:
    """``values`` as an ingested dataset (one Parquet file per component of 50 sensors, as ingestion writes)."""
    import pandas as pd

    from agent.lookout_local.schema import Component

    stamps = pd.date_range("2026-01-01", periods=len(values), freq="60s")
    components = []
    for c in range(0, values.shape[1], 50):
        sensors = tuple(f"s{i}" for i in range(c, min(c + 50, values.shape[1])))
        frame = pd.DataFrame(values[:, c:c + len(sensors)], columns=list(sensors))
        frame.insert(0, "timestamp", stamps)
        frame = frame[frame[list(sensors)].notna().any(axis=1)]  # ingestion keeps rows with data only
        frame.to_parquet(folder / f"comp{c // 50}.parquet", index=False)
        components.append(Component(f"comp{c // 50}", "Timestamp", sensors))
    return components


def child(mode: str, rows: int, sensors: int) -> None:
    """Subprocess body: build the data, then fit (mode ``train``: ``Detector.fit``; mode ``service``: the
    local service's CreateModel training, resample + fit + ModelMetrics from the ingested Parquet files);
    print one JSON line of figures."""
    import tempfile

    from agent.detection import Detector

    values = plant(rows, sensors, 60.0)
    out = {"rows": rows, "sensors": sensors}
    if mode == "service":
        from agent.lookout_local.modeling import train

        with tempfile.TemporaryDirectory() as tmp:
            components = write_dataset(values, Path(tmp))
            del values
            out["data_peak_mib"] = peak_mib()
            start = time.perf_counter()
            train(Path(tmp), components, 60, (None, None), (None, None), [], None, Path(tmp) / "model")
            out["fit_s"] = time.perf_counter() - start
        out["peak_mib"] = peak_mib()
        print(json.dumps(out))
        return
    if mode == "train":
        start = time.perf_counter()
        Detector.fit(values, names_for(sensors), 60.0)
        out["fit_s"] = time.perf_counter() - start  # cold, as CreateModel's worker runs it
    out["peak_mib"] = peak_mib()  # before the baseline fits below: the peak is the fit's
    if mode == "train":
        out["baseline_s"] = float(np.median([timed(lambda: numpy_fit(values)) for _ in range(3)]))
    print(json.dumps(out))


def run_child(mode: str, rows: int, sensors: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", str(rows), "--sensors", str(sensors)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"{mode} subprocess failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_training(days: int, sensors: int) -> bool:
    rows = days * 1440
    base = run_child("build", rows, sensors)
    train = run_child("train", rows, sensors)
    service = run_child("service", rows, sensors)
    ok = True

    def line(label: str, value: float, unit: str, base_value: float, target: float, extra: str = "") -> None:
        nonlocal ok
        ok &= value <= target
        print(f"  {label:<40} {value:8.2f} {unit:<3} = {value / base_value:5.2f} x baseline{extra}   "
              f"target <= {target:.0f} {unit}: {verdict(value <= target)}")

    print(f"training: {days} days x PT1M = {rows} rows x {sensors} sensors "
          f"({rows * sensors * 8 / 2**20:.0f} MiB of float64)")
    print(f"  {'baseline: numpy Mahalanobis fit':<40} {train['baseline_s']:8.2f} s")
    line("Detector.fit", train["fit_s"], "s", train["baseline_s"], TRAIN_SECS_MAX)
    line("CreateModel training (+resample, metrics)", service["fit_s"], "s", train["baseline_s"], TRAIN_SECS_MAX)
    print(f"  {'baseline: peak RSS of building the data':<40} {base['peak_mib']:8.0f} MiB")
    line("peak RSS, data + Detector.fit", train["peak_mib"], "MiB", base["peak_mib"], TRAIN_PEAK_MIB_MAX,
         f" (+{train['peak_mib'] - base['peak_mib']:.0f} MiB)")
    line("peak RSS, CreateModel training", service["peak_mib"], "MiB", base["peak_mib"], TRAIN_PEAK_MIB_MAX,
         f" (+{service['peak_mib'] - base['peak_mib']:.0f} MiB)")
    return ok


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, fastest) wall milliseconds of ``repeats`` calls after one warm-up call (first-call costs,
    imports and caches, are not the steady state)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3, float(np.min(times)) * 1e3


def bench_scoring(sensors: int, rate: int, train_rows: int, repeats: int) -> bool:
    import pandas as pd

    from agent.detection import Detector
    from agent.lookout_local.modeling import TrainedModel

    names = names_for(sensors)
    window_rows = 300 // rate
    history = plant(train_rows + 2000 // rate + 1000, sensors, float(rate), seed=11)
    detector = Detector.fit(history[:train_rows], names, float(rate))
    context = detector.context_rows
    block = history[-(window_rows + context):]
    index = pd.date_range("2026-01-01", periods=len(block), freq=f"{rate}s")
    frame = pd.DataFrame(block, index=index, columns=names)
    model = TrainedModel(detector, rate, None)
    mean, scale, whiten = numpy_fit(history[:train_rows])

    base, base_min = median_ms(lambda: numpy_distance(block, mean, scale, whiten), repeats)
    score = median_ms(lambda: detector.score(block, context), repeats)
    lines = median_ms(lambda: model.results_jsonl(frame, context), repeats)
    assert len(model.result_lines(frame, context)) == window_rows
    print(f"scoring: 5-minute window at PT{'1S' if rate == 1 else '1M'} = {window_rows} rows + {context} context rows "
          f"x {sensors} sensors (median of {repeats})")
    print(f"  baseline numpy Mahalanobis     {base:7.2f} ms (fastest {base_min:.2f})")
    ok = True
    for label, (ms, ms_min) in (("Detector.score", score), ("TrainedModel.results_jsonl", lines)):
        ok &= ms <= SCORE_MS_MAX
        print(f"  {label:<30} {ms:7.2f} ms (fastest {ms_min:.2f})  = {ms / base:6.1f} x baseline   "
              f"target <= {SCORE_MS_MAX:.0f} ms: {verdict(ms <= SCORE_MS_MAX)}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--train-sensors", type=int, default=100)
    parser.add_argument("--score-sensors", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--child", choices=("build", "train", "service"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sensors", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.sensors)
        return
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset: one per core)')}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    ok = bench_training(args.days, args.train_sensors)
    ok &= bench_scoring(args.score_sensors, 1, 2 * 3600, args.repeats)
    ok &= bench_scoring(args.score_sensors, 60, 3 * 1440, args.repeats)
    print("all targets met" if ok else "a target was missed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
