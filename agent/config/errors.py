"""Pydantic validation errors → the operator's message: where (file or environment variable), which key,
what was given and what is allowed. No pydantic wording ("Value error, ", "Input should be ...") survives.

One error becomes ``<key path>: got <value>; allowed: <values>`` (type, range and choice errors) or
``<key path>: <the validator's own sentence>``. The source is the asset file unless an environment override
(``agent.config.env``) set the key or a table above it: then the line starts with ``VAR=value: `` instead.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config.env import Override
from agent.config.schema import allowed, describe, field_at, is_model, is_tagged_union, union_members

# error types whose message is "this value is not one of the allowed ones": rewritten from the model
_VALUE_ERRORS = {
    "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "bool_type", "bool_parsing",
    "string_type", "literal_error", "enum", "greater_than", "greater_than_equal", "less_than",
    "less_than_equal", "finite_number", "string_pattern_mismatch", "string_too_short", "string_too_long",
    "too_short", "too_long", "list_type", "dict_type", "model_type", "model_attributes_type", "path_type",
    "tuple_type", "set_type", "frozen_set_type", "multiple_of",
}
_PREFIXES = ("Value error, ", "Assertion failed, ")
_SCALAR_TAGS = {"bool", "int", "float", "str"}


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the members of a scalar union ("int", "str", "function-after[...]")."""
    return tuple(p for i, p in enumerate(loc)
                 if not (isinstance(p, str) and ("[" in p or (p in _SCALAR_TAGS and i == len(loc) - 1))))


def user_loc(loc: tuple[Any, ...], root: type[BaseModel], data: Any) -> tuple[Any, ...]:
    """The key path as written in the file: pydantic's union member tags removed."""
    raw = _untagged(loc)
    out: list[Any] = []
    for i, part in enumerate(raw):
        here = field_at(root, raw[:i], data)
        if isinstance(part, str) and here is not None and is_tagged_union(here.annotation):
            continue  # the "opcua" in sources.0.opcua.endpoint
        out.append(part)
    return tuple(out)


# Keys renamed in a release: a file still using the old name is told the new one.
RENAMED_KEYS = {"backoff_cap_secs": "backoff_max_secs"}


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict, root: type[BaseModel], data: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        new = RENAMED_KEYS.get(str(err["loc"][-1])) if err["loc"] else None
        if new is not None:
            return f"unknown key: renamed to {new} (same meaning, same unit)"
        near = nearest_key(root, tuple(err["loc"]), data)
        if near is not None:
            return f"unknown key (not allowed here; did you mean {near}?)"
        return "unknown key (not allowed here; check the spelling against config/example.toml)"
    if kind == "missing":
        key = field_at(root, _untagged(err["loc"]), data)
        return "required key is missing" + (f"; allowed: {allowed(key)}" if key else "")
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"got {describe(ctx.get('tag'))}; allowed: {ctx.get('expected_tags', '')}"
    if kind == "union_tag_not_found":
        union = field_at(root, _untagged(err["loc"]), data)
        tags = allowed(union).removeprefix("a table with kind = ") if union else ""
        return "required key is missing" + (f"; allowed: {tags}" if tags else "")
    if kind in _VALUE_ERRORS:
        key = field_at(root, _untagged(err["loc"]), data)
        if key is not None:
            return f"got {describe(err['input'])}; allowed: {allowed(key)}"
    for prefix in _PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def nearest_key(root: type[BaseModel], loc: tuple[Any, ...], data: Any) -> str | None:
    """The valid key of the same table spelled most like the unknown one at ``loc`` (None when none is close)."""
    if not loc:
        return None
    table = field_at(root, _untagged(loc)[:-1], data)
    if table is None:
        return None
    keys = sorted({k for m in union_members(table.annotation) if is_model(m) for k in m.model_fields})
    found = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    return found[0] if found else None


def source_name(loc: tuple[Any, ...], data: Any) -> str | None:
    """The ``name`` of the [[sources]] entry a key path lies in (``sources[1].endpoint`` → "plc"), if any."""
    if len(loc) > 1 and loc[0] == "sources" and isinstance(loc[1], int) and isinstance(data, dict):
        sources = data.get("sources")
        if isinstance(sources, list) and loc[1] < len(sources) and isinstance(sources[loc[1]], dict):
            name = sources[loc[1]].get("name")
            return name if isinstance(name, str) and name else None
    return None


def _source(loc: tuple[Any, ...], overrides: list[Override]) -> Override | None:
    """The override that set this key (or a table above it); the longest wins."""
    best = None
    for o in overrides:
        if loc[: len(o.path)] == o.path and (best is None or len(o.path) > len(best.path)):
            best = o
    return best


def format_validation(exc: ValidationError, *, file: str, root: type[BaseModel], data: Any,
                      overrides: list[Override]) -> str:
    """The whole message for one failed load (several errors joined by '; ')."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = user_loc(tuple(err["loc"]), root, data)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc += (str(err.get("ctx", {}).get("discriminator", "kind")).strip("'"),)
        text = _message(err, root, data)
        name = source_name(loc, data)
        problems.append((loc, f'{text} (source "{name}")' if name else text))
    return format_problems(problems, file=file, overrides=overrides)


def format_problems(problems: list[tuple[tuple[Any, ...], str]], *, file: str, overrides: list[Override]) -> str:
    """(key path, text) pairs → one message: the file's problems first, then each override's, by variable."""
    from_file: list[str] = []
    from_env: list[str] = []
    seen: set[tuple[str, str]] = set()
    for loc, text in problems:
        key = format_loc(loc)
        if (key, text) in seen:
            continue
        seen.add((key, text))
        override = _source(loc, overrides)
        if override is not None:
            from_env.append(f"{override.var}={override.value}: {key}: {text} (environment override of {file})")
            continue
        below = [o for o in overrides if o.path[: len(loc)] == loc]  # a table-level check over them
        suffix = f" (with {', '.join(f'{o.var}={o.value}' for o in below)} from the environment)" if below else ""
        from_file.append(f"{key}: {text}{suffix}" if loc else f"{text}{suffix}")
    parts = []
    if from_file:
        parts.append(f"{file}: " + "; ".join(from_file))
    parts += from_env
    return "; ".join(parts)
