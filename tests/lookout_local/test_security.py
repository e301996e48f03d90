"""The local service under hostile requests, over real HTTP: repeated signed headers, signatures scoped to
another region or service, unsigned payloads, S3 prefixes that climb out of the folder store."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from agent.lookout_local import LocalLookoutService, serve_main

from .conftest import make_client

TARGET = "AWSLookoutEquipmentFrontendService."
KEY_ID, SECRET = "AKIDLOCALTEST", "s3cr3t"


@pytest.fixture
def signed_service(tmp_path):
    svc = LocalLookoutService(tmp_path / "state", (tmp_path / "store").as_uri() + "/",
                              access_keys={KEY_ID: SECRET}).start()
    yield svc
    svc.stop()


def signed_headers(endpoint: str, op: str, body: bytes, region: str = "us-east-1",
                   service: str = "lookoutequipment", extra: dict | None = None) -> list[tuple[str, str]]:
    """The headers botocore's SigV4Auth puts on ``POST /`` for ``op`` (Host, X-Amz-Date, Authorization, …)."""
    request = AWSRequest(method="POST", url=endpoint + "/", data=body,
                         headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET + op,
                                  **(extra or {})})
    SigV4Auth(Credentials(KEY_ID, SECRET), service, region).add_auth(request)
    # SigV4Auth signs the host from the URL; http.client would add it, here it is sent explicitly
    return [("Host", urlparse(endpoint).netloc), *request.headers.items()]


def send(endpoint: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, dict]:
    """POST / with exactly these headers, in this order (repeats kept), plus Content-Length; (status, JSON)."""
    url = urlparse(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def test_a_correctly_signed_raw_request_is_served(signed_service):
    """The helpers above make requests the service accepts: the refusals below are for the added copy."""
    body = b"{}"
    status, answer = send(signed_service.endpoint_url, signed_headers(signed_service.endpoint_url, "ListDatasets",
                                                                      body), body)
    assert (status, answer) == (200, {"DatasetSummaries": []})


@pytest.mark.parametrize(("name", "value"), [
    ("X-Amz-Target", TARGET + "DeleteDataset"),
    ("Host", "other.example:80"),
    ("Content-Type", "application/json"),
    ("X-Amz-Date", "20200101T000000Z"),
    ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDOTHER/20200101/us-east-1/lookoutequipment/aws4_request, "
                      "SignedHeaders=host, Signature=" + "0" * 64),
])
def test_a_repeated_signed_header_is_refused(signed_service, name, value):
    """A DescribeDataset signature replayed with a second copy of a signed header placed before the signed one:
    refused (403); the dataset is still there (the old service deleted it when the copy was X-Amz-Target)."""
    endpoint = signed_service.endpoint_url
    client = make_client(endpoint, KEY_ID, SECRET)
    client.create_dataset(DatasetName="victim")
    body = json.dumps({"DatasetName": "victim"}).encode()
    headers = signed_headers(endpoint, "DescribeDataset", body)
    status, answer = send(endpoint, [(name, value), *headers], body)
    assert (status, answer.get("__type")) == (403, "AccessDeniedException"), answer
    assert name.lower() in answer["message"]
    assert client.describe_dataset(DatasetName="victim")["DatasetName"] == "victim"


@pytest.mark.parametrize(("region", "service"), [("eu-west-1", "lookoutequipment"), ("us-east-1", "s3"),
                                                 ("us-east-1", "execute-api")])
def test_a_signature_scoped_to_another_region_or_service_is_refused(signed_service, region, service):
    body = b"{}"
    headers = signed_headers(signed_service.endpoint_url, "ListDatasets", body, region=region, service=service)
    status, answer = send(signed_service.endpoint_url, headers, body)
    assert (status, answer.get("__type")) == (403, "AccessDeniedException"), answer
    assert "Credential should be scoped" in answer["message"]


def test_boto3_in_another_region_is_refused_and_in_the_pinned_one_served(tmp_path):
    svc = LocalLookoutService(tmp_path / "state", (tmp_path / "store").as_uri() + "/", region="eu-central-1",
                              access_keys={KEY_ID: SECRET}).start()
    try:
        def client(region):
            return boto3.client("lookoutequipment", endpoint_url=svc.endpoint_url, region_name=region,
                                aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                config=Config(retries={"total_max_attempts": 1}))

        with pytest.raises(ClientError) as err:
            client("us-east-1").list_datasets()
        assert err.value.response["Error"]["Code"] == "AccessDeniedException"
        assert client("eu-central-1").list_datasets()["DatasetSummaries"] == []
    finally:
        svc.stop()


def test_unsigned_payload_is_refused(signed_service):
    """A signature over UNSIGNED-PAYLOAD leaves the body free: a DescribeDataset signature would carry any body
    (here a DeleteDataset's parameters). Refused; the dataset stays."""
    endpoint = signed_service.endpoint_url
    make_client(endpoint, KEY_ID, SECRET).create_dataset(DatasetName="victim")
    signed_body = json.dumps({"DatasetName": "other"}).encode()
    headers = signed_headers(endpoint, "DeleteDataset", signed_body, extra={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    status, answer = send(endpoint, headers, json.dumps({"DatasetName": "victim"}).encode())
    assert (status, answer.get("__type")) == (403, "AccessDeniedException"), answer
    assert "UNSIGNED-PAYLOAD" in answer["message"]
    assert make_client(endpoint, KEY_ID, SECRET).describe_dataset(DatasetName="victim")["DatasetName"] == "victim"


def test_serve_refuses_a_malformed_region(tmp_path):
    assert serve_main(["--state-dir", str(tmp_path), "--region", "mars"]) == 78
