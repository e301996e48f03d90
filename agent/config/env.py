"""Environment overrides of asset-file keys: ``L4E_AGENT_<KEY>``, nested keys joined by ``__``.

``collect(environ, root, data)`` turns every ``L4E_AGENT_*`` variable into an Override (the variable, its text,
the key path it sets) and the value the key gets; ``apply(data, overrides)`` merges them over the file's
content. Names are case-insensitive (a table key such as a sensor name keeps the case the file spells it in).

How a text becomes a value, by the key's type: a string, path or choice takes the text as is; an integer,
number or boolean is parsed (``45``, ``2.5``, ``true``/``false``/``yes``/``no``/``on``/``off``/``1``/``0``)
and otherwise kept as text, so validation reports it against the variable; a table or array is JSON.
An array's items cannot be set one by one (``L4E_AGENT_SOURCES__0__PATH``): set the whole array as JSON.
A variable naming no key is refused, as an unknown key in the file is.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_origin

from pydantic import BaseModel

from agent.config.schema import KeyType, allowed, field_at, is_model, is_tagged_union, union_members
from agent.core.errors import ConfigError

ENV_PREFIX = "L4E_AGENT_"
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Override:
    var: str
    value: str  # the text as set, for messages
    path: tuple[str, ...]


def _error(var: str, value: str, message: str) -> ConfigError:
    return ConfigError(f"{var}={value}: {message}")


def _resolve(var: str, value: str, root: type[BaseModel], data: dict) -> tuple[tuple[str, ...], KeyType]:
    """The key path the variable names (file spelling for table keys) and that key's type."""
    names = var[len(ENV_PREFIX):].lower().split("__")
    path: list[str] = []
    here: Any = data
    for name in names:
        parent = field_at(root, tuple(path), data)
        ann = parent.annotation if parent else None
        if parent is not None and get_origin(ann) in (list, tuple, set, frozenset):
            raise _error(var, value, f"{_dotted(path)} is an array: its items cannot be set one by one; set "
                         f"{ENV_PREFIX}{'__'.join(p.upper() for p in path)} to the whole array as JSON")
        if parent is not None and get_origin(ann) is dict:
            keys = list(here) if isinstance(here, dict) else []
            name = next((k for k in keys if k.lower() == name), name)
        path.append(name)
        if field_at(root, tuple(path), data) is None:
            known = _known_keys(parent)
            raise _error(var, value, f"names no key: {_dotted(path)} is not a key of the asset file"
                         + (f" (allowed here: {', '.join(known)})" if known else ""))
        here = here.get(name) if isinstance(here, dict) else None
    key = field_at(root, tuple(path), data)
    assert key is not None  # checked in the loop
    return tuple(path), key


def _known_keys(parent: KeyType | None) -> list[str]:
    if parent is not None and is_model(parent.annotation):
        return sorted(parent.annotation.model_fields)
    return []


def _dotted(path: list[str] | tuple[str, ...]) -> str:
    return ".".join(path) or "(top level)"


def _convert(var: str, text: str, key: KeyType) -> Any:
    ann = key.annotation
    members = union_members(ann)
    if is_model(ann) or is_tagged_union(ann) or get_origin(ann) in (list, tuple, set, frozenset, dict):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise _error(var, text, f"not valid JSON ({exc.msg} at position {exc.pos}); allowed: "
                         f"{allowed(key)} written as JSON") from None
    if members == [bool]:
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else text
    if any(m in (int, float) for m in members) and str not in members:
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        return parsed if isinstance(parsed, int | float) and not isinstance(parsed, bool) else text
    if text == "" and key.optional:
        return None
    return text


def collect(environ: Mapping[str, str], root: type[BaseModel], data: dict) -> list[tuple[Override, Any]]:
    """Every ``L4E_AGENT_*`` variable, shortest key path first (so a table set as JSON is refined by a
    variable for one of its keys). Raises ConfigError naming the variable."""
    found = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or len(var) == len(ENV_PREFIX):
            continue
        text = environ[var]
        path, key = _resolve(var, text, root, data)
        found.append((Override(var, text, path), _convert(var, text, key)))
    found.sort(key=lambda item: len(item[0].path))
    return found


def apply(data: dict, overrides: list[tuple[Override, Any]]) -> dict:
    """A copy of ``data`` with the overrides merged in (a JSON table is merged into the file's table)."""
    merged = copy.deepcopy(data)
    for override, value in overrides:
        node = merged
        for name in override.path[:-1]:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        last = override.path[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _deep_merge(node[last], value)
        else:
            node[last] = value
    return merged


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

