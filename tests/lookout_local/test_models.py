"""Models: training lifecycle, ModelMetrics with labels, errors, listing, tags, deletion rules."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from . import synth
from .conftest import BUCKET, ingest, train, wait_for, write_history

ROLE = "arn:aws:iam::123456789012:role/l4e"


def test_trained_model_description(trained):
    _svc, client, _store = trained
    model = client.describe_model(ModelName="m1")
    assert model["Status"] == "SUCCESS"
    assert model["ModelArn"].startswith("arn:aws:lookoutequipment:us-east-1:123456789012:model/m1/")
    assert model["DatasetName"] == "hist"
    assert model["DataPreProcessingConfiguration"] == {"TargetSamplingRate": "PT1M"}
    assert model["TrainingExecutionEndTime"] >= model["TrainingExecutionStartTime"]
    assert model["ActiveModelVersion"] == 1
    assert model["ModelQuality"] == "CANNOT_DETERMINE_QUALITY"  # no labels
    metrics = json.loads(model["ModelMetrics"])
    assert metrics["predicted_event_metrics"]["num_predicted"] == len(metrics["predicted_ranges"])
    # normal history: (almost) nothing flagged
    assert metrics["anomalous_points"] <= 0.005 * metrics["evaluated_points"]


def test_labels_and_evaluation_range(trained):
    _svc, client, store = trained
    store.put("labels/labels.csv", b"2026-01-03T06:00:00.000000,2026-01-03T07:00:00.000000\n")
    day = pd.Timestamp("2026-01-01T00:00:00Z")
    model = train(client, "m-eval", "hist",
                  TrainingDataStartTime=day, TrainingDataEndTime=day + pd.Timedelta(days=2),
                  EvaluationDataStartTime=day + pd.Timedelta(days=2), EvaluationDataEndTime=day + pd.Timedelta(days=3),
                  LabelsInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "labels/"}},
                  Tags=[{"Key": "team", "Value": "ops"}])
    assert model["Status"] == "SUCCESS", model.get("FailedReason")
    metrics = json.loads(model["ModelMetrics"])
    assert metrics["labeled_ranges"] == [{"start": "2026-01-03T06:00:00.000000", "end": "2026-01-03T07:00:00.000000"}]
    assert metrics["labeled_event_metrics"] == {"num_labeled": 1, "num_labeled_detected": 0}
    assert model["ModelQuality"] == "POOR_QUALITY_DETECTED"  # the labelled hour holds normal data
    assert 1000 < metrics["evaluated_points"] <= synth.DAY + 1
    assert model["EvaluationDataStartTime"] == day + pd.Timedelta(days=2)
    assert client.list_tags_for_resource(ResourceArn=model["ModelArn"])["Tags"] == [{"Key": "team", "Value": "ops"}]


def test_sensor_subset_and_off_condition(trained):
    _svc, client, _store = trained
    subset = {"pump": ["flow", "pressure"]}
    model = train(client, "m-sub", "hist", DatasetSchema={"InlineDataSchema": synth.schema(subset)},
                  OffCondition="pump\\flow<-1000")
    assert model["Status"] == "SUCCESS", model.get("FailedReason")
    assert json.loads(model["Schema"]) == json.loads(synth.schema(subset))
    assert model["OffCondition"] == "pump\\flow<-1000"


def test_training_failure_is_reported(trained):
    _svc, client, _store = trained
    far = pd.Timestamp("2030-01-01T00:00:00Z")
    model = train(client, "m-nodata", "hist", TrainingDataStartTime=far, TrainingDataEndTime=far + pd.Timedelta(days=1))
    assert model["Status"] == "FAILED"
    assert "training rows" in model["FailedReason"]


def test_model_errors(trained):
    _svc, client, _store = trained
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.create_model(ModelName="x", DatasetName="no-such-dataset")
    with pytest.raises(client.exceptions.ConflictException):
        client.create_model(ModelName="m1", DatasetName="hist")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.create_model(ModelName="x", DatasetName="hist", LabelsInputConfiguration={"LabelGroupName": "lg"})
    client.create_dataset(DatasetName="never-ingested")
    with pytest.raises(client.exceptions.ValidationException):
        client.create_model(ModelName="x", DatasetName="never-ingested")
    with pytest.raises(client.exceptions.ValidationException):
        client.create_model(ModelName="x", DatasetName="hist", OffCondition="flow is low")
    with pytest.raises(client.exceptions.ValidationException):
        client.create_model(ModelName="x", DatasetName="hist",
                            DatasetSchema={"InlineDataSchema": synth.schema({"pump": ["nope"]})})
    start = pd.Timestamp("2026-01-02T00:00:00Z")
    with pytest.raises(client.exceptions.ValidationException):
        client.create_model(ModelName="x", DatasetName="hist", TrainingDataStartTime=start,
                            TrainingDataEndTime=start - pd.Timedelta(hours=1))
    for call in (lambda: client.describe_model(ModelName="x"), lambda: client.delete_model(ModelName="x")):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            call()


def test_list_and_delete_models(trained):
    _svc, client, _store = trained
    train(client, "zz-delete-me", "hist")
    names = [m["ModelName"] for m in client.list_models(ModelNameBeginsWith="zz")["ModelSummaries"]]
    assert names == ["zz-delete-me"]
    assert all(m["Status"] == "SUCCESS" for m in client.list_models(Status="SUCCESS")["ModelSummaries"])
    assert client.list_models(DatasetNameBeginsWith="nomatch")["ModelSummaries"] == []
    page = client.list_models(MaxResults=1)
    assert len(page["ModelSummaries"]) == 1 and page["NextToken"]
    client.delete_model(ModelName="zz-delete-me")
    assert client.list_models(ModelNameBeginsWith="zz")["ModelSummaries"] == []


def test_client_token_makes_create_model_idempotent(trained):
    _svc, client, _store = trained
    first = client.create_model(ModelName="m-idem", DatasetName="hist", ClientToken="model-token")
    again = client.create_model(ModelName="m-idem", DatasetName="hist", ClientToken="model-token")
    assert first["ModelArn"] == again["ModelArn"]


def test_training_in_progress_blocks_deletions(trained):
    svc, client, _store = trained
    with svc.worker.paused():
        assert client.create_model(ModelName="m-busy", DatasetName="hist")["Status"] == "IN_PROGRESS"
        assert client.describe_model(ModelName="m-busy")["Status"] == "IN_PROGRESS"
        with pytest.raises(client.exceptions.ConflictException):
            client.delete_model(ModelName="m-busy")
        with pytest.raises(client.exceptions.ConflictException):
            client.delete_dataset(DatasetName="hist")
    wait_for(lambda: client.describe_model(ModelName="m-busy")["Status"] == "SUCCESS")


def test_sampling_rate_is_inferred_and_reported(trained):
    _svc, client, _store = trained
    client.create_model(ModelName="m-rate", DatasetName="hist")
    model = wait_for(lambda: (d := client.describe_model(ModelName="m-rate"))["Status"] != "IN_PROGRESS" and d)
    assert model["Status"] == "SUCCESS", model.get("FailedReason")
    assert model["DataPreProcessingConfiguration"] == {"TargetSamplingRate": "PT1M"}  # the data's 1-minute step


def test_evaluation_detects_a_labelled_fault(trained, history):
    _svc, client, store = trained
    frames = {c: f.iloc[:3 * synth.DAY].copy() for c, f in history.items()}
    fault = (frames["pump"]["Timestamp"] >= "2026-01-03T06:00") & (frames["pump"]["Timestamp"] < "2026-01-03T07:00")
    frames["pump"].loc[fault, "vibration"] += 5 * frames["pump"]["vibration"].std()
    write_history(store, frames, prefix="faulty-history/")
    store.put("faulty-labels/labels.csv", b"2026-01-03T06:00:00.000000,2026-01-03T07:00:00.000000\n")
    assert ingest(client, "faulty", prefix="faulty-history/")["Status"] == "SUCCESS"
    day = pd.Timestamp("2026-01-01T00:00:00Z")
    model = train(client, "m-faulty", "faulty",
                  TrainingDataStartTime=day, TrainingDataEndTime=day + pd.Timedelta(days=2),
                  EvaluationDataStartTime=day + pd.Timedelta(days=2), EvaluationDataEndTime=day + pd.Timedelta(days=3),
                  LabelsInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "faulty-labels/"}})
    metrics = json.loads(model["ModelMetrics"])
    assert metrics["labeled_event_metrics"] == {"num_labeled": 1, "num_labeled_detected": 1}
    assert model["ModelQuality"] == "QUALITY_THRESHOLD_MET"
    hit = [r for r in metrics["predicted_ranges"]
           if r["start"] <= "2026-01-03T07:00" and r["end"] >= "2026-01-03T06:00"]
    assert hit and max(hit[0]["diagnostics"], key=lambda d: d["value"])["name"] == "pump\\vibration"
