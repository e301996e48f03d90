"""Generic request validation against the botocore service model.

``validate(shape, params)`` walks an operation's input shape and raises ValidationException for the first
problem: an unknown or missing required member, a wrong JSON type, a string outside its length range or
pattern, a value outside its enum, a number outside its range, a list with too few/many members. In the
JSON 1.0 protocol timestamps travel as epoch seconds (numbers); ISO strings are accepted too and turned
into epoch seconds, so operations only ever see floats for timestamps.

S3 prefixes (the ``S3Prefix`` shape) must also pass agent.pipeline.store.unsafe_key_reason: no leading '/',
'//', '.' or '..' segment, backslash or NUL.

Patterns in the model are Java regular expressions; the few Java-only constructs they use are translated
(``\\p{ASCII}``, ``[\\P{M}\\p{M}]`` = any character). Smithy patterns are not implicitly anchored, so
they are applied with ``re.search``, as AWS does.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from agent.core.clock import parse_instant
from agent.lookout_local.errors import ValidationException
from agent.pipeline.store import unsafe_key_reason

# every S3 prefix a request carries (ingestion input, labels, scheduler input and output, model diagnostics) is
# of this shape; the folder store maps it to folders, so it must not climb out of the bucket's folder
PATH_SHAPES = frozenset({"S3Prefix"})

_JAVA_FIXES = (
    (r"[\P{M}\p{M}]", r"[\s\S]"),
    (r"\p{ASCII}", r"[\x00-\x7f]"),
)


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    for java, py in _JAVA_FIXES:
        pattern = pattern.replace(java, py)
    return re.compile(pattern)


def validate(shape, params: Any) -> dict:
    """Validate ``params`` (decoded JSON) against ``shape``; returns the params with timestamps as floats."""
    if shape is None:
        return {}
    if params is None:
        params = {}
    return _check(shape, params, shape.name if shape.name else "input")


def _fail(path: str, message: str) -> ValidationException:
    return ValidationException(f"1 validation error detected: Value at '{path}' failed to satisfy constraint: "
                               f"{message}")


def _check(shape, value: Any, path: str) -> Any:
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            raise _fail(path, "Member must be a structure")
        out = {}
        for key in value:
            if key not in shape.members:
                raise ValidationException(f"Unknown parameter '{key}' in {path}")
        for name in shape.required_members:
            if value.get(name) is None:
                raise _fail(f"{path}.{name}", "Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                out[name] = _check(member, value[name], f"{path}.{name}")
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise _fail(path, "Member must be a list")
        _check_range(len(value), meta, path, "Member must have length")
        return [_check(shape.member, item, f"{path}.{i + 1}") for i, item in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise _fail(path, "Member must be a map")
        return {_check(shape.key, k, path): _check(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if kind == "string":
        if not isinstance(value, str):
            raise _fail(path, "Member must be a string")
        _check_range(len(value), meta, path, "Member must have length")
        if shape.enum and value not in shape.enum:
            raise _fail(path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        pattern = meta.get("pattern")
        if pattern and not _compile(pattern).search(value):
            raise _fail(path, f"Member must satisfy regular expression pattern: {pattern}")
        if shape.name in PATH_SHAPES and (reason := unsafe_key_reason(value)):
            raise _fail(path, f"Member must be a relative S3 prefix without '.', '..' or empty segments, "
                              f"backslashes or NUL; this one {reason}")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"Member must be an {kind}")
        _check_range(value, meta, path, "Member must have value")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, "Member must be a number")
        _check_range(value, meta, path, "Member must have value")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _fail(path, "Member must be a boolean")
        return value
    if kind == "timestamp":
        if isinstance(value, bool):
            raise _fail(path, "Member must be a timestamp")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise _fail(path, "Member must be a finite timestamp")
            return float(value)
        if isinstance(value, str):
            try:
                return parse_instant(value)
            except ValueError:
                raise _fail(path, "Member must be a timestamp") from None
        raise _fail(path, "Member must be a timestamp")
    if kind == "blob":
        if not isinstance(value, str):
            raise _fail(path, "Member must be base64 text")
        return value
    return value


def _check_range(number: float, meta: dict, path: str, what: str) -> None:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and number < low:
        raise _fail(path, f"{what} greater than or equal to {low}")
    if high is not None and number > high:
        raise _fail(path, f"{what} less than or equal to {high}")
