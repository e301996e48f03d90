"""OPC-UA sessions on asyncua: client creation with the source's security and identity, connect and close,
node resolution (NodeId text or browse path), operation limits, batched reads and value helpers.

Shared by the connector (connectors.opcua.connector), write-back (connectors.opcua.write_back) and the CLI's
probe. The server's identity is checked inside CreateSession (connectors.opcua.trust)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import (
    BadIdentityTokenInvalid,
    BadIdentityTokenRejected,
    BadUserAccessDenied,
)

from agent.core.errors import ConnectionLost, ConnectorError
from agent.core.secrets import CredentialError, secret_path
from connectors.base import SourceStats, raise_if_cancelling
from connectors.opcua.config import NodeConfig, OpcUaSourceConfig, browse_elements
from connectors.opcua.trust import ServerTrust

_logger = logging.getLogger("connectors.opcua")  # one logger for the package (tests and operators filter on it)

# Read once per session; when a server does not publish its limits (0 or unreadable) these batches are safe
# for every server we know of (the spec's own examples use 1000; embedded servers are happy with 100s).
_FALLBACK_READ_BATCH = 500
_FALLBACK_MONITOR_BATCH = 500

_POLICY_CLASSES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}

# Status codes that say "this address is wrong or not allowed", as opposed to "the sensor is bad".
_ADDRESS_ERRORS = frozenset(
    {
        ua.StatusCodes.BadNodeIdUnknown,
        ua.StatusCodes.BadNodeIdInvalid,
        ua.StatusCodes.BadAttributeIdInvalid,
        ua.StatusCodes.BadNotReadable,
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadNoMatch,
        ua.StatusCodes.BadBrowseNameInvalid,
    }
)
_SEVERITY_MASK = 0xC000_0000  # 00 Good, 01 Uncertain, 1x Bad
_CODE_MASK = 0xFFFF_0000  # the code without its info bits
_AUTH_ERRORS = (BadUserAccessDenied, BadIdentityTokenRejected, BadIdentityTokenInvalid)
# Everything a lost or refused session can raise; anything else is a bug and goes to the supervisor.
_RETRIABLE = (OSError, TimeoutError, ua.UaError, ConnectionLost)

_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_AWARE = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --------------------------------------------------------------------------------------------- sessions


def _resolve_path(base_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else base_dir / path


def _read_password(config: OpcUaSourceConfig, base_dir: Path) -> str | None:
    """The configured password, read at connect time so a rotated secret is picked up on reconnect."""
    if config.password_env is not None:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ConnectorError(f"source {config.name}: environment variable {config.password_env} is not set")
        return value
    if config.password_file is not None:
        try:
            path = secret_path(config.password_file, base_dir)  # a file, or a systemd credential
            lines = path.read_text().splitlines()
        except (OSError, CredentialError) as exc:
            raise ConnectorError(f"source {config.name}: cannot read password_file {config.password_file}: "
                                 f"{exc}") from exc
        return lines[0] if lines else ""
    return None


def _application_uri(cert_path: Path) -> str:
    """The URI in the certificate's SubjectAltName (strict servers require the two to match)."""
    from cryptography import x509

    data = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return uris[0] if uris else f"urn:l4e-agent:{socket.gethostname()}"


def make_trust(
    config: OpcUaSourceConfig, base_dir: Path, state_dir: Path | None = None, stats: SourceStats | None = None
) -> ServerTrust:
    """The source's server-certificate trust (connectors.opcua.trust), its paths resolved against base_dir."""
    sec = config.security
    return ServerTrust(
        config.name,
        [_resolve_path(base_dir, p) for p in sec.trusted_paths()],
        _resolve_path(base_dir, sec.trust_dir) if sec.trust_dir is not None else None,
        first_use=sec.trust_on_first_use,
        state_dir=state_dir,
        stats=stats,
    )


async def _new_client(
    config: OpcUaSourceConfig, base_dir: Path, trust: ServerTrust | None = None, *, pin: bool = True
) -> Client:
    """A configured, not yet connected Client (security and identity applied; fetches server endpoints).

    With a secured policy the server certificate comes from the endpoint list and is judged by ``trust``
    inside CreateSession, before ActivateSession sends the identity (see connectors.opcua.trust); ``pin=False``
    judges without pinning (probe).
    """
    client = Client(config.endpoint, timeout=config.timeout_secs, watchdog_intervall=config.timeout_secs)
    client.name = client.description = f"l4e-agent {config.name}"
    client.application_uri = f"urn:l4e-agent:{socket.gethostname()}"
    client.product_uri = "urn:l4e-agent"
    # Bounded so that sessions we could not close (a crash, a cut cable) do not pile up on the server.
    client.session_timeout = 120_000
    sec = config.security
    if sec.policy != "None":
        assert sec.certificate is not None and sec.private_key is not None  # checked by SecurityConfig
        cert = _resolve_path(base_dir, sec.certificate)
        client.application_uri = _application_uri(cert)
        async with asyncio.timeout(config.timeout_secs * 2):
            await client.set_security(
                _POLICY_CLASSES[sec.policy],
                certificate=str(cert),
                private_key=str(_resolve_path(base_dir, sec.private_key)),
                mode=getattr(ua.MessageSecurityMode, sec.mode),
            )
        # set_security fetched endpoints; the session's ApplicationUri must still be the certificate's.
        client.application_uri = _application_uri(cert)
        client.certificate_validator = (trust or make_trust(config, base_dir)).validator(pin=pin)
    elif trust is not None:
        client.certificate_validator = trust.recorder()
    if config.username:
        client.set_user(config.username)
        password = _read_password(config, base_dir)
        if password is not None:
            client.set_password(password)
    return client


async def _open_client(
    config: OpcUaSourceConfig, base_dir: Path, trust: ServerTrust | None = None, *, pin: bool = True
) -> Client:
    """A connected Client with an active session; when this raises, nothing is left open.

    Raises UntrustedServer (retriable) when the server certificate is not trusted: no identity was sent.
    """
    client = await _new_client(config, base_dir, trust, pin=pin)
    try:
        # auto_reconnect=False: recovery is ours (fresh client, re-resolved nodes, our backoff and logging).
        async with asyncio.timeout(config.timeout_secs * 4):
            await client.connect(auto_reconnect=False)
    except BaseException:
        client.disconnect_socket()
        raise
    return client


async def _close(client: Client, timeout: float) -> None:
    """Disconnect and release every task and socket of ``client``; raises nothing but CancelledError."""
    try:
        async with asyncio.timeout(timeout):
            await client.disconnect()
    except (OSError, ua.UaError) as exc:  # a dead peer: timeout, connection reset, a Bad status; nothing to learn
        _logger.debug("disconnect: %r", exc)
    finally:
        client.disconnect_socket()
    # asyncua's disconnect() awaits its own tasks under `except CancelledError: pass`, which also swallows a
    # cancellation aimed at the caller. Cancellation is the connector's only stop signal: restore it.
    raise_if_cancelling()


async def _resolve_nodes(client: Client, nodes: Sequence[NodeConfig]) -> list[ua.NodeId | ua.StatusCode]:
    """NodeIds for ``nodes`` in order; browse paths are translated in one call, failures as StatusCodes."""
    out: list[ua.NodeId | ua.StatusCode] = [
        ua.NodeId.from_string(n.node_id) if n.node_id is not None else ua.StatusCode() for n in nodes
    ]
    paths = [(i, n.browse_path) for i, n in enumerate(nodes) if n.browse_path is not None]
    if not paths:
        return out
    bpaths = []
    for _, text in paths:
        elements = [
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                IsInverse=False,
                IncludeSubtypes=True,
                TargetName=name,
            )
            for name in (ua.QualifiedName(n, ns) for ns, n in browse_elements(text))
        ]
        bpaths.append(
            ua.BrowsePath(
                StartingNode=ua.NodeId(ua.ObjectIds.RootFolder), RelativePath=ua.RelativePath(Elements=elements)
            )
        )
    results = await client.uaclient.translate_browsepaths_to_nodeids(bpaths)
    for (i, _), result in zip(paths, results, strict=True):
        if result.StatusCode.is_good() and result.Targets:
            target = result.Targets[0].TargetId  # an ExpandedNodeId: keep the local NodeId part
            out[i] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
        else:
            out[i] = result.StatusCode if not result.StatusCode.is_good() else ua.StatusCode(ua.StatusCodes.BadNoMatch)
    return out


async def _operation_limits(client: Client) -> tuple[int, int]:
    """(MaxNodesPerRead, MaxMonitoredItemsPerCall) from ServerCapabilities, with fallbacks for 0/unknown."""
    ids = [
        ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
        ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall),
    ]
    try:
        values = await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
    except ua.UaStatusCodeError:
        values = []
    limits = []
    for dv, fallback in zip(values or [None, None], (_FALLBACK_READ_BATCH, _FALLBACK_MONITOR_BATCH), strict=True):
        value = dv.Value.Value if dv is not None and dv.StatusCode.is_good() and dv.Value else None
        limits.append(int(value) if isinstance(value, int) and value > 0 else fallback)
    return limits[0], limits[1]


async def _read_values(client: Client, node_ids: Sequence[ua.NodeId], batch: int) -> list[ua.DataValue]:
    """Value attribute of every node with both timestamps, in reads of at most ``batch`` nodes."""
    out: list[ua.DataValue] = []
    for start in range(0, len(node_ids), batch):
        params = ua.ReadParameters(
            MaxAge=0,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            NodesToRead=[
                ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value) for nid in node_ids[start : start + batch]
            ],
        )
        out.extend(await client.uaclient.read(params))
    return out


def _unix(dt: datetime) -> float:
    # asyncua decodes UTC DateTimes; naive ones are UTC by the spec.
    return (dt - (_EPOCH_NAIVE if dt.tzinfo is None else _EPOCH_AWARE)).total_seconds()


def _micros(dt: datetime | None) -> int | None:
    """A decoded DateTime as integer µs since the Unix epoch (``/ 1e6`` gives exactly ``_unix(dt)``), or None."""
    if dt is None:
        return None
    return (dt - (_EPOCH_NAIVE if dt.tzinfo is None else _EPOCH_AWARE)) // _MICROSECOND


def _as_float(value: Any) -> float | None:
    """Numeric OPC-UA scalars → float (bool → 0.0/1.0); anything else → None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _status_name(status: ua.StatusCode | None) -> str:
    return status.name if status is not None else "Good"


def _describe(exc: BaseException) -> str:
    """A one-line, operator-facing account of a session failure."""
    if isinstance(exc, _AUTH_ERRORS):
        return (
            f"the server rejected the user identity ({type(exc).__name__}): "
            "check username and password_file/password_env"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ConnectionLost) else f"{type(exc).__name__}: {text}"
