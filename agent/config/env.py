"""Environment overrides of asset-file keys: ``L4E_AGENT_<KEY>``, nested keys joined by ``__``.

The configuration sources are pydantic-settings sources (agent.config.env_sources, imported only when at least one
``L4E_AGENT_*`` variable is set), merged by a ``BaseSettings`` class in priority order
(``settings_customise_sources``: the environment over the file): ``AssetFileSource`` gives the parsed asset
file, ``AgentEnvSource`` (an ``EnvSettingsSource`` with ``env_prefix="L4E_AGENT_"`` and
``env_nested_delimiter="__"``) the variables. ``overlay(environ, root, data)`` returns the merged data and the
Overrides (the variable, its text, the key path it sets) for error messages; validation stays in
``agent.config.load`` (strict, with its messages).

Semantics (the contract the error corpus pins, which pydantic-settings' stock env source does not give, so
``AgentEnvSource`` resolves each variable against the asset models itself): names are case-insensitive and a
message repeats the variable as it is spelled; a table key such as a sensor name keeps the case the file spells
it in (the stock source lowercases it). How a text becomes a value, by the key's type: a string, path or choice
takes the text as is; an integer, number or boolean is parsed (``45``, ``2.5``,
``true``/``false``/``yes``/``no``/``on``/``off``/``1``/``0``) and otherwise kept as text, so validation
reports it against the variable; a table or array is JSON (a JSON table is merged into the file's table).
An array's items cannot be set one by one (``L4E_AGENT_SOURCES__0__PATH``; the stock source would make it a
``{"0": ...}`` table): set the whole array as JSON. A variable naming no key is refused, as an unknown key in
the file is (the stock source ignores it silently).

Secrets are not a source here: a secret file key holds a path or ``credential:NAME`` (agent.core.secrets) and
the secret is read where it is used, at each use, so it never sits in the configuration object (``check`` and
the status page cannot print it) and a rotated secret is picked up without a restart. pydantic-settings'
``SecretsSettingsSource`` reads a secret into a field once, at start-up, which would give up both.

Resident memory: pydantic-settings and python-dotenv hold ~2 MB once imported (traced at import); an agent
whose environment sets no ``L4E_AGENT_*`` variable never imports them (``overlay`` returns the file as it is).
"""

from __future__ import annotations

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


def _resolve(var: str, value: str, root: type[BaseModel], data: dict,
             delimiter: str) -> tuple[tuple[str, ...], KeyType]:
    """The key path the variable names (file spelling for table keys) and that key's type."""
    names = var[len(ENV_PREFIX):].lower().split(delimiter)
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


def _resolve_all(environ: Mapping[str, str], prefix: str, delimiter: str, root: type[BaseModel],
                 data: dict) -> list[tuple[Override, Any]]:
    """Every variable starting with ``prefix`` (any case), shortest key path first (so a table set as JSON is
    refined by a variable for one of its keys). Raises ConfigError naming the variable."""
    found = []
    for var in sorted(environ):
        if not var.lower().startswith(prefix.lower()) or len(var) == len(prefix):
            continue
        text = environ[var]
        path, key = _resolve(var, text, root, data, delimiter)
        found.append((Override(var, text, path), _convert(var, text, key)))
    found.sort(key=lambda item: len(item[0].path))
    return found


def _nest(overrides: list[tuple[Override, Any]]) -> dict:
    """The overrides as one nested table (a later, longer path refines a table an earlier one set as JSON)."""
    layer: dict = {}
    for override, value in overrides:
        node = layer
        for name in override.path[:-1]:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        node[override.path[-1]] = value
    return layer


def names_an_override(var: str) -> bool:
    """Whether the environment variable ``var`` is one of ours (``L4E_AGENT_<KEY>``, any case)."""
    return var.lower().startswith(ENV_PREFIX.lower()) and len(var) > len(ENV_PREFIX)


def overlay(environ: Mapping[str, str], root: type[BaseModel], data: dict) -> tuple[dict, list[Override]]:
    """The file's ``data`` with the environment's overrides merged in (environment over the file), and the
    overrides. Raises ConfigError naming the variable for a variable that names no key, an array item or bad
    JSON. ``data`` is not changed.

    With no ``L4E_AGENT_*`` variable at all the merge is the file as it is, and pydantic-settings (with
    python-dotenv, ~2 MB resident in an agent that keeps running) is not imported: agent.config.env_sources
    holds the sources and is imported only when a variable is set."""
    if not any(names_an_override(var) for var in environ):
        return dict(data), []
    from agent.config.env_sources import merge

    return merge(environ, root, data)
