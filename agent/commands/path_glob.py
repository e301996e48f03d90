"""Glob patterns over slash-separated browse paths, as ``discover opcua --browse`` takes them.

A pattern is ``/``-separated segments. In a segment ``*`` matches any run of characters, ``?`` one character and
``[abc]`` one of a set (fnmatch's rules, case-sensitive); a segment that is exactly ``**`` matches zero or more
whole segments, so it crosses levels: ``Site/Line1/Pump*/**`` matches every path below each ``Pump…`` object of
``Site/Line1``. Paths are browse names without namespace prefixes, from below the Objects folder.

``may_match_below`` says whether some path below a given folder could still match, so the walk skips
branches no pattern can reach.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

DEEP = "**"


def split(text: str) -> tuple[str, ...]:
    """'Site/Line1/Pump*' → ('Site', 'Line1', 'Pump*'); leading, trailing and doubled slashes are ignored."""
    return tuple(part for part in text.split("/") if part)


def check_pattern(text: str) -> str | None:
    """Why ``text`` is not a usable pattern, or None."""
    if not split(text):
        return f"empty pattern {text!r}"
    for part in split(text):
        if DEEP in part and part != DEEP:
            return f"pattern {text!r}: '**' must be a whole segment (e.g. 'Site/**/Flow'), not part of {part!r}"
    return None


def _advance(pattern: Sequence[str], states: set[int], segment: str) -> set[int]:
    """The pattern positions reachable after consuming ``segment`` from any of ``states`` (an NFA step)."""
    out: set[int] = set()
    for i in _closure(pattern, states):
        if i == len(pattern):
            continue
        part = pattern[i]
        if part == DEEP:
            out.add(i)  # ** eats this segment and may eat more
        elif fnmatch.fnmatchcase(segment, part):
            out.add(i + 1)
    return out


def _closure(pattern: Sequence[str], states: Iterable[int]) -> set[int]:
    """``states`` plus the positions after any ``**`` that matches zero segments."""
    out = set(states)
    stack = list(out)
    while stack:
        i = stack.pop()
        if i < len(pattern) and pattern[i] == DEEP and i + 1 not in out:
            out.add(i + 1)
            stack.append(i + 1)
    return out


def _states(pattern: Sequence[str], path: Sequence[str]) -> set[int]:
    states = {0}
    for segment in path:
        states = _advance(pattern, states, segment)
        if not states:
            break
    return states


def matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """Whether the whole ``path`` matches the whole ``pattern`` (both as segment tuples)."""
    return len(pattern) in _closure(pattern, _states(pattern, path))


def may_match_below(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """Whether some path strictly below ``path`` could match ``pattern``."""
    return any(i < len(pattern) for i in _closure(pattern, _states(pattern, path)))


def nearest(pattern_text: str, paths: Iterable[str], n: int = 5) -> list[str]:
    """The existing paths most like ``pattern_text`` (for "matched nothing" messages): the deepest prefix
    of the pattern that exists, then the closest paths by spelling."""
    paths = list(paths)
    pattern = split(pattern_text)
    out: list[str] = []
    for depth in range(len(pattern) - 1, 0, -1):  # the deepest pattern prefix that still matches something
        prefix = pattern[:depth]
        hits = [p for p in paths if matches(prefix, split(p))]
        if hits:
            out.extend(sorted(hits)[:n])
            break
    literal = "/".join(part for part in pattern if part != DEEP).replace("*", "").replace("?", "")
    for p in difflib.get_close_matches(literal, paths, n=n, cutoff=0.3):
        if p not in out:
            out.append(p)
    return out[:n]
