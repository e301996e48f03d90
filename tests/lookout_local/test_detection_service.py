"""The detector through the real local service (boto3 over HTTP): a model of the previous detector's file
format is refused by the scheduler with a reason that says to retrain it (no "Internal error", no traceback),
and CreateModel with an evaluation range and labels reports the evaluation figures ``l4e-agent lookout
evaluate`` reports, consistent with the labelled and predicted ranges in the same ModelMetrics."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from agent.core.clock import ScaledClock
from agent.pipeline.store import FileStore
from agent.pipeline.windows import object_key

from . import synth
from .conftest import BUCKET, ingest, make_client, start_service, train, wait_for, write_history

F = 300
SPEED = 300.0  # 5 simulated minutes per wall second
IN_PREFIX, OUT_PREFIX = "inference/input/", "inference/output/"
DAY = pd.Timestamp("2026-01-01T00:00:00Z")
FAULT = ("2026-01-03T06:00:00.000000", "2026-01-03T07:00:00.000000")  # in the evaluation day


@pytest.fixture(scope="module")
def world(tmp_path_factory, history, db_factory):
    """A service on an accelerated clock with three days of normal history ingested as ``plant``, and the
    same history with a labelled one-hour fault on pump\\vibration (evaluation day) as ``faulty``."""
    root = tmp_path_factory.mktemp("detection")
    store = FileStore(root / "store" / BUCKET)
    frames = {c: f.iloc[:3 * synth.DAY] for c, f in history.items()}
    write_history(store, frames)
    faulty = {c: f.copy() for c, f in frames.items()}
    stamps = faulty["pump"]["Timestamp"]
    hit = (stamps >= FAULT[0][:16]) & (stamps < FAULT[1][:16])
    faulty["pump"].loc[hit, "vibration"] += 5 * faulty["pump"]["vibration"].std()
    write_history(store, faulty, prefix="faulty-history/")
    store.put("labels/labels.csv", f"{FAULT[0]},{FAULT[1]}\n".encode())
    clock = ScaledClock(pd.Timestamp("2026-01-04T00:00:00Z").timestamp(), SPEED)
    svc = start_service(root / "state", (root / "store").as_uri() + "/", db_factory(), clock=clock, tick_secs=0.05)
    client = make_client(svc.endpoint_url)
    assert ingest(client, "plant")["Status"] == "SUCCESS"
    assert ingest(client, "faulty", prefix="faulty-history/")["Status"] == "SUCCESS"
    yield {"svc": svc, "client": client, "store": store, "root": root, "history": history}
    svc.stop()


def write_previous_format(path, names: list[str]) -> None:
    """A detector file as the previous (single-reference) detector wrote it: no ``format`` field."""
    p = len(names)
    with open(path, "wb") as fh:
        np.savez(fh, names=np.array(names, dtype=object).astype(str), median=np.zeros(p), scale=np.ones(p),
                 whiten=np.eye(p), threshold=np.array(10.0))


def test_model_of_the_previous_detector_fails_its_windows_with_a_retrain_reason(world, caplog):
    client, store, history = world["client"], world["store"], world["history"]
    assert train(client, "old-model", "plant")["Status"] == "SUCCESS"
    names = [f"{c}\\{s}" for c, sensors in synth.COMPONENTS.items() for s in sensors]
    write_previous_format(world["root"] / "state" / "models" / "old-model" / "detector.npz", names)
    caplog.set_level(logging.DEBUG, logger="agent")
    client.create_inference_scheduler(
        ModelName="old-model", InferenceSchedulerName="old-sched", DataUploadFrequency="PT5M",
        DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": IN_PREFIX},
                                "InferenceInputNameConfiguration": {"ComponentTimestampDelimiter": "_",
                                                                    "TimestampFormat": "yyyyMMddHHmmss"}},
        DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": OUT_PREFIX}},
        RoleArn="arn:aws:iam::123456789012:role/l4e")
    started = client.describe_inference_scheduler(InferenceSchedulerName="old-sched")["CreatedAt"].timestamp()
    first = int(started // F) * F  # the window in progress at creation is the first one run
    for k in range(2):  # its input is all there: only the model can make it fail
        lo = synth.minute_index(first + k * F)
        for comp, frame in history.items():
            store.put(object_key(IN_PREFIX, comp, "_", first + k * F, "yyyyMMddHHmmss"),
                      synth.to_csv(frame.iloc[lo:lo + 6]))

    def finished():
        execs = client.list_inference_executions(InferenceSchedulerName="old-sched")["InferenceExecutionSummaries"]
        return [e for e in execs if e["Status"] != "IN_PROGRESS"]

    execs = wait_for(finished, timeout=60)
    client.stop_inference_scheduler(InferenceSchedulerName="old-sched")
    for e in execs:
        assert e["Status"] == "FAILED"
        assert "CustomerResultObject" not in e
        reason = e["FailedReason"]
        assert not reason.startswith("Internal error"), reason
        assert "earlier detector" in reason and "train it again" in reason, reason
        assert "Traceback" not in reason
    assert not list(store.list(OUT_PREFIX))  # nothing half-written
    logged = [r for r in caplog.records if r.name.startswith("agent.")]
    assert not [r for r in logged if r.exc_info], [r.getMessage() for r in logged if r.exc_info]
    assert not [r for r in logged if "Traceback" in r.getMessage()]


def test_model_metrics_hold_the_evaluation_consistent_with_the_ranges(world):
    client = world["client"]
    model = train(client, "eval-model", "faulty",
                  TrainingDataStartTime=DAY, TrainingDataEndTime=DAY + pd.Timedelta(days=2),
                  EvaluationDataStartTime=DAY + pd.Timedelta(days=2), EvaluationDataEndTime=DAY + pd.Timedelta(days=3),
                  LabelsInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "labels/"}})
    assert model["Status"] == "SUCCESS", model.get("FailedReason")
    metrics = json.loads(model["ModelMetrics"])
    ev = metrics["evaluation"]
    assert {"f1", "far", "mar", "tp", "fp", "fn", "tn", "events", "events_detected", "median_delay_secs",
            "false_alarm_events", "false_alarm_events_per_day", "normal_days"} <= set(ev)
    # the point counts are the rows the ranges cover: the labelled hour is 61 grid points (both ends included)
    assert metrics["labeled_ranges"] == [{"start": FAULT[0], "end": FAULT[1]}]
    assert ev["tp"] + ev["fn"] == 61
    assert ev["tp"] + ev["fp"] + ev["fn"] + ev["tn"] == metrics["evaluated_points"]
    assert ev["tp"] + ev["fp"] == metrics["anomalous_points"]

    def rows(r: dict) -> int:  # grid points of a predicted range, both ends included
        start, end = (pd.Timestamp(r[k]).timestamp() for k in ("start", "end"))
        return int((end - start) // 60) + 1

    assert sum(rows(r) for r in metrics["predicted_ranges"]) == metrics["anomalous_points"]
    lo, hi = (pd.Timestamp(t).timestamp() for t in FAULT)
    inside = sum(max(0, int((min(hi, pd.Timestamp(r["end"]).timestamp())
                             - max(lo, pd.Timestamp(r["start"]).timestamp())) // 60) + 1)
                 for r in metrics["predicted_ranges"]
                 if pd.Timestamp(r["start"]).timestamp() <= hi and pd.Timestamp(r["end"]).timestamp() >= lo)
    assert ev["tp"] == inside
    # the ratios are those of the counts; the events those of the ranges
    tp, fp, fn, tn = ev["tp"], ev["fp"], ev["fn"], ev["tn"]
    assert ev["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert ev["far"] == pytest.approx(fp / (fp + tn))
    assert ev["mar"] == pytest.approx(fn / (fn + tp))
    assert ev["events"] == metrics["labeled_event_metrics"]["num_labeled"] == 1
    assert ev["events_detected"] == metrics["labeled_event_metrics"]["num_labeled_detected"] == 1
    predicted = metrics["predicted_event_metrics"]
    assert ev["false_alarm_events"] == predicted["num_predicted"] - predicted["num_predicted_with_label_overlap"]
    assert ev["normal_days"] == pytest.approx((tn + fp) * 60 / 86400)
    assert 0 <= ev["median_delay_secs"] <= 5 * 60  # a 5-sigma step is caught within minutes
    assert tp > 0 and ev["far"] <= 0.01  # the fault is caught; the normal day hardly alarms
