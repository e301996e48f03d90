"""Datasets and ingestion jobs: CRUD, errors, idempotency, pagination, tags, data quality counts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from . import synth
from .conftest import BUCKET, ingest, wait_for, write_history

ROLE = "arn:aws:iam::123456789012:role/l4e"


def test_create_describe_list_delete(client):
    created = client.create_dataset(DatasetName="ds1", DatasetSchema={"InlineDataSchema": synth.schema()},
                                    Tags=[{"Key": "site", "Value": "lyon"}])
    assert created["Status"] == "CREATED"
    assert created["DatasetArn"].startswith("arn:aws:lookoutequipment:us-east-1:123456789012:dataset/ds1/")
    desc = client.describe_dataset(DatasetName="ds1")
    assert desc["DatasetArn"] == created["DatasetArn"]
    assert json.loads(desc["Schema"]) == json.loads(synth.schema())
    assert desc["CreatedAt"].timestamp() > 0
    assert [d["DatasetName"] for d in client.list_datasets()["DatasetSummaries"]] == ["ds1"]
    client.delete_dataset(DatasetName="ds1")
    assert client.list_datasets()["DatasetSummaries"] == []
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_dataset(DatasetName="ds1")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_dataset(DatasetName="ds1")


def test_name_clash_is_a_conflict(client):
    client.create_dataset(DatasetName="dup")
    with pytest.raises(client.exceptions.ConflictException):
        client.create_dataset(DatasetName="dup")


def test_client_token_makes_create_idempotent(client):
    first = client.create_dataset(DatasetName="idem", ClientToken="token-1")
    again = client.create_dataset(DatasetName="idem", ClientToken="token-1")
    assert again["DatasetArn"] == first["DatasetArn"]
    with pytest.raises(client.exceptions.ConflictException):  # same token, different request
        client.create_dataset(DatasetName="other", ClientToken="token-1")


@pytest.mark.parametrize("schema", [
    "not json", json.dumps({"Components": []}),
    json.dumps({"Components": [{"ComponentName": "c", "Columns": [{"Name": "Timestamp", "Type": "DATETIME"}]}]}),
    json.dumps({"Components": [{"ComponentName": "c", "Columns": [{"Name": "T", "Type": "DATETIME"},
                                                                   {"Name": "s", "Type": "CATEGORY"}]}]}),
])
def test_bad_schema_is_a_validation_error(client, schema):
    with pytest.raises(client.exceptions.ValidationException):
        client.create_dataset(DatasetName="bad", DatasetSchema={"InlineDataSchema": schema})


def test_pagination_walks_every_dataset_once(client):
    for i in range(7):
        client.create_dataset(DatasetName=f"page-{i}")
    client.create_dataset(DatasetName="other")
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"MaxResults": 3, "DatasetNameBeginsWith": "page-"}
        if token:
            kwargs["NextToken"] = token
        page = client.list_datasets(**kwargs)
        seen += [d["DatasetName"] for d in page["DatasetSummaries"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert seen == [f"page-{i}" for i in range(7)] and pages == 3
    with pytest.raises(client.exceptions.ValidationException):
        client.list_datasets(NextToken="garbage")


def test_tags(client):
    arn = client.create_dataset(DatasetName="tagged", Tags=[{"Key": "a", "Value": "1"}])["DatasetArn"]
    client.tag_resource(ResourceArn=arn, Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "3"}])
    tags = {t["Key"]: t["Value"] for t in client.list_tags_for_resource(ResourceArn=arn)["Tags"]}
    assert tags == {"a": "3", "b": "2"}
    client.untag_resource(ResourceArn=arn, TagKeys=["a", "missing"])
    assert client.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]
    with pytest.raises(client.exceptions.ServiceQuotaExceededException):
        client.tag_resource(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    unknown = "arn:aws:lookoutequipment:us-east-1:123456789012:dataset/none/x"
    for call in (lambda: client.list_tags_for_resource(ResourceArn=unknown),
                 lambda: client.tag_resource(ResourceArn=unknown, Tags=[{"Key": "a", "Value": "b"}]),
                 lambda: client.untag_resource(ResourceArn=unknown, TagKeys=["a"])):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            call()
    with pytest.raises(client.exceptions.ValidationException):
        client.create_dataset(DatasetName="too-many", Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])


def _dirty_history(store, history):
    """Two days of history with known defects in the pump's first file."""
    frames = {c: f.iloc[:2 * synth.DAY].copy() for c, f in history.items()}
    write_history(store, frames)
    pump = frames["pump"].iloc[:synth.DAY].copy()
    text = synth.to_csv(pump).decode().splitlines()
    head = text[0].split(",")
    rows = [r.split(",") for r in text[1:]]
    rows[10][head.index("flow")] = ""          # missing value
    rows[11][head.index("flow")] = ""          # missing value
    rows[12][head.index("pressure")] = "abc"   # invalid value
    rows[13][0] = "not a date"                 # unsupported timestamp
    rows.append(list(rows[20]))                # duplicate timestamp
    store.put("history/pump/part0.csv", ("\n".join([",".join(head)] + [",".join(r) for r in rows]) + "\n").encode())
    store.put("history/pump/broken.csv", b"Timestamp,other\n2026-01-01T00:00:00.000000,1\n")  # lacks columns


def test_ingestion_counts_data_quality(client, store, history):
    _dirty_history(store, history)
    job = ingest(client, "dirty")
    assert job["Status"] == "SUCCESS", job.get("FailedReason")
    quality = job["DataQualitySummary"]
    assert quality["MissingSensorData"] == {"AffectedSensorCount": 1, "TotalNumberOfMissingValues": 2}
    assert quality["InvalidSensorData"] == {"AffectedSensorCount": 1, "TotalNumberOfInvalidValues": 1}
    assert quality["UnsupportedTimestamps"]["TotalNumberOfUnsupportedTimestamps"] == 1
    assert quality["DuplicateTimestamps"]["TotalNumberOfDuplicateTimestamps"] == 1
    # two days < 14 days: every sensor has a short date range
    assert quality["InsufficientSensorData"]["SensorsWithShortDateRange"]["AffectedSensorCount"] == 7
    files = job["IngestedFilesSummary"]
    assert (files["TotalNumberOfFiles"], files["IngestedNumberOfFiles"]) == (5, 4)
    assert files["DiscardedFiles"] == [{"Bucket": BUCKET, "Key": "history/pump/broken.csv"}]
    dataset = client.describe_dataset(DatasetName="dirty")
    assert dataset["Status"] == "ACTIVE"
    assert dataset["DataStartTime"] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert dataset["DataEndTime"] == pd.Timestamp("2026-01-02T23:59:00Z")
    assert dataset["IngestionInputConfiguration"]["S3InputConfiguration"]["Prefix"] == "history/"
    jobs = client.list_data_ingestion_jobs(DatasetName="dirty")["DataIngestionJobSummaries"]
    assert [(j["JobId"], j["Status"]) for j in jobs] == [(job["JobId"], "SUCCESS")]
    assert client.list_data_ingestion_jobs(Status="FAILED")["DataIngestionJobSummaries"] == []


@pytest.mark.parametrize(("layout", "pattern"), [
    ("{comp}_2026.csv", "{prefix}/{component_name}_*"),
    ("{comp}-part.csv", "{prefix}/{component_name}[-]*"),
    ("{comp}.a.csv", "{prefix}/{component_name}.*"),
])
def test_key_patterns(client, store, history, layout, pattern):
    for comp, frame in history.items():
        store.put("flat/" + layout.format(comp=comp), synth.to_csv(frame.iloc[:600]))
    job = ingest(client, "flat", prefix="flat/", key_pattern=pattern)
    assert job["Status"] == "SUCCESS", job.get("FailedReason")
    assert job["IngestedFilesSummary"]["IngestedNumberOfFiles"] == 2


def test_ingestion_without_files_fails_and_dataset_stays_created(client, store):
    job = ingest(client, "empty", prefix="nothing-here/")
    assert job["Status"] == "FAILED"
    assert "no usable data file for component pump" in job["FailedReason"]
    # a folder store: the reason names the folder where the files were looked for, not s3://bucket/prefix/
    assert f"under {store.root}/nothing-here/" in job["FailedReason"]
    assert "s3://" not in job["FailedReason"]
    assert client.describe_dataset(DatasetName="empty")["Status"] == "CREATED"


def test_schema_is_inferred_from_folders_when_absent(client, store, history):
    write_history(store, {c: f.iloc[:300] for c, f in history.items()}, prefix="noschema/", parts=1)
    client.create_dataset(DatasetName="inferred")
    job = client.start_data_ingestion_job(
        DatasetName="inferred", RoleArn=ROLE,
        IngestionInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "noschema/"}})
    wait_for(lambda: client.describe_data_ingestion_job(JobId=job["JobId"])["Status"] == "SUCCESS")
    schema = json.loads(client.describe_dataset(DatasetName="inferred")["Schema"])
    assert {c["ComponentName"]: [col["Name"] for col in c["Columns"]] for c in schema["Components"]} == {
        c: ["Timestamp", *s] for c, s in synth.COMPONENTS.items()}


def test_ingestion_errors(service, client, store, history):
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.start_data_ingestion_job(DatasetName="missing", RoleArn=ROLE,
                                        IngestionInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET}})
    client.create_dataset(DatasetName="busy", DatasetSchema={"InlineDataSchema": synth.schema()})
    with pytest.raises(client.exceptions.ValidationException):
        client.start_data_ingestion_job(DatasetName="busy", RoleArn=ROLE, IngestionInputConfiguration={
            "S3InputConfiguration": {"Bucket": BUCKET, "KeyPattern": "{component_name}/*"}})
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_data_ingestion_job(JobId="0" * 32)
    # an ingestion in progress blocks a second one and the dataset's deletion
    write_history(store, {c: f.iloc[:300] for c, f in history.items()})
    config = {"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "history/"}}
    with service.worker.paused():
        client.start_data_ingestion_job(DatasetName="busy", RoleArn=ROLE, IngestionInputConfiguration=config)
        assert client.describe_dataset(DatasetName="busy")["Status"] == "INGESTION_IN_PROGRESS"
        with pytest.raises(client.exceptions.ConflictException):
            client.start_data_ingestion_job(DatasetName="busy", RoleArn=ROLE, IngestionInputConfiguration=config)
        with pytest.raises(client.exceptions.ConflictException):
            client.delete_dataset(DatasetName="busy")
    wait_for(lambda: client.describe_dataset(DatasetName="busy")["Status"] == "ACTIVE")


def test_client_token_makes_ingestion_idempotent(client, store, history):
    write_history(store, {c: f.iloc[:300] for c, f in history.items()})
    client.create_dataset(DatasetName="once", DatasetSchema={"InlineDataSchema": synth.schema()})
    config = {"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "history/"}}
    first = client.start_data_ingestion_job(DatasetName="once", RoleArn=ROLE, IngestionInputConfiguration=config,
                                            ClientToken="ingest-token")
    again = client.start_data_ingestion_job(DatasetName="once", RoleArn=ROLE, IngestionInputConfiguration=config,
                                            ClientToken="ingest-token")
    assert again["JobId"] == first["JobId"]
    assert len(client.list_data_ingestion_jobs(DatasetName="once")["DataIngestionJobSummaries"]) == 1
    wait_for(lambda: client.describe_data_ingestion_job(JobId=first["JobId"])["Status"] == "SUCCESS")
