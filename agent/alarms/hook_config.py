"""What a hook is: its configuration models (``[alarms.hooks.<name>]``) and the protocol the engine delivers
to, with the one JSON payload every hook sends. The implementations are in agent.alarms.hooks.

Paths stay as written; hooks resolve relative ones against the asset file's folder (build_hooks(base_dir)),
like the connectors do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.clock import iso_utc
from agent.core.errors import L4EAgentError
from agent.core.model import Alarm, Diagnostic

HOOK_NAME_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# the agent's AWS credentials never reach a hook program (pass_env refuses them)
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                  "AWS_SECURITY_TOKEN"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecHookConfig(_Model):
    """Run a program per transition: never through a shell; the alarm as JSON on stdin."""

    kind: Literal["exec"] = Field(description="Hook type: run a program.")
    argv: list[str] = Field(
        min_length=1,
        description=(
            "Program and arguments, no shell. A relative program path containing '/' is relative to the "
            "asset file's folder; a bare name is looked up in PATH."
        ),
    )
    timeout_secs: float = Field(
        10.0,
        gt=0,
        le=3600,
        description=("Wall seconds the program may run; then its process group is killed and the delivery failed."),
    )
    max_concurrency: int = Field(4, ge=1, le=64, description="At most this many runs of this hook at once.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description=("Environment variables set for the program, with their values. The program's environment is "
                     "only PATH, LANG, the L4E_* alarm variables, these and pass_env: never the agent's own "
                     "(its AWS credentials included)."),
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description=("Names of the agent's environment variables passed on to the program when set (e.g. "
                     "[\"HTTPS_PROXY\"]). AWS credential variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                     "AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN) are refused."),
    )

    @model_validator(mode="after")
    def _check_env_names(self) -> ExecHookConfig:
        for name in [*self.env, *self.pass_env]:
            if not re.match(ENV_NAME_PATTERN, name):
                raise ValueError(f"environment variable name {name!r} must match {ENV_NAME_PATTERN}")
        refused = sorted(set(self.pass_env) & CREDENTIAL_VARIABLES)
        if refused:
            raise ValueError(f"pass_env: {refused} would hand the agent's AWS credentials to the hook; give the "
                             "program its own credentials (env, or a file it reads) if it needs any")
        return self


class WebhookHookConfig(_Model):
    """HTTP POST of the alarm as JSON, optionally signed with HMAC-SHA256."""

    kind: Literal["webhook"] = Field(description="Hook type: HTTP POST.")
    url: str = Field(pattern=r"^https?://\S+$", description="http:// or https:// URL to POST the alarm JSON to.")
    secret_file: Path | None = Field(
        None,
        description=(
            "File holding the HMAC key (surrounding whitespace stripped); when set, the header "
            "'X-L4E-Signature: sha256=<hex>' signs the exact body. Relative to the asset file's folder; "
            "\"credential:NAME\" reads the systemd credential NAME (LoadCredential=) instead."
        ),
    )
    timeout_secs: float = Field(5.0, gt=0, le=300, description="Seconds per HTTP attempt (connect and read).")
    retries: int = Field(
        3,
        ge=0,
        le=20,
        description=("Further attempts after a failed one (connection error, timeout, HTTP 429 or 5xx); 4xx is final."),
    )
    backoff_initial_secs: float = Field(
        0.5,
        gt=0,
        le=60,
        description=("First delay between attempts, wall seconds; doubles (jittered) up to backoff_max_secs."),
    )
    backoff_max_secs: float = Field(10.0, gt=0, le=600, description="Longest delay between attempts, wall seconds.")
    use_env_proxy: bool = Field(True, description="Honour http_proxy/https_proxy/no_proxy from the environment.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (e.g. an API token).")


class FileHookConfig(_Model):
    """Append one JSON line per transition to a file, fsynced."""

    kind: Literal["file"] = Field(description="Hook type: append JSON lines to a file.")
    path: Path = Field(description="File to append to (created with its folder); relative to the asset file's folder.")


class LogHookConfig(_Model):
    """One structured line per transition on the logger ``l4e.alarms`` (raised: WARNING, or ERROR if critical;
    cleared: INFO)."""

    kind: Literal["log"] = Field(description="Hook type: a log line on the logger 'l4e.alarms'.")


class WriteBackHookConfig(_Model):
    """Write a value to the PLC through a configured Modbus or OPC-UA source: raise_value on raise,
    clear_value on clear. Modbus needs table/address (device_id defaults to 1); OPC-UA needs node_id."""

    kind: Literal["write_back"] = Field(description="Hook type: write a value back to the PLC.")
    source: str = Field(
        pattern=r"^[A-Za-z0-9._\-]{1,64}$",
        description="Name of the modbus or opcua [[sources]] entry whose connection settings to use.",
    )
    table: Literal["coil", "holding"] | None = Field(None, description="Modbus table to write: 'coil' or 'holding'.")
    device_id: int | None = Field(None, ge=0, le=255, description="Modbus device (unit) id; 1 when omitted.")
    address: int | None = Field(None, ge=0, le=65535, description="Modbus address (0-based) of the coil or register.")
    node_id: str | None = Field(None, min_length=1, description="OPC-UA NodeId to write, e.g. 'ns=2;s=Pump1.Alarm'.")
    type: Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"] = Field(
        "uint16", description="Encoding of the value in holding registers (Modbus 'holding' only)."
    )
    order: Literal["ABCD", "DCBA", "BADC", "CDAB"] = Field(
        "ABCD", description="Byte order of a multi-register value, as for Modbus points ('holding' only)."
    )
    raise_value: bool | int | float = Field(1, description="Value written when the alarm is raised.")
    clear_value: bool | int | float = Field(0, description="Value written when the alarm is cleared.")
    timeout_secs: float = Field(5.0, gt=0, le=300, description="Seconds per write attempt.")
    retries: int = Field(2, ge=0, le=20, description="Further attempts after a failed write.")
    backoff_initial_secs: float = Field(0.5, gt=0, le=60, description="First delay between attempts, wall seconds; "
                                        "doubles (jittered) up to backoff_max_secs.")
    backoff_max_secs: float = Field(10.0, gt=0, le=600, description="Longest delay between attempts, wall seconds.")

    @model_validator(mode="after")
    def _one_address_form(self) -> WriteBackHookConfig:
        modbus = self.table is not None or self.address is not None or self.device_id is not None
        if modbus and self.node_id is not None:
            raise ValueError("write_back: give either table/address/device_id (Modbus) or node_id (OPC-UA), not both")
        if not modbus and self.node_id is None:
            raise ValueError("write_back: needs table and address (Modbus) or node_id (OPC-UA)")
        if modbus and (self.table is None or self.address is None):
            raise ValueError("write_back: Modbus needs both table ('coil' | 'holding') and address")
        if {"type", "order"} & self.model_fields_set and self.table != "holding":
            raise ValueError("write_back: type and order apply to Modbus holding registers only")
        return self

    @property
    def protocol(self) -> Literal["modbus", "opcua"]:
        """Which kind of source this hook must name."""
        return "opcua" if self.node_id is not None else "modbus"


HookConfig = Annotated[
    ExecHookConfig | WebhookHookConfig | FileHookConfig | LogHookConfig | WriteBackHookConfig,
    Field(discriminator="kind"),
]


class HookError(L4EAgentError):
    """A hook failed to deliver (after its own retries). The engine counts it and logs the transition."""


@runtime_checkable
class AlarmHook(Protocol):
    """Delivers alarm transitions somewhere. ``fire`` raises HookError (or any Exception) when it gives up.

    ``failures`` and ``delivered`` are counters the engine increments; ``deadline_secs`` bounds one ``fire``
    call (the engine cancels it after that, counting a failure).
    """

    name: str
    failures: int
    delivered: int
    deadline_secs: float

    async def fire(self, alarm: Alarm) -> None: ...


def alarm_to_dict(alarm: Alarm) -> dict[str, Any]:
    """The JSON payload every hook sends: the Alarm's fields plus ``time`` (ISO UTC of ``ts``)."""
    payload = asdict(alarm)
    payload["diagnostics"] = [{"name": d.name, "value": d.value} for d in alarm.diagnostics]
    payload["time"] = iso_utc(alarm.ts)
    return payload


def alarm_from_dict(data: Mapping[str, Any]) -> Alarm:
    """Inverse of alarm_to_dict (unknown keys such as ``time`` ignored)."""
    fields = {k: v for k, v in data.items() if k in Alarm.__dataclass_fields__}
    fields["diagnostics"] = tuple(Diagnostic(d["name"], float(d["value"])) for d in data.get("diagnostics", ()))
    return Alarm(**fields)


def alarm_json(alarm: Alarm) -> bytes:
    """Compact UTF-8 JSON of alarm_to_dict, the exact bytes webhooks sign and exec hooks read on stdin."""
    return json.dumps(alarm_to_dict(alarm), separators=(",", ":"), sort_keys=True).encode()
