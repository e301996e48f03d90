"""The service over real S3 HTTP (moto's server on 127.0.0.1): ingestion reads S3, results land in S3."""

from __future__ import annotations

import json

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from agent.core.clock import ScaledClock
from agent.core.model import Window
from agent.lookout_local import LocalLookoutService
from agent.pipeline.store import S3Store
from agent.pipeline.windows import object_key, results_key

from . import synth
from .conftest import BUCKET, ingest, make_client, train, wait_for, write_history

F = 300


@pytest.fixture
def s3_endpoint(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # the service makes its own boto3 S3 client: it must find the endpoint and keys the standard way
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield endpoint
    server.stop()


def test_ingest_train_and_infer_over_s3(tmp_path, s3_endpoint, history):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    store = S3Store(s3, BUCKET)
    write_history(store, {c: f.iloc[:2 * synth.DAY] for c, f in history.items()})
    clock = ScaledClock(pd.Timestamp("2026-01-03T00:00:00Z").timestamp(), 300.0)
    with LocalLookoutService(tmp_path / "state", "s3", clock=clock, tick_secs=0.05) as svc:
        client = make_client(svc.endpoint_url)
        assert ingest(client, "s3ds")["Status"] == "SUCCESS"
        assert train(client, "s3model", "s3ds")["Status"] == "SUCCESS"
        client.create_inference_scheduler(
            ModelName="s3model", InferenceSchedulerName="s3sched", DataUploadFrequency="PT5M",
            DataDelayOffsetInMinutes=2,
            DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "in/"}},
            DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": "out/"}},
            RoleArn="arn:aws:iam::123456789012:role/l4e")
        created = client.describe_inference_scheduler(InferenceSchedulerName="s3sched")["CreatedAt"].timestamp()
        window = Window(int(created // F) * F, int(created // F) * F + F)
        lo, hi = synth.minute_index(window.start), synth.minute_index(window.end)
        for comp, frame in history.items():  # defaults: delimiter "_", yyyyMMddHHmmss
            store.put(object_key("in/", comp, "_", window.start, "yyyyMMddHHmmss"),
                      synth.to_csv(frame.iloc[lo:hi + 1]))

        def first_execution():
            execs = client.list_inference_executions(InferenceSchedulerName="s3sched",
                                                     DataStartTimeAfter=window.start,
                                                     DataEndTimeBefore=window.end)["InferenceExecutionSummaries"]
            return execs[0] if execs and execs[0]["Status"] != "IN_PROGRESS" else None

        execution = wait_for(first_execution, timeout=30)
        client.stop_inference_scheduler(InferenceSchedulerName="s3sched")
    assert execution["Status"] == "SUCCESS", execution.get("FailedReason")
    assert execution["CustomerResultObject"] == {"Bucket": BUCKET, "Key": results_key("out/", window)}
    body = s3.get_object(Bucket=BUCKET, Key=results_key("out/", window))["Body"].read().decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert len(lines) == 5 and all(line["anomaly_score"] < 0.5 for line in lines)
