"""End to end on an accelerated clock: history CSVs → dataset → ingestion → model → scheduler → executions
→ results.jsonl, with a faulty window the detector flags, a window with a missing component file that
FAILS with the service's FailedReason, and a restart that keeps every state and catches up."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agent.core.clock import ScaledClock
from agent.core.model import Window
from agent.pipeline.store import FileStore
from agent.pipeline.windows import format_csv_time, object_key, results_key

from . import synth
from .conftest import BUCKET, ingest, make_client, start_service, train, wait_for, write_history

F = 300
DELAY_MIN = 2
SPEED = 300.0  # 5 simulated minutes per wall second
IN_PREFIX, OUT_PREFIX = "inference/input/", "inference/output/"
# Window numbers (1-based). 1, 2, 4: normal. 3: a fault on motor\current. From 5 on the motor writes no file:
# window 5 still finds window 4's motor file (names in [start − F, end + F]) but no row in (start, end];
# window 6 finds no motor file at all.
FAULTY, NO_ROWS, MISSING = 3, 5, 6
N_WINDOWS = 6


def window_files(store, history, window: Window, *, fault: bool = False, skip: tuple[str, ...] = ()) -> None:
    """The agent's files for a window: named by the window start, rows for [start, end] (the start row is
    outside (start, end] and must be ignored by the service)."""
    lo, hi = synth.minute_index(window.start), synth.minute_index(window.end)
    for comp, frame in history.items():
        if comp in skip:
            continue
        rows = frame.iloc[lo:hi + 1].copy()
        if fault and comp == "motor":
            rows["current"] += 4.0 * history["motor"]["current"].std()
        store.put(object_key(IN_PREFIX, comp, "_", window.start, "yyyyMMddHHmmss"), synth.to_csv(rows))


@pytest.fixture(scope="module")
def world(tmp_path_factory, history, db_factory):
    root = tmp_path_factory.mktemp("life")
    store = FileStore(root / "store" / BUCKET)
    write_history(store, {c: f.iloc[:3 * synth.DAY] for c, f in history.items()})
    clock = ScaledClock(pd.Timestamp("2026-01-04T00:00:00Z").timestamp(), SPEED)
    db_url = db_factory()
    svc = start_service(root / "state", (root / "store").as_uri() + "/", db_url, clock=clock, tick_secs=0.05)
    client = make_client(svc.endpoint_url)
    assert ingest(client, "plant")["Status"] == "SUCCESS"
    assert train(client, "plant-model", "plant")["Status"] == "SUCCESS"
    created = client.create_inference_scheduler(
        ModelName="plant-model", InferenceSchedulerName="plant-sched", DataUploadFrequency="PT5M",
        DataDelayOffsetInMinutes=DELAY_MIN,
        DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": IN_PREFIX},
                                "InferenceInputNameConfiguration": {"ComponentTimestampDelimiter": "_",
                                                                    "TimestampFormat": "yyyyMMddHHmmss"}},
        DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": OUT_PREFIX}},
        RoleArn="arn:aws:iam::123456789012:role/l4e")
    assert created["Status"] == "PENDING"
    started = client.describe_inference_scheduler(InferenceSchedulerName="plant-sched")["CreatedAt"].timestamp()
    first_end = int(started // F) * F + F  # the first window is the one in progress at creation
    windows = [Window(first_end + (k - 2) * F, first_end + (k - 1) * F) for k in range(1, N_WINDOWS + 1)]
    # the first window wakes DELAY_MIN simulated minutes after its end: ≥ 0.4 s wall from now, plenty for this
    for k, window in enumerate(windows, start=1):
        window_files(store, history, window, fault=k == FAULTY, skip=("motor",) if k >= NO_ROWS else ())
    state = {"svc": svc, "client": client, "store": store, "clock": clock, "windows": windows, "root": root,
             "db_url": db_url}

    def ran():
        execs = client.list_inference_executions(InferenceSchedulerName="plant-sched")["InferenceExecutionSummaries"]
        done = {e["DataStartTime"].timestamp() for e in execs if e["Status"] != "IN_PROGRESS"}
        return len(done & {w.start for w in windows}) == N_WINDOWS

    wait_for(ran, timeout=60)
    client.stop_inference_scheduler(InferenceSchedulerName="plant-sched")
    wait_for(lambda: client.describe_inference_scheduler(InferenceSchedulerName="plant-sched")["Status"] == "STOPPED")
    yield state
    state["svc"].stop()


def executions(client, **filters) -> list[dict]:
    out, token = [], None
    while True:
        kwargs = dict(InferenceSchedulerName="plant-sched", MaxResults=2, **filters)
        if token:
            kwargs["NextToken"] = token
        page = client.list_inference_executions(**kwargs)
        out += page["InferenceExecutionSummaries"]
        token = page.get("NextToken")
        if not token:
            return out


def by_window(world) -> dict[int, dict]:
    execs = executions(world["client"])
    starts = {w.start: k for k, w in enumerate(world["windows"], start=1)}
    return {starts[e["DataStartTime"].timestamp()]: e for e in execs if e["DataStartTime"].timestamp() in starts}


def read_results(world, key: str) -> list[dict]:
    data = world["store"].get(key)
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode().splitlines()]


def test_executions_are_recorded_newest_first(world):
    execs = executions(world["client"])
    starts = [e["DataStartTime"] for e in execs]
    assert starts == sorted(starts, reverse=True)
    for k, e in by_window(world).items():
        w = world["windows"][k - 1]
        assert e["DataEndTime"].timestamp() == w.end
        assert e["ScheduledStartTime"].timestamp() == w.end + 60 * DELAY_MIN
        assert e["ModelName"] == "plant-model" and e["InferenceSchedulerName"] == "plant-sched"
        assert e["DataInputConfiguration"]["S3InputConfiguration"]["Prefix"] == IN_PREFIX


def test_successful_windows_write_results(world):
    execs = by_window(world)
    for k in (1, 2, FAULTY, 4):
        e, w = execs[k], world["windows"][k - 1]
        assert e["Status"] == "SUCCESS", e.get("FailedReason")
        assert e["CustomerResultObject"] == {"Bucket": BUCKET, "Key": results_key(OUT_PREFIX, w)}
        lines = read_results(world, e["CustomerResultObject"]["Key"])
        # one line per grid point in (start, end]: the start row of the file is not scored
        assert [line["timestamp"] for line in lines] == [format_csv_time(w.start + 60 * i) for i in range(1, 6)]
        for line in lines:
            assert set(line) == {"timestamp", "prediction", "prediction_reason", "anomaly_score", "diagnostics"}
            assert 0.0 <= line["anomaly_score"] <= 1.0
            assert (line["anomaly_score"] >= 0.5) == (line["prediction"] == 1)
            assert line["prediction_reason"] == ("ANOMALY_DETECTED" if line["prediction"] else "NO_ANOMALY_DETECTED")
            values = [d["value"] for d in line["diagnostics"]]
            assert min(values) >= 0 and round(sum(values), 5) == 1.0
            assert [d["name"] for d in line["diagnostics"]] == [
                f"{c}\\{s}" for c, sensors in synth.COMPONENTS.items() for s in sensors]


def test_fault_is_flagged_and_normal_windows_are_not(world):
    execs = by_window(world)
    for k in (1, 2, 4):
        scores = [line["anomaly_score"] for line in read_results(world, execs[k]["CustomerResultObject"]["Key"])]
        assert max(scores) < 0.5, (k, scores)
    faulty = read_results(world, execs[FAULTY]["CustomerResultObject"]["Key"])
    assert all(line["anomaly_score"] >= 0.5 and line["prediction"] == 1 for line in faulty)
    for line in faulty:  # the diagnostics point at the sensor that moved
        top = max(line["diagnostics"], key=lambda d: d["value"])
        assert top["name"] == "motor\\current"


def test_missing_component_file_fails_the_window(world):
    e = by_window(world)[MISSING]
    w = world["windows"][MISSING - 1]
    z = lambda ts: pd.Timestamp(ts, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    name = lambda ts: pd.Timestamp(ts, unit="s").strftime("%Y%m%d%H%M%S")  # noqa: E731
    where = world["root"] / "store" / BUCKET  # a folder store: the reason names the real folder, not s3://
    assert e["Status"] == "FAILED"
    assert "CustomerResultObject" not in e
    assert e["FailedReason"] == (
        f"Could not find data file for sensor motor within expected range of ({z(w.start)}, {z(w.end)}]. "
        f"Please ensure data is present for all sensors of the machine under prefix "
        f"'{where}/{IN_PREFIX}motor_{name(w.start - F)}' ~ '{where}/{IN_PREFIX}motor_{name(w.end + F)}'")


def test_window_without_rows_fails_the_window(world):
    e = by_window(world)[NO_ROWS]
    w, prev = world["windows"][NO_ROWS - 1], world["windows"][NO_ROWS - 2]
    z = lambda ts: pd.Timestamp(ts, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    zm = lambda ts: pd.Timestamp(ts, unit="s").strftime("%Y-%m-%dT%H:%MZ")  # noqa: E731
    assert e["Status"] == "FAILED"
    assert e["FailedReason"] == (
        f"Could not find data for sensor motor within expected time range of ({z(w.start)}, {z(w.end)}] while "
        f"searching in the given data range of ({zm(prev.start)}, {zm(prev.end)}). Please ensure data is present "
        "for all sensors of the machine and ensure there is data within the expected time range.")


def test_filters(world):
    client, windows = world["client"], world["windows"]
    failed = executions(client, Status="FAILED")
    assert all(e["Status"] == "FAILED" for e in failed)
    assert windows[MISSING - 1].start in {e["DataStartTime"].timestamp() for e in failed}
    after = executions(client, DataStartTimeAfter=windows[2].start)
    assert min(e["DataStartTime"].timestamp() for e in after) == windows[2].start
    before = executions(client, DataEndTimeBefore=windows[1].end)
    assert {e["DataStartTime"].timestamp() for e in before} == {windows[0].start, windows[1].start}


def test_latest_inference_result(world):
    desc = world["client"].describe_inference_scheduler(InferenceSchedulerName="plant-sched")
    latest_success = max((e for e in executions(world["client"]) if e["Status"] == "SUCCESS"),
                         key=lambda e: e["DataStartTime"])
    lines = read_results(world, latest_success["CustomerResultObject"]["Key"])
    expected = "ANOMALOUS" if any(line["prediction"] for line in lines) else "NORMAL"
    assert desc["LatestInferenceResult"] == expected


def test_restart_keeps_state_and_catches_up(world):
    client, clock, root = world["client"], world["clock"], world["root"]
    before = {
        "dataset": client.describe_dataset(DatasetName="plant"),
        "model": client.describe_model(ModelName="plant-model"),
        "scheduler": client.describe_inference_scheduler(InferenceSchedulerName="plant-sched"),
        "executions": executions(client),
        "jobs": client.list_data_ingestion_jobs(DatasetName="plant")["DataIngestionJobSummaries"],
    }
    client.start_inference_scheduler(InferenceSchedulerName="plant-sched")
    wait_for(lambda: client.describe_inference_scheduler(InferenceSchedulerName="plant-sched")["Status"] == "RUNNING")
    world["svc"].stop()
    down_at = clock.now()
    # while the service is down, at least one whole window passes and becomes due
    wait_for(lambda: clock.now() > (down_at // F + 2) * F + 60 * DELAY_MIN, timeout=10)
    svc = start_service(root / "state", (root / "store").as_uri() + "/", world["db_url"], clock=clock, tick_secs=0.05)
    world["svc"] = svc
    client = world["client"] = make_client(svc.endpoint_url)
    for key, fetch in (("dataset", lambda: client.describe_dataset(DatasetName="plant")),
                       ("model", lambda: client.describe_model(ModelName="plant-model"))):
        now, old = fetch(), before[key]
        now.pop("ResponseMetadata"), old.pop("ResponseMetadata", None)
        assert now == old
    assert client.list_data_ingestion_jobs(DatasetName="plant")["DataIngestionJobSummaries"] == before["jobs"]
    sched = client.describe_inference_scheduler(InferenceSchedulerName="plant-sched")
    assert sched["InferenceSchedulerArn"] == before["scheduler"]["InferenceSchedulerArn"]
    missed_end = int(down_at // F) * F + 2 * F

    def caught_up():
        ends = {e["DataEndTime"].timestamp() for e in executions(client)}
        return missed_end in ends

    wait_for(caught_up, timeout=30)
    old_starts = {e["DataStartTime"] for e in before["executions"]}
    assert old_starts <= {e["DataStartTime"] for e in executions(client)}
    client.stop_inference_scheduler(InferenceSchedulerName="plant-sched")


def test_detector_scores_are_calibrated_on_training_data(world):
    """The model's own history scores well below the threshold (robust calibration)."""
    metrics = json.loads(world["client"].describe_model(ModelName="plant-model")["ModelMetrics"])
    assert metrics["anomalous_points"] / metrics["evaluated_points"] < 0.005
    assert np.isfinite(metrics["evaluated_points"])

