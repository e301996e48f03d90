"""Writing a discovered asset file (``l4e-agent discover …``): names made valid and unique, the TOML document,
and the check before anything is written.

The document is built with tomlkit, which keeps comments and key order when it reads a file back, so
``--merge`` can add to a file an engineer edited without touching what they wrote. A file is written only
after ``agent.config.load`` accepted it (the same check ``l4e-agent check`` runs), through a temporary file
in the same folder renamed over the target: on any error nothing is written or changed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tomlkit
from tomlkit.items import Array, Table

from agent.core.errors import ConfigError, L4EAgentError

# sysexits.h, as the discover commands use them
EX_USAGE = 64  # a bad command line: option, pattern
EX_DATAERR = 65  # bad data: a pattern that matches nothing, a malformed register map, a tree past the bound
EX_UNAVAILABLE = 69  # the endpoint cannot be reached, or refuses to be browsed

_INVALID = re.compile(r"[^0-9A-Za-z._\-]+")
_MAX_NAME = 200  # L4E's ComponentName and column-name limit


class DiscoveryError(L4EAgentError):
    """A discover command failed; ``exit_code`` is one of EX_USAGE, EX_DATAERR, EX_UNAVAILABLE."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def safe_name(text: str) -> str:
    """``text`` as a valid L4E sensor or component name (A-Z a-z 0-9 . _ -, at most 200 characters)."""
    name = _INVALID.sub("_", text).strip("_")
    return (name or "x")[-_MAX_NAME:]


def unique_names(candidates: Sequence[Sequence[str]], taken: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One name per item, unique among themselves and not in ``taken``.

    Each item lists its candidate names from shortest to longest (e.g. ``Flow``, ``Pump1_Flow``,
    ``Line1_Pump1_Flow``): an item keeps its shortest candidate that no other item of the same level shares;
    what is still taken gets ``_2``, ``_3``, …"""
    chosen: list[str | None] = [None] * len(candidates)
    level = 0
    open_items = list(range(len(candidates)))
    while open_items:
        names = {i: candidates[i][min(level, len(candidates[i]) - 1)] for i in open_items}
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name] = counts.get(name, 0) + 1
        still = []
        for i in open_items:
            exhausted = level >= len(candidates[i]) - 1
            if (counts[names[i]] == 1 and names[i] not in taken) or exhausted:
                chosen[i] = names[i]
            else:
                still.append(i)
        open_items = still
        level += 1
    used = set(taken)
    out = []
    for name in chosen:
        assert name is not None
        final, n = name, 2
        while final in used:
            final = f"{name[:_MAX_NAME - 1 - len(str(n))]}_{n}"
            n += 1
        used.add(final)
        out.append(final)
    return out


def string_array(items: Sequence[str], multiline: bool) -> Array:
    array = tomlkit.array()
    array.extend(items)
    return array.multiline(multiline)


def new_document(header: Sequence[str], asset: str, lookout: dict, components: dict[str, list[str]],
                 source: Table) -> tomlkit.TOMLDocument:
    """A whole asset file: header comments, asset, [lookout], [components] and one [[sources]] entry."""
    doc = tomlkit.document()
    for line in header:
        doc.add(tomlkit.comment(line))
    doc.add("asset", asset)
    doc.add(tomlkit.nl())
    table = tomlkit.table()
    for key, value in lookout.items():
        table.add(key, value)
    doc.add("lookout", table)
    comps = tomlkit.table()
    for name, sensors in components.items():
        comps.add(name, string_array(sensors, len(sensors) > 4))
    doc.add("components", comps)
    sources = tomlkit.aot()
    sources.append(source)
    doc.add("sources", sources)
    return doc


def check_and_write(text: str, output: Path | None) -> None:
    """Validate ``text`` as an asset file (as ``check`` does, without environment overrides), then write it to
    ``output`` atomically, or print it when ``output`` is None. Raises DiscoveryError (EX_DATAERR) when the
    check fails; then nothing is written."""
    folder = output.resolve().parent if output is not None else None
    if folder is not None and not folder.is_dir():
        raise DiscoveryError(f"cannot write {output}: folder {folder} does not exist", EX_USAGE)
    with tempfile.TemporaryDirectory() as scratch:
        target_dir = folder or Path(scratch)
        fd, tmp_name = tempfile.mkstemp(prefix=".discover-", suffix=".toml", dir=target_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            _check(tmp)
            if output is None:
                print(text, end="")
                return
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)


def _check(path: Path) -> None:
    from agent.config import load

    try:
        load(path, environ={})
    except ConfigError as exc:
        raise DiscoveryError(f"the written asset file would not pass check: {exc}", EX_DATAERR) from None
