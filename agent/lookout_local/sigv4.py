"""Optional AWS Signature Version 4 verification against configured access keys.

The canonical request is rebuilt from what arrived (method, path, query, the headers the client listed
as signed, the body) and signed again with botocore's own SigV4Auth, using the secret of the access key
named in the credential scope; the signatures must be equal (compared in constant time). Host, X-Amz-Date
and X-Amz-Target must be among the signed headers. The scope must
name the service's own region (``lookout serve --region``, default us-east-1) and SERVICE, as AWS requires:
a signature made for another region or service is not replayable here. The payload is always signed:
``X-Amz-Content-SHA256``, when sent, must be the body's SHA-256 (``UNSIGNED-PAYLOAD`` is refused).
X-Amz-Date must be within 15 minutes of the wall clock (not the service's scaled clock: clients sign with
real time). Any failure is AccessDeniedException (403).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.lookout_local.errors import AccessDeniedException

_AUTH = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
                   r"SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})\s*$")
MAX_SKEW_SECS = 15 * 60
# what a signature must cover: the target (else a captured DescribeDataset could be replayed as a DeleteDataset
# with the same body), the time (the replay window) and the host; boto3 and AWS's SDKs sign all three
MUST_SIGN = ("host", "x-amz-date", "x-amz-target")
SERVICE = "lookoutequipment"  # the signing name in botocore's model: what boto3 puts in the credential scope


def parse_access_keys(pairs: list[str]) -> dict[str, str]:
    """``["ID:SECRET", ...]`` → {ID: SECRET}. Raises ValueError for a pair without ':'."""
    keys = {}
    for pair in pairs:
        key_id, sep, secret = pair.partition(":")
        if not sep or not key_id or not secret:
            raise ValueError(f"access key {pair.split(':')[0]!r}: expected ID:SECRET")
        keys[key_id] = secret
    return keys


def verify(keys: dict[str, str], method: str, path: str, headers: dict[str, str], body: bytes,
           expected_region: str = "us-east-1") -> str:
    """The access key id of a request correctly signed for ``expected_region`` and SERVICE. Raises AccessDeniedException
    otherwise. ``headers`` is protocol.header_view's {lower-case name: value}."""
    auth = headers.get("authorization", "")
    m = _AUTH.match(auth)
    if not m:
        raise AccessDeniedException("Missing Authentication Token" if not auth else "Malformed Authorization header")
    key_id, date, region, service, signed, signature = m.groups()
    secret = keys.get(key_id)
    if secret is None:
        raise AccessDeniedException("The security token included in the request is invalid.")
    if region != expected_region:  # AWS's wording
        raise AccessDeniedException(f"Credential should be scoped to a valid region, not '{region}'; this "
                                    f"service signs for '{expected_region}'.")
    if service != SERVICE:
        raise AccessDeniedException(f"Credential should be scoped to correct service: '{SERVICE}'.")
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise AccessDeniedException("X-Amz-Date is missing or malformed") from None
    if abs(when - time.time()) > MAX_SKEW_SECS or amz_date[:8] != date:
        raise AccessDeniedException("Signature expired or X-Amz-Date does not match the credential scope")
    names = signed.split(";")
    unsigned = [name for name in MUST_SIGN if name not in names]
    if unsigned:
        raise AccessDeniedException(f"header(s) {', '.join(unsigned)} must be signed")
    missing = [n for n in names if n not in headers]
    if missing:
        raise AccessDeniedException(f"signed headers missing from the request: {missing}")
    content_sha = headers.get("x-amz-content-sha256")
    # the canonical request takes this header's value as the payload hash: UNSIGNED-PAYLOAD (or any value but
    # the body's own hash) would leave the body out of the signature
    if content_sha == "UNSIGNED-PAYLOAD":
        raise AccessDeniedException("UNSIGNED-PAYLOAD is refused: the body must be signed")
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        raise AccessDeniedException("X-Amz-Content-SHA256 does not match the body")
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}",
                         headers={n: headers[n] for n in names}, data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, secret), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        raise AccessDeniedException("The request signature we calculated does not match the signature you "
                                    "provided. Check your AWS Secret Access Key and signing method.")
    return key_id
