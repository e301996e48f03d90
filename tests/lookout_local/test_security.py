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

from agent.core.errors import StoreError
from agent.lookout_local import LocalLookoutService, serve_main
from agent.pipeline.store import FileStore

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


BAD_PREFIXES = ["../", "in/../../", "/etc/", "//", "in//x/", "in\\..\\x/", ".//", "in/./x/"]
ROLE = "arn:aws:iam::123456789012:role/l4e"


def prefix_requests(prefix: str) -> dict[str, dict]:
    """Every operation and place where a request carries an S3 prefix, with ``prefix`` there."""
    s3 = {"Bucket": "plant-data", "Prefix": prefix}
    return {
        "ingestion input": ("start_data_ingestion_job", {
            "DatasetName": "d", "RoleArn": ROLE, "IngestionInputConfiguration": {"S3InputConfiguration": s3}}),
        "labels": ("create_model", {"ModelName": "m", "DatasetName": "d",
                                    "LabelsInputConfiguration": {"S3InputConfiguration": s3}}),
        "scheduler input": ("create_inference_scheduler", {
            "ModelName": "m", "InferenceSchedulerName": "s", "DataUploadFrequency": "PT5M", "RoleArn": ROLE,
            "DataInputConfiguration": {"S3InputConfiguration": s3},
            "DataOutputConfiguration": {"S3OutputConfiguration": {"Bucket": "plant-data", "Prefix": "out/"}}}),
        "scheduler output": ("update_inference_scheduler", {
            "InferenceSchedulerName": "s",
            "DataOutputConfiguration": {"S3OutputConfiguration": s3}}),
    }


@pytest.fixture
def open_service(tmp_path):
    svc = LocalLookoutService(tmp_path / "state", (tmp_path / "store").as_uri() + "/").start()
    yield svc
    svc.stop()


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_a_prefix_that_climbs_out_of_the_bucket_is_a_validation_error(open_service, prefix):
    """Checked before anything else (the old service started the ingestion job, 200, and walked the parent
    folders, or the whole filesystem for '//')."""
    client = make_client(open_service.endpoint_url)
    client.create_dataset(DatasetName="d", DatasetSchema={"InlineDataSchema": json.dumps({"Components": [
        {"ComponentName": "pump", "Columns": [{"Name": "ts", "Type": "DATETIME"},
                                              {"Name": "p", "Type": "DOUBLE"}]}]})})
    for where, (method, params) in prefix_requests(prefix).items():
        with pytest.raises(ClientError) as err:
            getattr(client, method)(**params)
        error = err.value.response["Error"]
        assert error["Code"] == "ValidationException", (where, error)
        assert "Prefix" in error["Message"], (where, error)
    assert client.list_data_ingestion_jobs()["DataIngestionJobSummaries"] == []


def test_a_component_named_dot_dot_is_refused(open_service):
    client = make_client(open_service.endpoint_url)
    with pytest.raises(ClientError) as err:
        client.create_dataset(DatasetName="d", DatasetSchema={"InlineDataSchema": json.dumps({"Components": [
            {"ComponentName": "..", "Columns": [{"Name": "ts", "Type": "DATETIME"},
                                                {"Name": "p", "Type": "DOUBLE"}]}]})})
    assert err.value.response["Error"]["Code"] == "ValidationException"


@pytest.fixture
def jail(tmp_path):
    """A bucket folder (FileStore root) with one object, a folder outside it with a secret, and symlinks from
    inside the bucket to the outside: a file link, a folder link, and a link inside the bucket (kept)."""
    root = tmp_path / "store" / "plant-data"
    (root / "in").mkdir(parents=True)
    (root / "in" / "pump_1.csv").write_text("ok\n")
    outside = tmp_path / "outside"
    (outside / "in").mkdir(parents=True)
    (outside / "in" / "pump_secret.csv").write_text("secret\n")
    (root / "in" / "pump_link.csv").symlink_to(outside / "in" / "pump_secret.csv")
    (root / "in" / "pump_inner.csv").symlink_to(root / "in" / "pump_1.csv")
    (root / "escape").symlink_to(outside)
    (root / "in" / "sub").symlink_to(outside / "in")
    return FileStore(root)


@pytest.mark.parametrize("prefix", ["../", "../../outside/", "//", "/", "in/../", "in\\", "in\x00"])
def test_the_folder_store_never_lists_outside_its_root(jail, prefix):
    with pytest.raises(StoreError):
        list(jail.list(prefix))


@pytest.mark.parametrize("key", ["../outside/in/pump_secret.csv", "/etc/passwd", "in//pump_1.csv",
                                 "in\\pump_1.csv", "in/pump_1.csv\x00", "in/./pump_1.csv"])
def test_the_folder_store_refuses_keys_that_leave_or_alias_its_root(jail, key):
    for call in (jail.get, jail.delete, lambda k: jail.put(k, b"x")):
        with pytest.raises(StoreError):
            call(key)


def test_symlinks_inside_the_folder_store_are_not_followed_out_of_it(jail):
    assert list(jail.list("")) == ["in/pump_1.csv", "in/pump_inner.csv"]
    assert list(jail.list("in/pump")) == ["in/pump_1.csv", "in/pump_inner.csv"]
    assert list(jail.list("escape/in/")) == [] and list(jail.list("in/sub/")) == []
    assert jail.get("in/pump_inner.csv") == b"ok\n"
    for key in ("in/pump_link.csv", "escape/in/pump_secret.csv", "in/sub/pump_secret.csv"):
        with pytest.raises(StoreError):
            jail.get(key)
    with pytest.raises(StoreError):
        jail.put("escape/in/planted.csv", b"x")
    assert not (jail.root.parent.parent / "outside" / "in" / "planted.csv").exists()


def test_a_signature_that_leaves_the_target_out_is_refused(signed_service):
    """Signed without X-Amz-Target (the header added afterwards): the signature would fit any operation taking
    the same body, so a captured DescribeDataset could be replayed as a DeleteDataset."""
    endpoint = signed_service.endpoint_url
    make_client(endpoint, KEY_ID, SECRET).create_dataset(DatasetName="victim")
    body = json.dumps({"DatasetName": "victim"}).encode()
    request = AWSRequest(method="POST", url=endpoint + "/", data=body,
                         headers={"Content-Type": "application/x-amz-json-1.0"})
    SigV4Auth(Credentials(KEY_ID, SECRET), "lookoutequipment", "us-east-1").add_auth(request)
    headers = [("Host", urlparse(endpoint).netloc), *request.headers.items(),
               ("X-Amz-Target", TARGET + "DeleteDataset")]
    status, answer = send(endpoint, headers, body)
    assert (status, answer.get("__type")) == (403, "AccessDeniedException"), answer
    assert "x-amz-target must be signed" in answer["message"]
    assert make_client(endpoint, KEY_ID, SECRET).describe_dataset(DatasetName="victim")["DatasetName"] == "victim"
