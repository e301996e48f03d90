"""OPC-UA write-back (the write_back alarm hook): one write per call on a fresh session, the value coerced to
the node's own VariantType (read first) with a clear error when it does not fit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from agent.core.errors import ConnectionLost, ConnectorError
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.session import (
    _ADDRESS_ERRORS,
    _CODE_MASK,
    _close,
    _describe,
    _open_client,
    make_trust,
)

# --------------------------------------------------------------------------------------------- write-back


_INT_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


def _coerce(value: float | int | bool, vtype: ua.VariantType, node_id: str) -> Any:
    """``value`` in the node's own type; a ConnectorError when it does not fit."""
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if vtype in _INT_RANGES:
        if not float(value).is_integer():
            raise ConnectorError(f"{node_id} is {vtype.name}: {value!r} is not a whole number")
        low, high = _INT_RANGES[vtype]
        if not low <= int(value) <= high:
            raise ConnectorError(f"{node_id} is {vtype.name}: {value!r} is out of range")
        return int(value)
    raise ConnectorError(f"{node_id} is {vtype.name}: only numeric and Boolean nodes can be written")


async def _variant_type(client: Client, node_id: ua.NodeId, text: str) -> ua.VariantType:
    """The node's value type: the current value's variant type, else its built-in DataType."""
    value, dtype = await client.uaclient.read(
        ua.ReadParameters(
            NodesToRead=[
                ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
                ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.DataType),
            ]
        )
    )
    if value.StatusCode.value & _CODE_MASK in _ADDRESS_ERRORS:
        raise ConnectorError(f"{text}: {value.StatusCode.name}")
    if value.Value is not None and value.Value.VariantType not in (ua.VariantType.Null, None):
        return value.Value.VariantType
    dt = dtype.Value.Value if dtype.Value is not None else None
    if isinstance(dt, ua.NodeId) and dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int):
        try:
            return ua.VariantType(dt.Identifier)
        except ValueError:
            pass
    raise ConnectorError(f"{text}: cannot tell its data type ({dt})")


async def write_opcua(
    config: OpcUaSourceConfig, node_id: str, value: float | int | bool, base_dir: Path, state_dir: Path | None = None
) -> None:
    """Connect, write ``value`` to ``node_id`` in the node's own data type, disconnect.

    Same endpoint, security, identity and server-certificate trust (the pin in ``state_dir``) as the source.
    Raises ConnectionLost when the server cannot be reached or is not trusted (retriable) and
    ConnectorError when the write itself is refused or the value does not fit.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConnectorError(f"{node_id}: refusing to write {value!r}")
    nid = ua.NodeId.from_string(node_id)
    client: Client | None = None
    try:
        client = await _open_client(config, base_dir, make_trust(config, base_dir, state_dir))
        vtype = await _variant_type(client, nid, node_id)
        variant = ua.Variant(_coerce(value, vtype, node_id), vtype)
        results = await client.uaclient.write_attributes([nid], [ua.DataValue(variant)], ua.AttributeIds.Value)
        if not results[0].is_good():
            raise ConnectorError(f"write to {node_id} refused: {results[0].name}")
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise ConnectionLost(f"write to {node_id} on {config.endpoint}: {_describe(exc)}") from exc
    finally:
        if client is not None:
            await _close(client, config.timeout_secs)
