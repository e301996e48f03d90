"""The local service under hostile requests, over real HTTP: repeated signed headers, signatures scoped to
another region or service, unsigned payloads, S3 prefixes that climb out of the folder store."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.lookout_local import LocalLookoutService

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
