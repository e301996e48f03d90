"""Generates ``config/example.toml`` from the config models, so the example cannot drift from the code.

Every field appears with its description as a comment: set fields with the example value, the others
commented out with their default. ``tests/unit/test_config.py`` fails when the committed file differs from
``render_example()``; regenerate with ``l4e-agent config-example > config/example.toml``.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agent.config import AssetConfig
from connectors.registry import SOURCE_MODELS

HEADER = """\
# l4e-agent asset file: one per asset (e.g. /etc/l4e-agent/pump-07.toml).
# Generated from the config models by `l4e-agent config-example`; every key is described above it.
# Keys shown commented out take the default given. Environment overrides: L4E_AGENT_<KEY>, nested keys
# joined by "__" (e.g. L4E_AGENT_LOOKOUT__INPUT=s3://bucket/prefix/).
"""

EXAMPLE: dict[str, Any] = {
    "asset": "pump-07",
    "lookout": {
        "upload_frequency": "PT5M", "delay_offset_minutes": 2, "sampling_rate": "PT1M",
        "input": "s3://plant-l4e/pump-07/input/", "timestamp_format": "yyyyMMddHHmmss", "delimiter": "_",
        "timezone_offset": "+00:00",
    },
    "components": {"pump": ["flow", "discharge_pressure", "bearing_temp", "motor_current"]},
    "sensors": {"flow": {"agg": "mean"}},
    "window": {"agg": "mean", "fill_limit": 2, "grace_secs": 20},
}

SOURCE_EXAMPLES: dict[str, dict[str, Any]] = {
    # relative to the asset file: config/example.toml replays the shipped config/replay/history.csv
    # each sensor comes from exactly one source: the replay gives flow, OPC-UA bearing_temp, Modbus the rest
    "replay": {"name": "history", "kind": "replay", "path": "replay/history.csv", "columns": ["flow"]},
    "opcua": {"name": "line", "kind": "opcua", "endpoint": "opc.tcp://10.0.0.9:4840", "mode": "subscribe",
              "timestamp": "source",
              "nodes": [{"sensor": "bearing_temp", "node_id": "ns=2;s=Pump07.BearingTemp"}]},
    "modbus": {"name": "plc1", "kind": "modbus", "transport": "tcp", "host": "10.0.0.5", "port": 502,
               "poll_interval_ms": 1000,
               "devices": [{"device_id": 1, "points": [
                   {"sensor": "motor_current", "table": "holding", "address": 0, "type": "float32",
                    "order": "CDAB"},
                   {"sensor": "discharge_pressure", "table": "input", "address": 3, "type": "int16",
                    "scale": 0.01}]}]},
}


ALARMS_EXAMPLE = """\
[alarms]
# check_interval_secs = 5.0   # clock seconds between alarm job runs: source health checks, queued events → rules
#                             # (queued events wait on disk in <state-dir>/events.json: a restart loses none)
# Hooks deliver alarms: kind = exec | webhook | file | log | write_back (see agent/alarms/hook_config.py for every key).
[alarms.hooks.journal]
kind = "log"
[alarms.hooks.history]
kind = "file"
path = "/var/lib/l4e-agent/alarms.jsonl"
# [alarms.hooks.ops]
# kind = "webhook"
# url = "http://127.0.0.1:8080/alarm"
# secret_file = "/etc/l4e-agent/hook.secret"   # HMAC-SHA256 in X-L4E-Signature (must exist at load)
# [alarms.hooks.pager]
# kind = "exec"                               # the alarm as JSON on stdin, no shell
# argv = ["/usr/local/bin/page-oncall", "--team", "maintenance"]
# env = { PAGER_ZONE = "north" }              # the program's environment is only PATH, LANG, the L4E_* alarm
# pass_env = ["HTTPS_PROXY"]                  #   variables, env and pass_env (never the agent's AWS credentials)
# [alarms.hooks.horn]
# kind = "write_back"                         # set on raise, reset on clear, through a [[sources]] entry
# source = "plc1"
# table = "coil"
# address = 12
# Rules decide: kind = anomaly | execution_failed | source_silent | source_bad_quality | source_untrusted |
#   window_missing | spool_full | disk
[[alarms.rules]]
name = "anomaly"
kind = "anomaly"
min_consecutive = 3        # prediction = 1 for at least this many consecutive rows
score_threshold = 0.8      # or one row with anomaly_score >= this
clear_after = 5            # normal rows that clear it
top_k = 3                  # diagnostics carried in the alarm
hooks = ["journal", "history"]
[[alarms.rules]]
name = "data-health"
kind = "window_missing"
hooks = ["journal"]
[[alarms.rules]]
name = "disk"
kind = "disk"              # the state directory refuses writes (full, read-only, I/O errors); cleared when it recovers
hooks = ["journal"]
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if hasattr(value, "__fspath__"):
        return json.dumps(str(value))
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str | None, indent: str = "") -> list[str]:
    if not text:
        return []
    return [indent + "# " + line for line in textwrap.wrap(text, 100)]


def _default_text(field) -> str | None:
    if field.default is PydanticUndefined or field.default is None:
        if field.default_factory is not None:
            return None
        return None
    try:
        return toml_value(field.default)
    except TypeError:
        return None


def _section(model: type[BaseModel], values: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # nested sections are rendered as their own tables
        if (name in values and not isinstance(values[name], dict | list)) or (
                name in values and isinstance(values[name], list) and values[name]
                and not isinstance(values[name][0], dict)):
            lines += _comment(field.description)
            lines.append(f"{name} = {toml_value(values[name])}")
        elif name in values and isinstance(values[name], list):
            lines += _comment(field.description)
            inner = ",\n    ".join(toml_value(v) for v in values[name])
            lines.append(f"{name} = [\n    {inner},\n]")
        elif name not in values:
            default = _default_text(field)
            lines += _comment(field.description)
            lines.append(f"# {name} = {default}" if default is not None else f"# {name} = (not set)")
    return lines


def render_example() -> str:
    out = [HEADER]
    top = AssetConfig.model_fields
    out += _comment(top["asset"].description)
    out.append(f"asset = {toml_value(EXAMPLE['asset'])}")
    for name in ("lookout", "window", "spool", "upload", "health", "metrics", "log"):
        field = top[name]
        model = field.annotation
        out += ["", *_comment(field.description), f"[{name}]"]
        out += _section(model, EXAMPLE.get(name, {}))
    out += ["", *_comment(top["components"].description), "[components]"]
    out += [f"{comp} = {toml_value(sensors)}" for comp, sensors in EXAMPLE["components"].items()]
    sensor_model = top["sensors"].annotation.__args__[1]
    for sensor, values in EXAMPLE["sensors"].items():
        out += ["", *_comment(top["sensors"].description), f"[sensors.{sensor}]"]
        out += _section(sensor_model, values)
    out += ["", *_comment(top["alarms"].description), ALARMS_EXAMPLE.rstrip("\n")]
    for kind, model in SOURCE_MODELS.items():
        example = SOURCE_EXAMPLES.get(kind)
        if example is None:
            continue
        out += ["", *_comment(f"{top['sources'].description} ({model.__doc__.strip().splitlines()[0]})"),
                "[[sources]]"]
        out += _section(model, example)
    return "\n".join(out) + "\n"
