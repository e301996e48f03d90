"""The dataset schema (``InlineDataSchema`` JSON string, README, L4E contract §4).

``{"Components": [{"ComponentName": c, "Columns": [{"Name": "Timestamp", "Type": "DATETIME"},
{"Name": s, "Type": "DOUBLE"}, ...]}]}``: exactly one DATETIME column per component (the timestamp column),
at least one DOUBLE sensor. Other types are refused: the detector needs numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from agent.lookout_local.errors import ValidationException

_NAME = re.compile(r"^[0-9a-zA-Z._\-]{1,200}$")
_COLUMN = re.compile(r"^[0-9a-zA-Z._\- ]{1,200}$")


@dataclass(frozen=True)
class Component:
    name: str
    timestamp: str
    sensors: tuple[str, ...]


def parse_schema(text: str) -> list[Component]:
    """Components in schema order. Raises ValidationException with the reason when the schema is unusable."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValidationException(f"InlineDataSchema is not valid JSON: {exc}") from None
    comps = doc.get("Components") if isinstance(doc, dict) else None
    if not isinstance(comps, list) or not comps:
        raise ValidationException("InlineDataSchema must have a non-empty 'Components' list")
    out, seen = [], set()
    for comp in comps:
        name = comp.get("ComponentName") if isinstance(comp, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationException(f"ComponentName {name!r} must match {_NAME.pattern}")
        if name in (".", ".."):  # a component's files are found under <prefix><component>/: not a folder alias
            raise ValidationException(f"ComponentName {name!r} names a folder of the store, not a component")
        if name in seen:
            raise ValidationException(f"component {name!r} appears twice in the schema")
        seen.add(name)
        timestamp, sensors = None, []
        for col in comp.get("Columns") or []:
            cname, ctype = (col.get("Name"), col.get("Type")) if isinstance(col, dict) else (None, None)
            if not isinstance(cname, str) or not _COLUMN.match(cname):
                raise ValidationException(f"column name {cname!r} of {name!r} must match {_COLUMN.pattern}")
            if ctype == "DATETIME":
                if timestamp is not None:
                    raise ValidationException(f"component {name!r} has more than one DATETIME column")
                timestamp = cname
            elif ctype == "DOUBLE":
                if cname in sensors:
                    raise ValidationException(f"column {cname!r} appears twice in component {name!r}")
                sensors.append(cname)
            else:
                raise ValidationException(f"column {cname!r} of {name!r} has type {ctype!r}; allowed: DATETIME, DOUBLE")
        if timestamp is None or not sensors:
            raise ValidationException(f"component {name!r} needs one DATETIME column and at least one DOUBLE column")
        out.append(Component(name, timestamp, tuple(sensors)))
    return out


def dump_schema(components: list[Component]) -> str:
    """The schema string in the SDK's exact layout."""
    return json.dumps({"Components": [
        {"ComponentName": c.name, "Columns": [{"Name": c.timestamp, "Type": "DATETIME"}]
         + [{"Name": s, "Type": "DOUBLE"} for s in c.sensors]} for c in components]})


def sensor_names(components: list[Component]) -> list[str]:
    """Qualified sensor names ``component\\sensor``, the names results use."""
    return [f"{c.name}\\{s}" for c in components for s in c.sensors]


def subset(full: list[Component], wanted: list[Component]) -> list[Component]:
    """Check that ``wanted`` (a model's schema) only names components and sensors of ``full``."""
    by_name = {c.name: c for c in full}
    for comp in wanted:
        have = by_name.get(comp.name)
        if have is None:
            raise ValidationException(f"component {comp.name!r} is not in the dataset schema")
        missing = [s for s in comp.sensors if s not in have.sensors]
        if missing:
            raise ValidationException(f"sensors {missing} of {comp.name!r} are not in the dataset schema")
    return wanted
