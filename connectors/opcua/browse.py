"""Walking a server's address space for discovery (``l4e-agent discover opcua``): paged, batched, bounded.

- ``walk`` goes breadth-first from the Objects folder over hierarchical references (forward, subtypes
  included; Objects and Variables only). Each level is browsed in requests of many nodes at once, at most
  ``max_refs`` references per node per answer; a node with more gets a continuation point, followed with
  BrowseNext, and every continuation point still open when the walk stops early is released (servers keep only
  a few per session). The walk is bounded in depth and in node count.
- Nodes of namespace 0 (the Server object and the standard's other nodes) are not walked: they are the
  server's own, not the plant's.
- HasProperty children are not nodes of the tree: they are recorded as the parent's properties (so a
  variable's EngineeringUnits is found without a browse per variable).
- ``read_variables`` reads DataType, ValueRank, AccessLevel, UserAccessLevel and the EngineeringUnits property
  of many variables in reads of ``batch`` attributes each (the server's MaxNodesPerRead).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from asyncua import Client, ua

_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_BROWSE_BATCH = 200  # nodes per Browse request: far below any server's MaxNodesPerBrowse we know of
_PARALLEL_READS = 4  # Read requests in flight at once


class WalkLimit(Exception):
    """The walk met ``max_nodes``: the tree is larger than the bound (nothing is partial: the caller stops)."""


class BrowseRefused(Exception):
    """The server refused to browse: a Browse service fault (BadUserAccessDenied, …) or a bad status for the
    Objects folder itself."""


@dataclass
class BrowsedNode:
    """One node of the tree: its NodeId, class and path of browse names (no namespace) below Objects."""

    node_id: ua.NodeId
    node_class: ua.NodeClass
    path: tuple[str, ...]
    properties: dict[str, ua.NodeId] = field(default_factory=dict)  # browse name → property NodeId


@dataclass
class Walk:
    nodes: list[BrowsedNode]
    not_walked_depth: int = 0  # nodes at max_depth whose children were not browsed
    not_browsable: list[tuple[str, str]] = field(default_factory=list)  # (path, status name)
    requests: int = 0  # Browse + BrowseNext requests sent
    continued: int = 0  # of which BrowseNext (a node had more references than one answer carries)


@dataclass
class VariableInfo:
    """A variable's attributes as read; ``error`` names the status when DataType or ValueRank was unreadable."""

    data_type: ua.NodeId | None = None
    value_rank: int | None = None
    readable: bool = True  # CurrentRead set in AccessLevel and UserAccessLevel
    unit: str | None = None
    error: str | None = None


def _local(target: ua.ExpandedNodeId) -> ua.NodeId:
    return ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)


def _description(node_id: ua.NodeId) -> ua.BrowseDescription:
    return ua.BrowseDescription(
        NodeId=node_id,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
        IncludeSubtypes=True,
        NodeClassMask=ua.NodeClass.Object | ua.NodeClass.Variable,
        ResultMask=ua.BrowseResultMask.All,
    )


async def _release(client: Client, points: list[bytes]) -> None:
    if points:
        await client.uaclient.browse_next(ua.BrowseNextParameters(ReleaseContinuationPoints=True,
                                                                  ContinuationPoints=points))


async def _browse_chunk(client: Client, parents: Sequence[BrowsedNode], max_refs: int, budget: int, walk: Walk,
                        ) -> list[list[ua.ReferenceDescription] | str]:
    """Every reference of every parent (paged to the end), or the status name when a parent's browse failed.

    Raises WalkLimit once more than ``budget`` references came back; open continuation points are released
    whatever happens."""
    params = ua.BrowseParameters(RequestedMaxReferencesPerNode=max_refs,
                                 NodesToBrowse=[_description(p.node_id) for p in parents])
    results = await client.uaclient.browse(params)
    walk.requests += 1
    out: list[list[ua.ReferenceDescription] | str] = []
    pending: dict[bytes, int] = {}  # continuation point → index of its parent
    for i, result in enumerate(results):
        if not result.StatusCode.is_good():
            out.append(result.StatusCode.name)
            continue
        out.append(list(result.References or []))
        if result.ContinuationPoint:
            pending[result.ContinuationPoint] = i
    count = sum(len(refs) for refs in out if isinstance(refs, list))
    try:
        while pending:
            if count > budget:
                raise WalkLimit
            points = list(pending)
            more = await client.uaclient.browse_next(ua.BrowseNextParameters(ReleaseContinuationPoints=False,
                                                                             ContinuationPoints=points))
            walk.requests += 1
            walk.continued += 1
            following: dict[bytes, int] = {}
            for point, result in zip(points, more, strict=True):
                i = pending[point]
                if not result.StatusCode.is_good():  # e.g. BadContinuationPointInvalid: the server dropped it
                    out[i] = result.StatusCode.name
                    continue
                refs = out[i]
                assert isinstance(refs, list)
                refs.extend(result.References or [])
                count += len(result.References or [])
                if result.ContinuationPoint:
                    following[result.ContinuationPoint] = i
            pending = following
    finally:
        if pending:  # stopped early: give the server its continuation points back
            with contextlib.suppress(Exception):  # the session may be gone: the server frees them with it
                await asyncio.shield(_release(client, list(pending)))
    if count > budget:
        raise WalkLimit
    return out


async def walk(client: Client, descend: Callable[[tuple[str, ...], ua.NodeClass], bool], *, max_depth: int,
               max_nodes: int, max_refs: int = 1000) -> Walk:
    """The tree below Objects, breadth-first. ``descend(path, node_class)`` says whether a node's children
    are wanted (the root's always are). Raises BrowseRefused when Objects itself cannot be browsed, WalkLimit
    past ``max_nodes`` nodes."""
    root = BrowsedNode(ua.NodeId(ua.ObjectIds.ObjectsFolder), ua.NodeClass.Object, ())
    result = Walk(nodes=[])
    seen: set[ua.NodeId] = {root.node_id}
    level = [root]
    depth = 0
    while level:
        following: list[BrowsedNode] = []
        for start in range(0, len(level), _BROWSE_BATCH):
            parents = level[start:start + _BROWSE_BATCH]
            try:
                answers = await _browse_chunk(client, parents, max_refs, max_nodes - len(result.nodes), result)
            except ua.UaStatusCodeError as exc:  # a service fault: the session may not browse at all
                raise BrowseRefused(f"{type(exc).__name__} ({exc})") from None
            for parent, refs in zip(parents, answers, strict=True):
                if isinstance(refs, str):
                    if parent is root:
                        raise BrowseRefused(refs)
                    result.not_browsable.append(("/".join(parent.path), refs))
                    continue
                for ref in refs:
                    target = ref.NodeId
                    if getattr(target, "ServerIndex", 0):
                        continue  # another server's node
                    node_id = _local(target)
                    if ref.ReferenceTypeId == _HAS_PROPERTY:
                        parent.properties.setdefault(ref.BrowseName.Name, node_id)
                        continue
                    if target.NamespaceIndex == 0:
                        continue  # the standard's own nodes (the Server object, …), not the plant's
                    if node_id in seen:  # reachable twice (Organizes and HasComponent): the first path wins
                        continue
                    seen.add(node_id)
                    child = BrowsedNode(node_id, ref.NodeClass, (*parent.path, ref.BrowseName.Name))
                    result.nodes.append(child)
                    if len(result.nodes) > max_nodes:
                        raise WalkLimit
                    if descend(child.path, child.node_class):
                        if depth + 1 < max_depth:
                            following.append(child)
                        else:
                            result.not_walked_depth += 1
        level = following
        depth += 1
    return result


_ATTRIBUTES = (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank, ua.AttributeIds.AccessLevel,
               ua.AttributeIds.UserAccessLevel)


async def read_variables(client: Client, variables: Sequence[BrowsedNode], batch: int) -> list[VariableInfo]:
    """The attributes discovery needs of every variable, in reads of at most ``batch`` attributes."""
    items: list[tuple[int, str, ua.ReadValueId]] = []
    for i, var in enumerate(variables):
        for attr in _ATTRIBUTES:
            items.append((i, attr.name, ua.ReadValueId(NodeId=var.node_id, AttributeId=attr)))
        unit = var.properties.get("EngineeringUnits")
        if unit is not None:
            items.append((i, "unit", ua.ReadValueId(NodeId=unit, AttributeId=ua.AttributeIds.Value)))
    chunks = [items[start:start + batch] for start in range(0, len(items), batch)]
    gate = asyncio.Semaphore(_PARALLEL_READS)

    async def read(chunk):
        async with gate:
            return await client.uaclient.read(ua.ReadParameters(
                MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Neither,
                NodesToRead=[rv for _, _, rv in chunk]))

    answers = await asyncio.gather(*(read(chunk) for chunk in chunks))
    infos = [VariableInfo() for _ in variables]
    for chunk, values in zip(chunks, answers, strict=True):
        for (i, what, _), dv in zip(chunk, values, strict=True):
            _apply(infos[i], what, dv)
    return infos


def _apply(info: VariableInfo, what: str, dv: ua.DataValue) -> None:
    good = dv.StatusCode is None or dv.StatusCode.is_good()
    value = dv.Value.Value if good and dv.Value is not None else None
    if what == "unit":
        text = getattr(getattr(value, "DisplayName", None), "Text", None)
        info.unit = text or None
        return
    if what in ("AccessLevel", "UserAccessLevel"):
        if isinstance(value, int) and not value & ua.AccessLevel.CurrentRead.mask:
            info.readable = False
        return
    if not good:
        info.error = info.error or dv.StatusCode.name
    elif what == "DataType":
        info.data_type = value
    elif what == "ValueRank":
        info.value_rank = value


def type_name(data_type: ua.NodeId | None) -> str:
    """'Double' for a standard type, the NodeId text for a server's own type."""
    if data_type is None:
        return "unknown"
    if data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int):
        return ua.ObjectIdNames.get(data_type.Identifier, data_type.to_string())
    return data_type.to_string()
