"""Inference scheduler operations: create/describe/list/update/start/stop/delete and their errors."""

from __future__ import annotations

import pytest

from .conftest import BUCKET, wait_for

ROLE = "arn:aws:iam::123456789012:role/l4e"


def create(client, name: str, model: str = "m1", **extra):
    params = dict(
        ModelName=model, InferenceSchedulerName=name, DataUploadFrequency="PT5M",
        DataDelayOffsetInMinutes=60,  # no window becomes due while these tests run on the system clock
        DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET, "Prefix": f"{name}/input/"},
                                "InputTimeZoneOffset": "+00:00",
                                "InferenceInputNameConfiguration": {"TimestampFormat": "yyyyMMddHHmmss",
                                                                    "ComponentTimestampDelimiter": "_"}},
        DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": BUCKET, "Prefix": f"{name}/output/"}},
        RoleArn=ROLE)
    params.update(extra)
    return client.create_inference_scheduler(**params)


def status(client, name: str) -> str:
    return client.describe_inference_scheduler(InferenceSchedulerName=name)["Status"]


def test_lifecycle_of_statuses(trained):
    _svc, client, _store = trained
    created = create(client, "s-life", Tags=[{"Key": "line", "Value": "3"}])
    assert created["Status"] == "PENDING"
    assert created["InferenceSchedulerArn"].startswith(
        "arn:aws:lookoutequipment:us-east-1:123456789012:inference-scheduler/s-life/")
    wait_for(lambda: status(client, "s-life") == "RUNNING")
    desc = client.describe_inference_scheduler(InferenceSchedulerName="s-life")
    assert (desc["ModelName"], desc["DataUploadFrequency"], desc["DataDelayOffsetInMinutes"]) == ("m1", "PT5M", 60)
    assert desc["DataInputConfiguration"]["InferenceInputNameConfiguration"]["ComponentTimestampDelimiter"] == "_"
    with pytest.raises(client.exceptions.ConflictException):
        client.start_inference_scheduler(InferenceSchedulerName="s-life")
    with pytest.raises(client.exceptions.ConflictException):
        client.delete_inference_scheduler(InferenceSchedulerName="s-life")
    with pytest.raises(client.exceptions.ConflictException):
        client.delete_model(ModelName="m1")
    with pytest.raises(client.exceptions.ConflictException):
        client.delete_dataset(DatasetName="hist")
    stopped = client.stop_inference_scheduler(InferenceSchedulerName="s-life")
    assert stopped["Status"] == "STOPPING" and stopped["ModelName"] == "m1"
    wait_for(lambda: status(client, "s-life") == "STOPPED")
    with pytest.raises(client.exceptions.ConflictException):
        client.stop_inference_scheduler(InferenceSchedulerName="s-life")
    assert client.start_inference_scheduler(InferenceSchedulerName="s-life")["Status"] == "PENDING"
    wait_for(lambda: status(client, "s-life") == "RUNNING")
    client.stop_inference_scheduler(InferenceSchedulerName="s-life")
    wait_for(lambda: status(client, "s-life") == "STOPPED")
    assert client.list_tags_for_resource(ResourceArn=created["InferenceSchedulerArn"])["Tags"] == [
        {"Key": "line", "Value": "3"}]
    client.delete_inference_scheduler(InferenceSchedulerName="s-life")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_inference_scheduler(InferenceSchedulerName="s-life")


def test_update(trained):
    _svc, client, _store = trained
    create(client, "s-upd")
    client.update_inference_scheduler(InferenceSchedulerName="s-upd", DataUploadFrequency="PT10M",
                                      DataDelayOffsetInMinutes=30,
                                      DataOutputConfiguration={"S3OutputConfiguration": {
                                          "Bucket": BUCKET, "Prefix": "elsewhere/"}})
    desc = client.describe_inference_scheduler(InferenceSchedulerName="s-upd")
    assert (desc["DataUploadFrequency"], desc["DataDelayOffsetInMinutes"]) == ("PT10M", 30)
    assert desc["DataOutputConfiguration"]["S3OutputConfiguration"]["Prefix"] == "elsewhere/"
    assert desc["UpdatedAt"] >= desc["CreatedAt"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.update_inference_scheduler(InferenceSchedulerName="nope", DataDelayOffsetInMinutes=1)
    with pytest.raises(client.exceptions.ValidationException):
        client.update_inference_scheduler(InferenceSchedulerName="s-upd", DataDelayOffsetInMinutes=61)
    with pytest.raises(client.exceptions.ValidationException):
        client.update_inference_scheduler(InferenceSchedulerName="s-upd", DataInputConfiguration={
            "S3InputConfiguration": {"Bucket": BUCKET, "Prefix": "no-trailing-slash"}})


def test_create_errors(trained):
    _svc, client, _store = trained
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        create(client, "s-err", model="no-such-model")
    create(client, "s-dup")
    with pytest.raises(client.exceptions.ConflictException):
        create(client, "s-dup")
    with pytest.raises(client.exceptions.ValidationException):
        create(client, "s-err", DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET},
                                                         "InputTimeZoneOffset": "+5:30"})
    with pytest.raises(client.exceptions.ValidationException):
        create(client, "s-err", DataInputConfiguration={"S3InputConfiguration": {"Bucket": BUCKET},
                                                         "InferenceInputNameConfiguration": {"TimestampFormat": "x"}})
    for call in (client.describe_inference_scheduler, client.start_inference_scheduler,
                 client.stop_inference_scheduler, client.delete_inference_scheduler):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            call(InferenceSchedulerName="s-none")


def test_untrained_model_cannot_be_scheduled(trained):
    _svc, client, _store = trained
    client.create_model(ModelName="m-untrained", DatasetName="hist",
                        TrainingDataStartTime=2e9, TrainingDataEndTime=2e9 + 86400)  # fails: no data there
    wait_for(lambda: client.describe_model(ModelName="m-untrained")["Status"] == "FAILED")
    with pytest.raises(client.exceptions.ValidationException):
        create(client, "s-untrained", model="m-untrained")


def test_idempotent_create(trained):
    _svc, client, _store = trained
    first = create(client, "s-idem", ClientToken="sched-token")
    again = create(client, "s-idem", ClientToken="sched-token")
    assert first["InferenceSchedulerArn"] == again["InferenceSchedulerArn"]


def test_list_schedulers_and_executions(trained):
    _svc, client, _store = trained
    for name in ("s-list-a", "s-list-b", "s-list-c"):
        create(client, name)
    names = [s["InferenceSchedulerName"] for s in
             client.list_inference_schedulers(InferenceSchedulerNameBeginsWith="s-list-")["InferenceSchedulerSummaries"]]
    assert names == ["s-list-a", "s-list-b", "s-list-c"]
    page = client.list_inference_schedulers(InferenceSchedulerNameBeginsWith="s-list-", MaxResults=2)
    assert len(page["InferenceSchedulerSummaries"]) == 2
    rest = client.list_inference_schedulers(InferenceSchedulerNameBeginsWith="s-list-", NextToken=page["NextToken"])
    assert [s["InferenceSchedulerName"] for s in rest["InferenceSchedulerSummaries"]] == ["s-list-c"]
    assert "NextToken" not in rest
    summary = page["InferenceSchedulerSummaries"][0]
    assert summary["ModelName"] == "m1" and summary["DataUploadFrequency"] == "PT5M"
    assert client.list_inference_schedulers(ModelName="other")["InferenceSchedulerSummaries"] == []
    assert client.list_inference_schedulers(Status="STOPPED", InferenceSchedulerNameBeginsWith="s-list-")[
        "InferenceSchedulerSummaries"] == []
    # the API documents an empty list (not an error) for a scheduler that does not exist
    assert client.list_inference_executions(InferenceSchedulerName="ghost")["InferenceExecutionSummaries"] == []


def test_execution_lists_filter_and_page_in_the_database(trained):
    """Filters and pages over many executions (both backends): every page is the next slice of the filtered,
    newest-first list, whatever the combination of Status, DataStartTimeAfter and DataEndTimeBefore."""
    svc, client, _store = trained
    t0, step, count = 1_767_225_600.0, 300.0, 23
    docs = []
    for k in range(count):
        start = t0 + k * step
        doc = {"InferenceSchedulerName": "s-page", "ModelName": "m1", "DataStartTime": start,
               "DataEndTime": start + step, "Status": "FAILED" if k % 3 == 0 else "SUCCESS"}
        svc.ctx.state.put_execution("s-page", start, doc)
        docs.append(doc)

    def listed(**filters) -> list[float]:
        out, token = [], None
        for _ in range(count + 1):
            page = client.list_inference_executions(InferenceSchedulerName="s-page", MaxResults=4, **filters,
                                                    **({"NextToken": token} if token else {}))
            out += [e["DataStartTime"].timestamp() for e in page["InferenceExecutionSummaries"]]
            token = page.get("NextToken")
            if not token:
                return out
        raise AssertionError("pagination did not end")

    def expected(keep) -> list[float]:
        return [d["DataStartTime"] for d in reversed(docs) if keep(d)]

    after, before = t0 + 5 * step, t0 + 17 * step
    assert listed() == expected(lambda d: True)
    assert listed(Status="FAILED") == expected(lambda d: d["Status"] == "FAILED")
    assert listed(Status="SUCCESS", DataStartTimeAfter=after) == expected(
        lambda d: d["Status"] == "SUCCESS" and d["DataStartTime"] >= after)
    assert listed(DataStartTimeAfter=after, DataEndTimeBefore=before) == expected(
        lambda d: d["DataStartTime"] >= after and d["DataEndTime"] <= before)
    assert len(listed(DataStartTimeAfter=after, DataEndTimeBefore=before)) == 12  # inclusive at both ends


def test_old_finished_executions_are_deleted_when_a_retention_is_set(tmp_path, db_factory):
    """``keep_executions_days``: finished executions whose window started longer ago than that go (the first
    pass runs when the service starts); an old one still IN_PROGRESS and the recent ones stay. Both backends."""
    import time

    from agent.lookout_local import migrate
    from agent.lookout_local.pgstate import PgState
    from agent.lookout_local.state import State

    from .conftest import make_client, start_service

    db_url = db_factory()
    if db_url is None:
        state = State(tmp_path / "state")
    else:
        migrate.upgrade(db_url)
        state = PgState(db_url)
    now = time.time() // 300 * 300
    for age, status in ((5 * 86400, "SUCCESS"), (3 * 86400, "FAILED"), (4 * 86400, "IN_PROGRESS"), (86400, "SUCCESS")):
        start = now - age
        state.put_execution("s-keep", start, {"InferenceSchedulerName": "s-keep", "DataStartTime": start,
                                              "DataEndTime": start + 300, "Status": status})
    state.close()
    svc = start_service(tmp_path / "state", (tmp_path / "store").as_uri() + "/", db_url, keep_executions_days=2)
    try:
        client = make_client(svc.endpoint_url)

        def left() -> set[float]:
            page = client.list_inference_executions(InferenceSchedulerName="s-keep")
            return {e["DataStartTime"].timestamp() for e in page["InferenceExecutionSummaries"]}

        wait_for(lambda: left() == {now - 4 * 86400, now - 86400}, timeout=15)
    finally:
        svc.stop()
