"""Wire protocol: AWS JSON 1.0 errors, generic validation from the botocore model, size limit, SigV4."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest
from botocore.exceptions import ClientError

from agent.lookout_local import LocalLookoutService

from .conftest import make_client

TARGET = "AWSLookoutEquipmentFrontendService."


def raw(endpoint: str, body: bytes, target: str | None, method: str = "POST", path: str = "/",
        headers: dict | None = None):
    """(status, headers, decoded JSON body) of a hand-made request."""
    url = urlparse(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    hdrs = {"Content-Type": "application/x-amz-json-1.0", **(headers or {})}
    if target:
        hdrs["X-Amz-Target"] = target
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), json.loads(data) if data else None


def test_unknown_operation_is_an_aws_shaped_error(service):
    status, headers, body = raw(service.endpoint_url, b"{}", TARGET + "ListLabelGroups")
    assert status == 400
    assert body["__type"] == headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert "ListLabelGroups" in body["message"]


def test_unknown_operation_through_boto3(client):
    with pytest.raises(ClientError) as err:
        client.list_label_groups()
    assert err.value.response["Error"]["Code"] == "UnknownOperationException"


def test_missing_target(service):
    status, _h, body = raw(service.endpoint_url, b"{}", None)
    assert (status, body["__type"]) == (400, "UnknownOperationException")


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_malformed_json_is_a_serialization_error(service, payload):
    status, _h, body = raw(service.endpoint_url, payload, TARGET + "ListDatasets")
    assert status == 400
    assert body["__type"] == "SerializationException"
    assert "Traceback" not in body["message"]


def test_oversized_body_is_refused_before_it_is_read(service):
    url = urlparse(service.endpoint_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("X-Amz-Target", TARGET + "ListDatasets")
    conn.putheader("Content-Length", str(64 * 1024 * 1024))  # announced, never sent
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert (resp.status, body["__type"]) == (413, "RequestEntityTooLargeException")


@pytest.mark.parametrize(("op", "params", "fragment"), [
    ("DescribeDataset", {}, "Member must not be null"),
    ("DescribeDataset", {"DatasetName": 5}, "Member must be a string"),
    ("DescribeDataset", {"DatasetName": "bad name!"}, "regular expression pattern"),
    ("DescribeDataset", {"DatasetName": "x" * 201}, "length less than or equal to 200"),
    ("DescribeDataset", {"DatasetName": "ok", "Extra": 1}, "Unknown parameter 'Extra'"),
    ("ListDatasets", {"MaxResults": 0}, "value greater than or equal to 1"),
    ("ListDatasets", {"MaxResults": 501}, "value less than or equal to 500"),
    ("ListDatasets", {"MaxResults": "10"}, "Member must be an integer"),
    ("ListModels", {"Status": "DONE"}, "enum value set"),
    ("ListDataIngestionJobs", {"Status": "DONE"}, "enum value set"),
    ("StartDataIngestionJob", {"DatasetName": "d", "RoleArn": "not-an-arn", "ClientToken": "t",
                               "IngestionInputConfiguration": {"S3InputConfiguration": {"Bucket": "b1b"}}},
     "RoleArn"),
    ("ListInferenceExecutions", {"InferenceSchedulerName": "s", "DataStartTimeAfter": "yesterday"},
     "Member must be a timestamp"),
    ("CreateInferenceScheduler", {"ModelName": "m", "InferenceSchedulerName": "s", "DataUploadFrequency": "PT7M",
                                  "DataInputConfiguration": {}, "DataOutputConfiguration": {
                                      "S3OutputConfiguration": {"Bucket": "b1b"}},
                                  "RoleArn": "arn:aws:iam::123456789012:role/r", "ClientToken": "t"}, "enum"),
    ("TagResource", {"ResourceArn": "arn:aws:lookoutequipment:us-east-1:123456789012:dataset/a/b",
                     "Tags": [{"Key": "aws:reserved", "Value": "v"}]}, "pattern"),
])
def test_validation_from_the_botocore_model(service, op, params, fragment):
    status, headers, body = raw(service.endpoint_url, json.dumps(params).encode(), TARGET + op)
    assert status == 400, body
    assert body["__type"] == headers["x-amzn-ErrorType"] == "ValidationException"
    assert fragment in body["message"]


def test_health_check(service):
    status, _h, body = raw(service.endpoint_url, b"", None, method="GET", path="/ping")
    assert (status, body) == (200, {"status": "ok"})


def test_wrong_path(service):
    status, _h, body = raw(service.endpoint_url, b"{}", TARGET + "ListDatasets", path="/other")
    assert status == 400 and body["__type"] == "UnknownOperationException"


@pytest.fixture
def signed_service(tmp_path):
    svc = LocalLookoutService(tmp_path / "state", (tmp_path / "store").as_uri() + "/",
                              access_keys={"AKIDLOCALTEST": "s3cr3t"}).start()
    yield svc
    svc.stop()


def test_sigv4_accepts_a_correctly_signed_request(signed_service):
    client = make_client(signed_service.endpoint_url, "AKIDLOCALTEST", "s3cr3t")
    assert client.list_datasets()["DatasetSummaries"] == []


@pytest.mark.parametrize(("key", "secret"), [("AKIDLOCALTEST", "wrong"), ("AKIDUNKNOWN", "s3cr3t")])
def test_sigv4_refuses_a_wrong_signature(signed_service, key, secret):
    client = make_client(signed_service.endpoint_url, key, secret)
    with pytest.raises(ClientError) as err:
        client.list_datasets()
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_sigv4_refuses_an_unsigned_request(signed_service):
    status, headers, body = raw(signed_service.endpoint_url, b"{}", TARGET + "ListDatasets")
    assert status == 403
    assert body["__type"] == headers["x-amzn-ErrorType"] == "AccessDeniedException"


def test_sigv4_refuses_a_tampered_body(signed_service):
    client = make_client(signed_service.endpoint_url, "AKIDLOCALTEST", "s3cr3t")

    def tamper(request, **_kwargs):
        request.body = b'{"MaxResults": 2}'  # changed after signing

    client.meta.events.register_first("before-send.lookoutequipment.ListDatasets", tamper)
    with pytest.raises(ClientError) as err:
        client.list_datasets(MaxResults=1)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
