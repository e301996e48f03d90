"""``l4e-agent discover modbus --register-map MAP.csv``: a vendor register map → a checked asset file.

The map is a CSV file with a header row. Fields (header names are the field names, case-insensitive, unless
``--column FIELD=HEADER`` renames them): ``name``, ``address`` (zero-based protocol address 0..65535),
``table`` (holding | input | coil | discrete), ``type`` (bool, bit, int16, uint16, int32, uint32, int64, uint64,
float32, float64) are required; ``order`` (ABCD | DCBA | BADC | CDAB, default ABCD), ``scale`` (default 1),
``offset`` (default 0), ``bit`` (0..15, for type bit), ``unit`` and ``component`` are optional. An empty optional
cell takes the default.

Every row is checked as the agent's Modbus point model checks it; the first malformed row (a bad value, a
duplicate name, an address out of range) is reported with its line number and nothing is written. Sensor
names are made valid for L4E (the map's name is kept in the node's comment when it changed). One component
per ``component`` value, else one named after the asset. The summary gives the planner's read requests per
poll (connectors.modbus.planner), as the agent will send them.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from agent.commands.asset_writer import (
    EX_DATAERR,
    EX_USAGE,
    DiscoveryError,
    check_and_write,
    new_document,
    safe_name,
)

FIELDS = ("name", "address", "table", "type", "order", "scale", "offset", "bit", "unit", "component")
REQUIRED = ("name", "address", "table", "type")


def _headers(args) -> dict[str, str]:
    """Field → header name (lower case) from the defaults and ``--column FIELD=HEADER``."""
    headers = {f: f for f in FIELDS}
    for spec in args.column:
        field, sep, header = spec.partition("=")
        field = field.strip().lower()
        if not sep or field not in FIELDS or not header.strip():
            raise DiscoveryError(f"--column {spec!r}: expected FIELD=HEADER with FIELD one of {', '.join(FIELDS)}",
                                 EX_USAGE)
        headers[field] = header.strip().lower()
    return headers


def _number(text: str, what: str, integer: bool) -> int | float:
    try:
        return int(text, 0) if integer else float(text)
    except ValueError:
        kind = "an integer (decimal or 0x hex)" if integer else "a number"
        raise ValueError(f"{what}: got {text!r}; allowed: {kind}") from None


def read_map(path: Path, args) -> list[tuple[int, dict, str]]:
    """(line number, point fields, comment) per row; raises DiscoveryError naming the line of the first bad row."""
    from pydantic import ValidationError

    from connectors.modbus.config import ModbusPoint

    headers = _headers(args)
    try:
        text = path.read_text(encoding="utf-8-sig")  # vendor tools often write a BOM
    except (OSError, UnicodeError) as exc:
        raise DiscoveryError(f"cannot read the register map {path}: {exc}", EX_DATAERR) from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise DiscoveryError(f"{path}: empty file; expected a header row and one row per point", EX_DATAERR) from None
    missing = [f"{f} (header {headers[f]!r})" for f in REQUIRED if headers[f] not in header]
    if missing:
        raise DiscoveryError(f"{path} line 1: missing column(s) {', '.join(missing)}; the header has {header} "
                             "(rename with --column FIELD=HEADER)", EX_DATAERR)
    where = {f: header.index(headers[f]) for f in FIELDS if headers[f] in header}
    rows: list[tuple[int, dict, str]] = []
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = {f: (row[i].strip() if i < len(row) else "") for f, i in where.items()}
        try:
            for f in REQUIRED:
                if not cells[f]:
                    raise ValueError(f"{f}: empty; a value is required")
            point: dict = {"sensor": safe_name(cells["name"]), "table": cells["table"].lower(),
                           "address": _number(cells["address"], "address", True), "type": cells["type"].lower()}
            if cells.get("order"):
                point["order"] = cells["order"].upper()
            for f in ("scale", "offset"):
                if cells.get(f):
                    point[f] = _number(cells[f], f, False)
            if cells.get("bit"):
                point["bit"] = _number(cells["bit"], "bit", True)
            ModbusPoint.model_validate(point)
        except ValueError as exc:  # ValidationError is a ValueError
            message = _validation_text(exc) if isinstance(exc, ValidationError) else str(exc)
            raise DiscoveryError(f"{path} line {line}: {message}; nothing written", EX_DATAERR) from None
        sensor = point["sensor"]
        if sensor in first_line or sensor == "Timestamp":
            other = f"line {first_line[sensor]}" if sensor in first_line else "the timestamp column"
            raise DiscoveryError(f"{path} line {line}: name {cells['name']!r} (sensor {sensor!r}) is already used "
                                 f"by {other}; allowed: each name once; nothing written", EX_DATAERR)
        first_line[sensor] = line
        comment = [f"{point['table']}[{point['address']}] {point['type']}"]
        if cells.get("unit"):
            comment.append(cells["unit"])
        if sensor != cells["name"]:
            comment.append(f"map name {cells['name']!r}")
        rows.append((line, point | {"component": cells.get("component", "")}, " · ".join(comment)))
    if not rows:
        raise DiscoveryError(f"{path}: no rows below the header", EX_DATAERR)
    return rows


def _validation_text(exc) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(x) for x in error["loc"])
        given = error.get("input")
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "literal_error":
            allowed = msg.removeprefix("Input should be ").replace(", ", " | ").replace(" or ", " | ")
            msg = f"got {given!r}; allowed: {allowed}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def render(rows, args) -> tuple[str, list]:
    """The asset file text and the planned read requests."""
    import tomlkit

    from connectors.modbus.config import ModbusDevice
    from connectors.modbus.planner import plan_device

    asset = args.asset or safe_name(args.register_map.stem)
    components: dict[str, list[str]] = {}
    for _, point, _ in rows:
        components.setdefault(safe_name(point["component"]) if point["component"] else asset, []).append(
            point["sensor"])
    points = tomlkit.array()
    plain = []
    for _, point, comment in rows:
        fields = {k: v for k, v in point.items() if k != "component"}
        plain.append(fields)
        entry = tomlkit.inline_table()
        entry.update(fields)
        points.add_line(entry, comment=comment)
    points.add_line(indent="")
    device = tomlkit.table()
    device.add("device_id", args.device_id)
    device.add("points", points)
    devices = tomlkit.aot()
    devices.append(device)
    source = tomlkit.table()
    source.add("name", args.source)
    source.add("kind", "modbus")
    source.add("transport", "tcp")
    source.add("host", args.host)
    source.add("port", args.port)
    source.add("devices", devices)
    header = [f"Written by `l4e-agent discover modbus --register-map {args.register_map}`.",
              "[lookout] holds the agent's defaults: set them to your inference scheduler's settings."]
    lookout = {"upload_frequency": "PT5M", "delay_offset_minutes": 2, "sampling_rate": "PT1M",
               "input": args.input or f"file:///var/lib/l4e-agent/store/{asset}/input/"}
    doc = new_document(header, asset, lookout, components, source)
    requests = plan_device(ModbusDevice.model_validate({"device_id": args.device_id, "points": plain}))
    return tomlkit.dumps(doc), requests


def cmd_discover_modbus(args) -> int:
    if not 0 <= args.device_id <= 255 or not 1 <= args.port <= 65535:
        raise DiscoveryError("--device-id must be 0..255 and --port 1..65535", EX_USAGE)
    rows = read_map(args.register_map, args)
    text, requests = render(rows, args)
    check_and_write(text, args.output)
    per_table: dict[str, int] = {}
    for request in requests:
        per_table[request.table] = per_table.get(request.table, 0) + 1
    tables = ", ".join(f"{table} {count}" for table, count in per_table.items())
    print(f"discover: {len(rows)} point(s) from {args.register_map}; the planner reads them in {len(requests)} "
          f"request(s) per poll ({tables})", file=sys.stderr)
    return 0
