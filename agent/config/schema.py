"""What a key of the asset file accepts, read from the config models (for error messages and env overrides).

``field_at(model, loc, data)`` walks a key path (as pydantic reports it, or as an environment variable names
it) down the models and returns the annotation and constraints of the key it ends at; ``allowed(field)``
renders them as the text an operator reads after "allowed:" ("an integer 0..60", "'PT5M' | 'PT10M'", ...).
Pure functions: no I/O, no pydantic wording.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel


@dataclass(frozen=True)
class KeyType:
    """The annotation of one key (Optional and Annotated removed) and its constraints."""

    annotation: Any
    metadata: tuple[Any, ...] = ()
    optional: bool = False


def unwrap(annotation: Any, metadata: tuple[Any, ...] = ()) -> KeyType:
    """Strip ``Annotated[...]`` (keeping its constraints) and ``X | None`` (remembering it)."""
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata = (*metadata, *extra)
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == len(get_args(annotation)):
                return KeyType(annotation, metadata, optional)
            optional = True
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        else:
            return KeyType(annotation, metadata, optional)


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [unwrap(a).annotation for a in get_args(annotation)]
    return [annotation]


def is_tagged_union(annotation: Any) -> bool:
    """A union of models told apart by their ``kind`` (sources, hooks, rules)."""
    members = union_members(annotation)
    return len(members) > 1 and all(is_model(m) and _tag_of(m) for m in members)


def _tag_of(model: type[BaseModel]) -> tuple[str, set[str]] | None:
    """(field, values) of a model's ``kind``-style Literal discriminator, if it has one."""
    info = model.model_fields.get("kind")  # every tagged union of the asset file is told apart by `kind`
    if info is not None and get_origin(info.annotation) is Literal:
        return "kind", set(get_args(info.annotation))
    return None


def _pick_member(members: list[Any], tag: Any) -> type[BaseModel] | None:
    for member in members:
        found = _tag_of(member) if is_model(member) else None
        if found and tag in found[1]:
            return member
    return None


def field_at(root: type[BaseModel], loc: tuple[Any, ...], data: Any = None) -> KeyType | None:
    """The type of the key at ``loc`` (raw pydantic location, tags included) or None when it is no key.

    ``data`` (the raw file content, optional) picks the member of a tagged union when ``loc`` carries no tag
    (an environment variable path).
    """
    current = KeyType(root)
    parts = list(loc)
    while parts:
        part = parts[0]
        ann = current.annotation
        if is_model(ann):
            info = ann.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            current = unwrap(info.annotation, tuple(info.metadata))
            data = data.get(part) if isinstance(data, dict) else None
            parts.pop(0)
            continue
        members = union_members(ann)
        if len(members) > 1 and any(is_model(m) for m in members):
            member = _pick_member(members, part)  # pydantic's location names the tag
            if member is not None:
                parts.pop(0)
            else:
                member = _pick_member(members, data.get("kind") if isinstance(data, dict) else None)
                if member is None:
                    return None
            current = KeyType(member)
            continue
        origin = get_origin(ann)
        if origin in (list, tuple, set, frozenset) and isinstance(part, int):
            current = unwrap(get_args(ann)[0])
            data = data[part] if isinstance(data, list) and part < len(data) else None
        elif origin is dict and isinstance(part, str):
            current = unwrap(get_args(ann)[1])
            data = data.get(part) if isinstance(data, dict) else None
        else:
            return None
        parts.pop(0)
    return current


def _bounds(metadata: tuple[Any, ...]) -> str:
    low = high = None
    low_open = high_open = False
    for m in metadata:
        if isinstance(m, at.Ge):
            low = m.ge
        elif isinstance(m, at.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, at.Le):
            high = m.le
        elif isinstance(m, at.Lt):
            high, high_open = m.lt, True
    if low is not None and high is not None and not low_open and not high_open:
        return f" {low}..{high}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return (" " + " and ".join(parts)) if parts else ""


def _lengths(metadata: tuple[Any, ...], unit: str) -> str:
    for m in metadata:
        if isinstance(m, at.MinLen) and m.min_length:
            return f" (at least {m.min_length} {unit}{'s' if m.min_length > 1 else ''})"
    return ""


NAME_WORDS = "a string of 1 to {n} characters, each a letter, a digit or one of . _ -"
# Every pattern of the config models, in words: an operator reads what to write, not a regular expression
# (tests/unit/test_config_words.py checks that none is missing).
PATTERN_WORDS = {
    r"^[0-9a-zA-Z._\-]{1,200}$": NAME_WORDS.format(n=200),
    r"^[A-Za-z0-9._\-]{1,64}$": NAME_WORDS.format(n=64),
    r"^https?://\S+$": "an http:// or https:// URL (a string without spaces)",
    r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+):\d{1,5}(/\S*)?$":
        "a string opc.tcp://HOST:PORT or opc.tcp://HOST:PORT/PATH (an IPv6 address in brackets, "
        "opc.tcp://[fe80::1]:4840)",
}


def pattern_in_words(pattern: str) -> str:
    """What a string constrained by ``pattern`` must look like, as a phrase ("a string of 1 to 64 …")."""
    return PATTERN_WORDS.get(pattern, f"a string matching the regular expression {pattern}")


def _string(metadata: tuple[Any, ...]) -> str:
    for m in metadata:
        pattern = getattr(m, "pattern", None)
        if pattern:
            return pattern_in_words(pattern)
    return "a string"


_PLURAL = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def allowed(key: KeyType) -> str:
    """What the key accepts, in the asset file's (TOML) terms."""
    ann, meta = key.annotation, key.metadata
    origin = get_origin(ann)
    if origin is Literal:
        return " | ".join(repr(v) for v in get_args(ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return " | ".join(repr(m.value) for m in ann)
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer" + _bounds(meta)
    if ann is float:
        return "a number" + _bounds(meta)
    if ann is str:
        return _string(meta)
    if isinstance(ann, type) and issubclass(ann, Path):
        return "a file path (string)"
    if is_model(ann):
        return "a table (its keys are listed in config/example.toml)"
    if origin in (list, tuple, set, frozenset):
        item = unwrap(get_args(ann)[0]) if get_args(ann) else KeyType(Any)
        if is_model(item.annotation):
            inner = "tables"
        elif is_tagged_union(item.annotation):
            inner = "tables with " + allowed(item).removeprefix("a table with ")
        else:
            inner = _PLURAL.get(item.annotation) or allowed(item)
        return f"an array of {inner}" + _lengths(meta, "item")
    if origin is dict:
        return f"a table whose values are {allowed(unwrap(get_args(ann)[1]))}"
    members = union_members(ann)
    if len(members) > 1:
        tagged = [_tag_of(m) for m in members if is_model(m)]
        if tagged and all(tagged):
            return "a table with kind = " + " | ".join(repr(v) for _, vals in tagged for v in sorted(vals))
        return " or ".join(allowed(KeyType(m)) for m in members)
    return getattr(ann, "__name__", str(ann))


def describe(value: Any) -> str:
    """A TOML value as the operator wrote it, with its TOML type."""
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "a table"
    return repr(value)



def literal_problems(root: type[BaseModel], data: Any) -> list[tuple[tuple[Any, ...], str]]:
    """(key path, message) for a float or boolean given to a numeric choice (``stopbits = 1.0``, ``= true``):
    pydantic's strict mode compares choices by value, so 8.0 and true would pass as 8 and 1."""
    out: list[tuple[tuple[Any, ...], str]] = []

    def walk(value: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*loc, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*loc, i))
        elif isinstance(value, float | bool) and loc:
            key = field_at(root, loc, data)
            if key is not None and get_origin(key.annotation) is Literal:
                choices = get_args(key.annotation)
                if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
                    out.append((loc, f"got {describe(value)}; allowed: {allowed(key)}"))

    walk(data, ())
    return out
