"""The detector and its judge (agent.detection), on data the tests make: the evaluate arithmetic on a crafted
case, faults caught with the right sensor on top of the diagnostics, causal scoring, and the command's errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agent.detection import Detector, ModelFormatError
from agent.detection.evaluate import TrainSpec, evaluate_run
from agent.detection.metrics import count, stretches
from agent.detection.runs import RunError, RunFormat, load_run

SENSORS = ["flow", "pressure", "current", "temp", "vibration"]


def plant(n: int, seed: int = 0) -> np.ndarray:
    """1 Hz rows of a plant whose five sensors follow two slow latent factors (strongly correlated) + noise."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0, 0.05, (n, 2))
    latent = np.zeros((n, 2))
    for t in range(1, n):  # AR(1), slow and stationary (σ ≈ 0.5): the plant wanders but comes back
        latent[t] = 0.995 * latent[t - 1] + shocks[t]
    mix = np.array([[1.0, 0.8, 0.6, -0.3, 0.2], [0.2, -0.4, 0.5, 1.0, 0.7]])
    return 20 + latent @ mix + rng.normal(0, 0.1, (n, 5))


def test_metrics_arithmetic_on_a_crafted_run():
    # rows:          0 1 2 3 4 5 6 7 8 9 10 11
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
    preds = np.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    c = count(labels, preds, rate=2.0)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 4, 3, 3)
    f = c.figures()
    assert f["f1"] == pytest.approx(4 / 11) and f["far"] == pytest.approx(4 / 7) and f["mar"] == pytest.approx(3 / 5)
    # events: [2..4] detected at row 3 (delay 1 row = 2 s), [8..9] missed
    assert (f["events"], f["events_detected"], f["median_delay_secs"]) == (2, 1, 2.0)
    # predicted stretches [0], [3..5], [10..11]: the first and the last touch no labelled row
    assert f["false_alarm_events"] == 2
    assert f["false_alarm_events_per_day"] == pytest.approx(2 * 86400 / (7 * 2.0))
    pooled = (c + count(np.zeros(4), np.zeros(4), 2.0)).figures()
    assert pooled["tn"] == 7 and pooled["far"] == pytest.approx(4 / 11)
    assert stretches(np.array([1, 1, 0, 1])) == [(0, 1), (3, 3)]


def test_undefined_ratios_are_none_not_zero():
    f = count(np.zeros(5), np.zeros(5), 1.0).figures()
    assert f["mar"] is None and f["median_delay_secs"] is None and f["far"] == 0.0


def test_normal_operation_scores_below_the_line():
    rows = plant(4000)
    det = Detector.fit(rows[:1500], SENSORS, 1.0)
    scores, shares = det.score(rows, context=1500)
    assert np.mean(scores >= 0.5) < 0.02
    assert np.allclose(shares.sum(axis=1), 1.0) and np.all(shares >= 0)


def test_a_single_sensor_drift_is_caught_with_that_sensor_on_top():
    rows = plant(3000, seed=1)
    det = Detector.fit(rows[:1500], SENSORS, 1.0)
    faulty = rows.copy()
    faulty[2000:, 4] += np.linspace(0, 3.0, 1000)  # vibration drifts away, the others carry on
    scores, shares = det.score(faulty, context=1500)
    late = slice(2700 - 1500, 3000 - 1500)
    assert np.all(scores[late] >= 0.5)
    assert np.all(shares[late].argmax(axis=1) == 4)
    assert np.mean(scores[: 2000 - 1500] >= 0.5) < 0.02  # before the drift: quiet


def test_a_broken_correlation_is_caught_with_the_right_sensor_on_top():
    rows = plant(3000, seed=2)
    det = Detector.fit(rows[:1500], SENSORS, 1.0)
    faulty = rows.copy()
    # pressure stops following flow and current: a step of 1.0, well inside its own range over the run
    assert np.ptp(rows[:, 1]) > 2.0
    faulty[2000:, 1] -= 1.0
    scores, shares = det.score(faulty, context=1500)
    after = slice(2100 - 1500, 2400 - 1500)
    assert np.mean(scores[after] >= 0.5) > 0.95
    assert np.mean(shares[after].argmax(axis=1) == 1) > 0.95


def test_a_fault_that_settles_stays_alarmed_until_the_latch_releases_it():
    rows = plant(6000, seed=7)
    det = Detector.fit(rows[:1500], SENSORS, 1.0)
    faulty = rows.copy()
    faulty[2000:5000, 0] -= 1.5  # flow drops and stays down for 50 minutes
    scores, _ = det.score(faulty, context=1500)
    flagged = np.flatnonzero(scores >= 0.5) + 1500
    onset = flagged[0]
    assert 2000 <= onset < 2100
    # alarmed without a gap from the onset until latch_secs later (the recent reference alone would have
    # forgotten it after lag + reference = 7 minutes), and never before the fault
    assert np.all(scores[onset - 1500:onset - 1500 + det.latch_rows] >= 0.5)
    assert not np.any(scores[: 2000 - 1500] >= 0.5)


def test_the_alarm_of_a_fault_that_goes_away_clears():
    rows = plant(4000, seed=8)
    det = Detector.fit(rows[:1500], SENSORS, 1.0)
    faulty = rows.copy()
    faulty[2000:2600, 0] -= 1.5  # ten minutes, then the plant is back
    scores, _ = det.score(faulty, context=1500)
    assert np.mean(scores[2100 - 1500:2600 - 1500] >= 0.5) > 0.95
    assert not np.any(scores[2700 - 1500:] >= 0.5)


def test_scores_are_causal_and_history_is_all_the_context_they_need():
    rows = plant(2500, seed=3)
    det = Detector.fit(rows[:1000], SENSORS, 1.0)
    full, _ = det.score(rows, context=1000)
    changed = rows.copy()
    changed[1800:] += 50.0  # what comes later never changes an earlier score
    assert np.array_equal(det.score(changed, context=1000)[0][:800], full[:800])
    # scoring a window with context_rows of history gives the same scores as scoring the whole series
    start, end = 2000, 2300
    history = rows[start - det.context_rows:end]
    assert np.allclose(det.score(history, context=det.context_rows)[0], full[start - 1000:end - 1000])


def test_rows_without_data_do_not_count_as_values():
    rows = plant(2000, seed=4)
    det = Detector.fit(rows[:1000], SENSORS, 1.0)
    gappy = rows.copy()
    gappy[1200:1500] = np.nan  # 5 minutes without any reading, then the plant as it was
    scores, _ = det.score(gappy, context=1000)
    steady, _ = det.score(rows, context=1000)
    assert np.all(np.isfinite(scores))
    reach = det.smooth_rows + det.score_rows  # the last readings before the gap stay in reach this long
    assert np.all(scores[200 + reach:500] == 0.0)  # then nothing is left to judge: no score, no alarm
    # after it, the rows are judged as they would be without the gap (the empty rows are no reference)
    assert np.mean(scores[500:] >= 0.5) <= np.mean(steady[500:] >= 0.5) + 0.01


def test_save_load_round_trip_and_an_earlier_format_is_refused(tmp_path):
    rows = plant(1500, seed=5)
    det = Detector.fit(rows[:1000], SENSORS, 60.0)
    det.save(tmp_path / "d.npz")
    again = Detector.load(tmp_path / "d.npz")
    assert again.names == SENSORS and again.rate == 60.0 and again.params == det.params
    assert np.array_equal(again.score(rows)[0], det.score(rows)[0])
    with open(tmp_path / "old.npz", "wb") as fh:  # what the single-reference detector wrote
        np.savez(fh, names=np.array(SENSORS), median=det.mean, scale=det.scale, whiten=det.whiten,
                 threshold=np.array(3.0))
    with pytest.raises(ModelFormatError, match="train it again"):
        Detector.load(tmp_path / "old.npz")


def test_durations_are_seconds_whatever_the_rate():
    rows = plant(600, seed=6)
    per_second = Detector.fit(rows, SENSORS, 1.0)
    per_minute = Detector.fit(rows, SENSORS, 60.0)
    assert (per_second.lag_rows, per_second.reference_rows) == (300, 120)
    assert (per_minute.lag_rows, per_minute.reference_rows, per_minute.score_rows) == (5, 2, 1)


# ---- runs and the command -------------------------------------------------------------------------------------

def write_run(path: Path, rows: np.ndarray, labels: np.ndarray, sep: str = ";") -> Path:
    stamps = pd.date_range("2026-03-01 10:00:00", periods=len(rows), freq="1s").strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame(rows, columns=SENSORS)
    frame.insert(0, "datetime", stamps)
    frame["anomaly"] = labels.astype(float)
    frame["changepoint"] = 0.0
    frame.to_csv(path, sep=sep, index=False)
    return path


def faulty_run(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = plant(1200, seed=seed)
    labels = np.zeros(1200, dtype=int)
    rows[700:1000, 0] -= 1.5  # flow drops for 5 minutes
    labels[700:1000] = 1
    return rows, labels


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "lookout", "evaluate", *args], capture_output=True,
                          text=True, timeout=60)


def test_evaluate_prints_figures_that_the_predictions_file_reproduces(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for k in range(3):
        write_run(runs / f"{k}.csv", *faulty_run(10 + k))
    out = evaluate_cli("--format", "skab", str(runs), "--json", "--predictions", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    pooled = doc["pooled"]
    assert pooled["events"] == 3 and pooled["events_detected"] == 3 and pooled["f1"] > 0.8
    with open(tmp_path / "p.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 3 * 800 and {line["file"] for line in lines} == {f"runs/{k}.csv" for k in range(3)}
    labels = np.concatenate([faulty_run(10 + k)[1][400:] for k in range(3)])
    preds = np.array([int(line["prediction"]) for line in lines])
    assert np.array_equal(preds, (np.array([float(line["anomaly_score"]) for line in lines]) >= 0.5).astype(int))
    again = count(labels, preds, 1.0).figures()
    assert (again["tp"], again["fp"], again["fn"], again["tn"]) == (pooled["tp"], pooled["fp"], pooled["fn"],
                                                                     pooled["tn"])
    text = evaluate_cli("--format", "skab", str(runs))
    assert text.returncode == 0 and f"F1 {pooled['f1']:.3f}" in text.stdout


@pytest.mark.parametrize(("content", "message"), [
    ("datetime;flow;changepoint\n2026-01-01 00:00:00;1;0\n", "no label column 'anomaly'"),
    ("datetime;flow;anomaly\n2026-01-01 00:00:00;1;0\n2026-01-01 00:00:01;high;0\n",
     "line 3: column 'flow' is not numeric ('high')"),
    ("datetime;flow;anomaly\n2026-01-01 00:00:00;1;2\n", "label anomaly is '2'; allowed: 0 or 1"),
    ("datetime;flow;anomaly\nyesterday;1;0\n", "line 2: datetime 'yesterday' is not a timestamp"),
])
def test_a_bad_run_is_a_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(RunError, match=r"bad\.csv") as err:
        load_run(path, RunFormat.skab())
    assert message in str(err.value)
    out = evaluate_cli("--format", "skab", str(path))
    assert out.returncode == 65 and out.stdout == "" and "bad.csv" in out.stderr and message in out.stderr


def test_too_few_rows_or_an_empty_folder_exit_65_and_print_nothing(tmp_path):
    short = write_run(tmp_path / "short.csv", plant(300), np.zeros(300))
    out = evaluate_cli("--format", "skab", str(short))
    assert out.returncode == 65 and out.stdout == ""
    assert "short.csv: 300 rows, none left to score after 400 training rows" in out.stderr
    tiny = write_run(tmp_path / "tiny.csv", plant(20), np.zeros(20))
    out = evaluate_cli("--format", "skab", "--train-rows", "5", str(tiny))
    assert out.returncode == 65 and "tiny.csv: 5 training rows for 5 sensors" in out.stderr
    (tmp_path / "empty").mkdir()
    out = evaluate_cli("--format", "skab", str(tmp_path / "empty"), str(short))
    assert out.returncode == 65 and out.stdout == "" and "empty: no *.csv file in this folder" in out.stderr


def test_a_training_time_range_and_labelled_training_rows(tmp_path):
    rows, labels = faulty_run(20)
    labels[100:150] = 1  # a labelled stretch inside the training range is left out of the fit
    rows[100:150, 2] += 40.0
    run = load_run(write_run(tmp_path / "r.csv", rows, labels), RunFormat.skab())
    by_rows = evaluate_run(run, TrainSpec(rows=400))
    start, end = run.times[0], run.times[399]
    by_range = evaluate_run(run, TrainSpec(start=start, end=end))
    assert np.array_equal(by_rows.scores, by_range.scores)
    assert by_rows.counts.figures()["events_detected"] == 1
    out = evaluate_cli("--format", "skab", "--train-range", "2026-03-01T10:00:00", "2026-03-01T10:06:39",
                       str(tmp_path / "r.csv"), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["runs"][0]["scored"] == 800


def test_the_detection_room_imports_nothing_of_the_service_or_the_agent():
    code = ("import sys, agent.detection, agent.detection.evaluate, agent.detection.runs, agent.detection.metrics;"
            "print(sorted(m for m in sys.modules if m.startswith('agent.') and not m.startswith("
            "('agent.detection', 'agent.core'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
