"""AWS JSON 1.0 wire format: request parsing, response projection, error bodies.

A request is ``POST /`` with ``X-Amz-Target: AWSLookoutEquipmentFrontendService.<Operation>`` and a JSON
object body (``application/x-amz-json-1.0``). A response is a JSON object; timestamps are epoch seconds
(numbers). An error is ``{"__type": code, "message": text}`` with the same code in ``x-amzn-ErrorType``,
which is where botocore's JSON parser looks for it.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

import botocore.session

from agent.lookout_local.errors import (
    AccessDeniedException,
    ApiError,
    SerializationException,
    UnknownOperationException,
)

TARGET_PREFIX = "AWSLookoutEquipmentFrontendService."
CONTENT_TYPE = "application/x-amz-json-1.0"


@functools.lru_cache(maxsize=1)
def service_model():
    """The installed botocore model of ``lookoutequipment`` (API version 2020-12-15)."""
    return botocore.session.get_session().get_service_model("lookoutequipment")


# Headers whose value decides who calls, what is done or where the body ends: each may arrive once. Two copies
# would let the signature check read one and the dispatcher another (a DescribeDataset signature carrying a
# second X-Amz-Target: …DeleteDataset).
SINGLE_HEADERS = frozenset({"authorization", "host", "x-amz-target", "content-type", "content-length", "x-amz-date",
                            "x-amz-content-sha256", "x-amz-security-token"})
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]+)")


def header_view(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request's headers as {lower-case name: value}, the one view that both the signature check and the
    dispatcher read. Raises AccessDeniedException when a header of SINGLE_HEADERS, or one the Authorization
    header lists as signed, arrives more than once. Other repeated headers are left out (nothing reads them)."""
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name.lower(), []).append(value)
    guarded = set(SINGLE_HEADERS)
    for auth in values.get("authorization", ()):
        for match in _SIGNED_HEADERS.finditer(auth):
            guarded.update(match.group(1).lower().split(";"))
    repeated = sorted(name for name, copies in values.items() if len(copies) > 1 and name in guarded)
    if repeated:
        raise AccessDeniedException(f"header(s) {', '.join(repeated)} sent more than once; each may appear once")
    return {name: copies[0] for name, copies in values.items() if len(copies) == 1}


def operation_name(target: str | None, supported: set[str]) -> str:
    """The operation named by an X-Amz-Target header. Raises UnknownOperationException otherwise."""
    if not target or not target.startswith(TARGET_PREFIX):
        raise UnknownOperationException(f"missing or foreign X-Amz-Target header: {target!r}; expected "
                                        f"'{TARGET_PREFIX}<Operation>'")
    name = target[len(TARGET_PREFIX):]
    if name not in supported:
        raise UnknownOperationException(f"operation {name!r} is not supported by this local service")
    return name


def parse_body(body: bytes) -> dict:
    """The request's JSON object (an empty body is ``{}``). Raises SerializationException when malformed."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerializationException(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SerializationException("request body must be a JSON object")
    return value


def project(shape, value: Any) -> Any:
    """Keep only what ``shape`` declares (internal fields are dropped), recursively; None members vanish."""
    if shape is None or value is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        out = {}
        for name, member in shape.members.items():
            if value.get(name) is not None:
                out[name] = project(member, value[name])
        return out
    if kind == "list" and isinstance(value, list):
        return [project(shape.member, item) for item in value]
    return value


def encode(shape, value: dict) -> bytes:
    return json.dumps(project(shape, value) if shape is not None else {}).encode()


def error_body(error: ApiError) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for an error in the AWS JSON 1.0 shape."""
    body = json.dumps({"__type": error.code, "message": error.message, "Message": error.message}).encode()
    headers = {"x-amzn-ErrorType": error.code, "Content-Type": CONTENT_TYPE,
               "x-amzn-RequestId": str(uuid.uuid4())}
    return error.status, headers, body
