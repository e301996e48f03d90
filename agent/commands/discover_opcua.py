"""``l4e-agent discover opcua ENDPOINT --browse PATTERN...``: an OPC-UA server's variables → a checked asset file.

The walk (connectors.opcua.browse) starts at Objects and goes only where a pattern can still match
(agent.commands.path_glob). Kept: variables whose browse path matches a pattern and that are numeric or
boolean scalars the session may read. Skipped, each with its reason: strings, arrays, structures and other
non-numeric types, variables without read access, variables whose attributes could not be read.

Naming: a sensor is its browse name made valid for L4E (A-Z a-z 0-9 . _ -); when two share it, the parent's
name is put in front (``Pump1_Flow``), and so on up the path. A component is the parent folder's name
(``--component-by parent``, default) or one per pattern (``--component-by pattern``). Each node line carries
a comment: browse path, data type and engineering unit (when the server has one).

``--merge FILE`` adds nodes that FILE's source (same ``--source`` name) does not have yet, and their sensors to
[components]; everything already in FILE, comments and order included, stays as it is.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agent.commands import path_glob
from agent.commands.asset_writer import (
    EX_DATAERR,
    EX_UNAVAILABLE,
    EX_USAGE,
    DiscoveryError,
    check_and_write,
    new_document,
    safe_name,
    string_array,
    unique_names,
)

# Standard numeric and boolean DataTypes (namespace 0): Boolean, SByte … Double, Number, Integer, UInteger,
# Duration. Anything else (String, DateTime, ByteString, structures, a server's own types) is not a sensor.
_NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 26, 27, 28, 290})
_SCALAR = -1  # ValueRank of a scalar


@dataclass
class Found:
    """One kept variable."""

    path: tuple[str, ...]
    node_id: str
    type_name: str
    unit: str | None
    pattern: int  # index of the first pattern it matched


@dataclass
class Discovery:
    kept: list[Found]
    skipped: list[tuple[str, str]]  # (path, reason)
    walked: int
    requests: int
    continued: int
    seconds: float
    not_walked_depth: int


def source_config(args):
    """The [[sources]] entry the command line describes (security and identity as probe uses them)."""
    from pydantic import ValidationError

    from connectors.opcua.config import OpcUaSourceConfig

    data = {"name": args.source, "kind": "opcua", "endpoint": args.endpoint, "timeout_secs": args.timeout,
            # the model wants at least one node; discovery reads none through it
            "nodes": [{"sensor": "discover", "node_id": "i=85"}]}
    security = {k: v for k, v in (("policy", args.policy), ("mode", args.mode),
                                  ("certificate", _absolute(args.certificate)),
                                  ("private_key", _absolute(args.private_key)),
                                  ("server_certificate", _absolute(args.server_certificate))) if v is not None}
    if security:
        data["security"] = security
    for key in ("username", "password_env"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.password_file is not None:
        data["password_file"] = _absolute(args.password_file)
    try:
        return OpcUaSourceConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'source'}: {e['msg']}" for e in exc.errors())
        raise DiscoveryError(problems, EX_USAGE) from None


def _absolute(path: Path | None) -> str | None:
    return str(path.resolve()) if path is not None else None


async def discover(args) -> Discovery:
    """Connect, walk, read and select; raises DiscoveryError with the exit code."""
    from asyncua import ua

    from agent.core.errors import ConnectionLost
    from connectors.opcua import browse, session

    config = source_config(args)
    patterns = [path_glob.split(p) for p in args.browse]
    started = time.monotonic()
    trust = None
    if config.security.policy != "None":
        trust = session.make_trust(config, Path.cwd(), args.state_dir)
    try:
        client = await session._open_client(config, Path.cwd(), trust)
    except (OSError, TimeoutError, ua.UaError, ConnectionLost) as exc:
        raise DiscoveryError(f"cannot reach {args.endpoint}: {session._describe(exc)}", EX_UNAVAILABLE) from None
    try:
        def descend(path: tuple[str, ...], node_class) -> bool:
            return any(path_glob.may_match_below(p, path) for p in patterns) or (
                node_class == ua.NodeClass.Variable and any(path_glob.matches(p, path) for p in patterns))

        try:
            tree = await browse.walk(client, descend, max_depth=args.max_depth, max_nodes=args.max_nodes)
        except browse.BrowseRefused as exc:
            raise DiscoveryError(f"{args.endpoint} refuses to be browsed: {exc}; the server's user rights decide "
                                 "(try --username with a user allowed to browse)", EX_UNAVAILABLE) from None
        except browse.WalkLimit:
            raise DiscoveryError(f"more than {args.max_nodes} nodes below Objects where the patterns lead: "
                                 "narrow the patterns or raise --max-nodes", EX_DATAERR) from None
        matched: list[tuple[browse.BrowsedNode, int]] = []
        hits = [0] * len(patterns)
        for node in tree.nodes:
            if node.node_class != ua.NodeClass.Variable:
                continue
            which = [i for i, p in enumerate(patterns) if path_glob.matches(p, node.path)]
            for i in which:
                hits[i] += 1
            if which:
                matched.append((node, which[0]))
        for i, count in enumerate(hits):
            if not count:
                near = path_glob.nearest(args.browse[i], ("/".join(n.path) for n in tree.nodes))
                raise DiscoveryError(f"pattern {args.browse[i]!r} matches no variable; nearest paths that exist: "
                                     f"{', '.join(near) if near else '(none: Objects holds no node of the server)'}",
                                     EX_DATAERR)
        read_batch, _ = await session._operation_limits(client)
        infos = await browse.read_variables(client, [n for n, _ in matched], read_batch)
    except (OSError, TimeoutError, ua.UaError, ConnectionLost) as exc:
        raise DiscoveryError(f"{args.endpoint}: {session._describe(exc)}", EX_UNAVAILABLE) from None
    finally:
        await session._close(client, config.timeout_secs)
    kept, skipped = [], []
    for (node, pattern), info in zip(matched, infos, strict=True):
        reason = _skip_reason(info, browse.type_name(info.data_type))
        if reason:
            skipped.append(("/".join(node.path), reason))
        else:
            kept.append(Found(node.path, node.node_id.to_string(), browse.type_name(info.data_type), info.unit,
                              pattern))
    if not kept:
        raise DiscoveryError(f"no numeric or boolean scalar among the {len(matched)} variable(s) matched; skipped: "
                             + "; ".join(f"{p} ({r})" for p, r in skipped[:10]), EX_DATAERR)
    return Discovery(kept, skipped, len(tree.nodes), tree.requests, tree.continued, time.monotonic() - started,
                     tree.not_walked_depth)


def _skip_reason(info, type_name: str) -> str | None:
    if info.error is not None:
        return f"attributes unreadable ({info.error})"
    if not info.readable:
        return "no read access"
    if info.value_rank != _SCALAR:
        return f"not a scalar (ValueRank {info.value_rank}: an array)" if (info.value_rank or 0) >= 0 else \
            f"not a scalar (ValueRank {info.value_rank})"
    dt = info.data_type
    if dt is None or dt.NamespaceIndex != 0 or dt.Identifier not in _NUMERIC_TYPES:
        kind = "a string" if type_name == "String" else "a structure" if dt is not None and (
            dt.NamespaceIndex != 0 or dt.Identifier == 22) else "not numeric"
        return f"{type_name} ({kind})"
    return None


def _comment(found: Found) -> str:
    parts = ["/".join(found.path), found.type_name]
    if found.unit:
        parts.append(found.unit)
    return " · ".join(parts).replace("\n", " ").replace("\r", " ")  # a comment ends at the line's end


def _sensor_candidates(path: tuple[str, ...]) -> list[str]:
    return [safe_name("_".join(path[-k:])) for k in range(1, len(path) + 1)]


def _component_names(discovery: Discovery, args) -> list[str]:
    """The component of each kept variable, in order."""
    if args.component_by == "pattern":
        names = []
        for i, text in enumerate(args.browse):
            literal = [s for s in path_glob.split(text) if not any(c in s for c in "*?[")]
            names.append(safe_name("_".join(literal)) if literal else f"pattern{i + 1}")
        unique = unique_names([[n] for n in names])
        return [unique[f.pattern] for f in discovery.kept]
    parents = list(dict.fromkeys(f.path[:-1] for f in discovery.kept))
    names = unique_names([[safe_name("_".join(p[-k:])) for k in range(1, len(p) + 1)] or ["Objects"]
                          for p in parents])
    by_parent = dict(zip(parents, names, strict=True))
    return [by_parent[f.path[:-1]] for f in discovery.kept]


def _node_line(sensor: str, found: Found):
    import tomlkit

    entry = tomlkit.inline_table()
    entry.update({"sensor": sensor, "node_id": found.node_id})
    return entry


def render(discovery: Discovery, args) -> str:
    """The asset file (new, or ``--merge``d into an existing one) as text."""
    import tomlkit

    if args.merge is not None:
        return _merge(discovery, args)
    sensors = unique_names([_sensor_candidates(f.path) for f in discovery.kept], taken={"Timestamp"})
    components: dict[str, list[str]] = {}
    for sensor, component in zip(sensors, _component_names(discovery, args), strict=True):
        components.setdefault(component, []).append(sensor)
    source = _source_table(args)
    asset = args.asset or _default_asset(args)
    header = [f"Written by `l4e-agent discover opcua {args.endpoint} --browse {' '.join(args.browse)}`.",
              "[lookout] holds the agent's defaults: set them to your inference scheduler's settings."]
    lookout = {"upload_frequency": "PT5M", "delay_offset_minutes": 2, "sampling_rate": "PT1M",
               "input": args.input or f"file:///var/lib/l4e-agent/store/{asset}/input/"}
    text = tomlkit.dumps(new_document(header, asset, lookout, components, source))
    # The nodes array goes last in the file ([[sources]] is its last table), written as text: tomlkit's
    # Array.add_line costs O(length) per call, minutes for 10,000 nodes.
    lines = [f"    {{sensor = {_toml_string(sensor)}, node_id = {_toml_string(found.node_id)}}}, # {_comment(found)}"
             for sensor, found in zip(sensors, discovery.kept, strict=True)]
    return text.rstrip("\n") + "\nnodes = [\n" + "\n".join(lines) + "\n]\n"


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes (\\" \\\\ \\n \\uXXXX …) are all TOML escapes too."""
    return json.dumps(text, ensure_ascii=False)


def _default_asset(args) -> str:
    literal = [s for s in path_glob.split(args.browse[0]) if not any(c in s for c in "*?[")]
    return safe_name(literal[-1]) if literal else "asset"


def _source_table(args):
    import tomlkit

    config = source_config(args)
    source = tomlkit.table()
    source.add("name", config.name)
    source.add("kind", "opcua")
    source.add("endpoint", config.endpoint)
    if config.security.policy != "None":
        sec = tomlkit.table()
        for key in ("policy", "mode", "certificate", "private_key", "server_certificate"):
            value = getattr(config.security, key)
            if value is not None:
                sec.add(key, str(value))
        source.add("security", sec)
    if config.username:
        source.add("username", config.username)
    if config.password_file is not None:
        source.add("password_file", str(config.password_file))
    if config.password_env is not None:
        source.add("password_env", config.password_env)
    return source


def _merge(discovery: Discovery, args) -> str:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    path: Path = args.merge
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, TOMLKitError) as exc:
        raise DiscoveryError(f"--merge {path}: cannot read it as TOML: {exc}", EX_DATAERR) from None
    sources = doc.get("sources")
    if sources is None:
        sources = tomlkit.aot()
        doc.add("sources", sources)
    source = next((s for s in sources if s.get("name") == args.source), None)
    if source is not None and source.get("kind") != "opcua":
        raise DiscoveryError(f"--merge {path}: source {args.source!r} is a {source.get('kind')} source; "
                             "name another with --source", EX_USAGE)
    if source is None:
        source = _source_table(args)
        source.add("nodes", tomlkit.array())
        sources.append(source)
        source = sources[-1]
    nodes = source["nodes"]
    known_ids = {str(n.get("node_id")) for n in nodes}
    components = doc.setdefault("components", tomlkit.table())
    taken = {"Timestamp", *(str(s) for sensors in components.values() for s in sensors)}
    for src in sources:
        for entry in src.get("nodes", []):
            taken.add(str(entry.get("sensor")))
    new = [f for f in discovery.kept if f.node_id not in known_ids]
    comps = _component_names(discovery, args)
    comp_of = {f.node_id: c for f, c in zip(discovery.kept, comps, strict=True)}
    sensors = unique_names([_sensor_candidates(f.path) for f in new], taken=taken)
    for sensor, found in zip(sensors, new, strict=True):
        nodes.add_line(_node_line(sensor, found), comment=_comment(found))
        component = comp_of[found.node_id]
        if component in components:
            components[component].append(sensor)
        else:
            components.add(component, string_array([sensor], False))
    discovery.kept = new  # the summary counts what was added
    return tomlkit.dumps(doc)


def summary(discovery: Discovery, args, merged: bool) -> str:
    lines = [f"discover: {len(discovery.kept)} sensor(s) {'added' if merged else 'kept'}, "
             f"{len(discovery.skipped)} skipped, {discovery.walked} node(s) walked in {discovery.requests} browse "
             f"request(s) ({discovery.continued} BrowseNext), {discovery.seconds:.2f} s"]
    for path, reason in discovery.skipped:
        lines.append(f"  skipped {path}: {reason}")
    if discovery.not_walked_depth:
        lines.append(f"  WARNING: {discovery.not_walked_depth} node(s) at --max-depth {args.max_depth} were not "
                     "walked further")
    return "\n".join(lines)


def cmd_discover_opcua(args) -> int:
    for text in args.browse:
        problem = path_glob.check_pattern(text)
        if problem:
            raise DiscoveryError(problem, EX_USAGE)
    discovery = asyncio.run(discover(args))
    merged = args.merge is not None
    text = render(discovery, args)
    check_and_write(text, args.output or args.merge)
    print(summary(discovery, args, merged), file=sys.stderr)
    return 0
