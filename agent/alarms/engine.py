"""Local alarms: rules decide, hooks deliver.

Two halves with a persisted outbox between them::

    Result lines ─┐                                   ┌→ hook "ops"     (webhook)
                  ├→ rules (pure) → state + outbox ───┼→ hook "journal" (file)
    Events ───────┘      saved atomically first       └→ hook "horn"    (write_back)

Rules
    anomaly       raised when ``prediction = 1`` for ``min_consecutive`` consecutive result rows, or at once
                  when one row has ``anomaly_score ≥ score_threshold``; cleared after ``clear_after``
                  consecutive normal rows. MACHINE_OFF rows break an abnormal run and neither count toward
                  nor break the clearing run (a stopped machine is no evidence that the fault is gone).
                  Rows are processed in ``ts`` order; a row at or before the last processed ``ts`` of the
                  rule is ignored, so a replayed results file never counts twice.
    data-health   driven by ``agent.core.model.Event`` objects. Which event kinds raise and clear is fixed
                  by EVENT_RULES below (and documented there); some alarms are kept per event subject.

Lifecycle: one alarm has one stable ``id`` from raise to clear; while it is open, further raising input only
updates it (max score, window, diagnostics) and is not delivered again.

Delivery (AlarmEngine)
    Each transition becomes an outbox entry naming the hooks still owed it. The state (open alarms,
    counters, last processed ts, outbox) is written atomically (tmp, fsync, rename) BEFORE any hook runs.
    Each (hook, transition) is its own task, with the hook's own timeout and an outer guard; deliveries of
    one alarm to one hook run in order (a clear never overtakes its raise). After a hook succeeds, or gives
    up, the entry is marked done for that hook and the state saved again. A restart re-sends exactly what
    is still pending: a crash before a hook ran delivers it once on restart; a crash in the short gap
    between a hook's success and the saved mark sends it again (at-least-once in that gap). Receivers can
    de-duplicate on (id, state). One exception: the ``disk`` rule's transitions are delivered even when the
    state cannot be saved (the disk it is about refuses writes); they are saved with the next write that
    succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.atomic import write_atomic
from agent.core.clock import Clock, iso_utc
from agent.core.errors import ConfigError, L4EAgentError, StateError, TransitionLog
from agent.core.model import Alarm, Diagnostic, Event, Result
from agent.pipeline.diskhealth import DiskHealth, disk_error

log = logging.getLogger("l4e.alarms")

STATE_FILE = "alarms.json"
STATE_VERSION = 1
HOOK_NAME_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"

# ----------------------------------------------------------------------------------------------------------
# Config models, mounted as [alarms] in the asset file. Paths stay as written; hooks resolve relative ones
# against the asset file's folder (build_hooks(base_dir)), like the connectors do.
# ----------------------------------------------------------------------------------------------------------


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
        description=("Extra environment variables for the program (on top of the agent's environment and L4E_*)."),
    )


class WebhookHookConfig(_Model):
    """HTTP POST of the alarm as JSON, optionally signed with HMAC-SHA256."""

    kind: Literal["webhook"] = Field(description="Hook type: HTTP POST.")
    url: str = Field(pattern=r"^https?://\S+$", description="http:// or https:// URL to POST the alarm JSON to.")
    secret_file: Path | None = Field(
        None,
        description=(
            "File holding the HMAC key (surrounding whitespace stripped); when set, the header "
            "'X-L4E-Signature: sha256=<hex>' signs the exact body. Relative to the asset file's folder."
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


class _RuleBase(_Model):
    name: str = Field(pattern=HOOK_NAME_PATTERN, description="Unique rule name; part of alarm ids and of the state.")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Severity carried by alarms.")
    hooks: list[str] = Field(default_factory=list, description="Names of [alarms.hooks.<name>] to deliver to.")


class AnomalyRuleConfig(_RuleBase):
    """Alarm on L4E results (see the module docstring for the exact row semantics)."""

    kind: Literal["anomaly"] = Field(description="Rule type: anomalies in inference results.")
    min_consecutive: int = Field(
        1, ge=1, le=100_000, description=("Raise when this many consecutive result rows have prediction = 1.")
    )
    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description=("Also raise at once on a row with anomaly_score >= this (0-1); such a row counts as abnormal."),
    )
    clear_after: int = Field(1, ge=1, le=100_000, description="Clear after this many consecutive normal rows.")
    top_k: int = Field(3, ge=0, le=300, description="How many top-contributing sensors the alarm carries.")


class EventRuleConfig(_RuleBase):
    """Alarm on pipeline and data-health events; which events raise and clear is listed in EVENT_RULES."""

    kind: Literal["execution_failed", "source_silent", "source_bad_quality", "source_untrusted", "window_missing",
                  "spool_full", "disk"] = Field(
        description=("Rule type: execution_failed | source_silent (the source's transport does not answer) | "
                     "source_bad_quality (it answers, but every item is Bad/Uncertain) | source_untrusted (its "
                     "server's identity is refused) | window_missing | spool_full | disk (the state directory "
                     "refuses writes: full, read-only, I/O errors).")
    )
    clear_after_quiet_secs: float | None = Field(
        None,
        gt=0,
        description=(
            "Also clear when no raising event came for this many seconds of agent clock time "
            "(checked on every result batch, event and tick)."
        ),
    )


RuleConfig = Annotated[AnomalyRuleConfig | EventRuleConfig, Field(discriminator="kind")]


class AlarmsConfig(_Model):
    """The [alarms] table of an asset file: named hooks and the rules that use them."""

    rules: list[RuleConfig] = Field(default_factory=list, description="Alarm rules ([[alarms.rules]]).")
    hooks: dict[str, HookConfig] = Field(
        default_factory=dict,
        description=("Named delivery hooks ([alarms.hooks.<name>]), referenced by rules' 'hooks' lists."),
    )

    @model_validator(mode="after")
    def _check_references(self) -> AlarmsConfig:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        for hook_name in self.hooks:
            if not re.match(HOOK_NAME_PATTERN, hook_name):
                raise ValueError(f"hook name {hook_name!r} must match {HOOK_NAME_PATTERN}")
        for rule in self.rules:
            unknown = [h for h in rule.hooks if h not in self.hooks]
            if unknown:
                raise ValueError(f"rule {rule.name!r}: unknown hooks {unknown}; defined: {sorted(self.hooks)}")
            if len(set(rule.hooks)) != len(rule.hooks):
                raise ValueError(f"rule {rule.name!r}: a hook is listed twice in {rule.hooks}")
        return self

    def check_sources(self, source_kinds: Mapping[str, str]) -> None:
        """Cross-check write_back hooks against the asset's sources ({name: kind}); raise ConfigError.

        Called by agent.config after both tables are loaded (this model cannot see [[sources]]).
        """
        for name, hook in self.hooks.items():
            if not isinstance(hook, WriteBackHookConfig):
                continue
            key = f"alarms.hooks.{name}.source"
            kind = source_kinds.get(hook.source)
            if kind is None:
                raise ConfigError(f"no source named {hook.source!r}; sources: {sorted(source_kinds)}", key=key)
            if kind != hook.protocol:
                raise ConfigError(
                    f"source {hook.source!r} is {kind!r} but the hook's address is for "
                    f"{hook.protocol!r} (modbus: table/address, opcua: node_id)",
                    key=key,
                )


# ----------------------------------------------------------------------------------------------------------
# Hooks: the protocol the engine delivers to (implementations are in agent.alarms.hooks).
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Rules: pure functions of (config, state, input) → transitions. No I/O, no clock.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRule:
    """Which Event kinds raise and clear one data-health rule.

    per_subject: one alarm per Event.subject (e.g. per source); otherwise one per asset.
    clear_on_results: any result rows (= a successful execution) clear it.
    """

    raise_kinds: frozenset[str]
    clear_kinds: frozenset[str]
    per_subject: bool
    clear_on_results: bool = False


EVENT_RULES: dict[str, EventRule] = {
    # FailedReason in Event.message. A later successful execution (its result rows, or an
    # "execution_succeeded" event from the poller) clears it: the pipeline works again.
    "execution_failed": EventRule(
        frozenset({"execution_failed"}),
        frozenset({"execution_succeeded"}),
        per_subject=False,
        clear_on_results=True,
    ),
    # One alarm per source (Event.subject = source name), cleared by its "source_recovered".
    "source_silent": EventRule(frozenset({"source_silent"}), frozenset({"source_recovered"}), per_subject=True),
    # The source answers but every item is Bad/Uncertain; cleared when one is good again.
    "source_bad_quality": EventRule(frozenset({"source_bad_quality"}), frozenset({"source_quality_recovered"}),
                                    per_subject=True),
    # The source's server presented a certificate that is not trusted (OPC-UA); cleared once it is trusted.
    "source_untrusted": EventRule(frozenset({"source_untrusted"}), frozenset({"source_trusted"}), per_subject=True),
    # One alarm per component (Event.subject), cleared when a later window of it is written
    # ("window_written").
    "window_missing": EventRule(frozenset({"window_missing"}), frozenset({"window_written"}), per_subject=True),
    # The spool dropped readings; cleared by "spool_recovered" (room again) or clear_after_quiet_secs.
    "spool_full": EventRule(frozenset({"spool_dropped"}), frozenset({"spool_recovered"}), per_subject=False),
    # The state directory refuses writes (ENOSPC, EIO, ...: agent.pipeline.diskhealth); cleared by "disk_recovered"
    # when every job writes again. While it is open the alarm state itself may not be savable: _apply then
    # delivers this rule's transitions from memory (and saves them with the next write that succeeds).
    "disk": EventRule(frozenset({"disk_failed"}), frozenset({"disk_recovered"}), per_subject=False),
}


def alarm_id(asset: str, rule: str, key: str, first_ts: float) -> str:
    """Stable id of one alarm: a hash of (asset, rule, subject key, first ts), 16 hex digits."""
    text = f"{asset}:{rule}:{key}:{first_ts!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Episode:
    """An abnormal run of result rows (a candidate before the raise, the open alarm after it)."""

    first_ts: float
    last_ts: float
    window_start: int | None
    window_end: int | None
    score: float | None = None  # max over the episode
    diagnostics: list[list] = field(default_factory=list)  # [[name, value], ...] top-k, JSON-friendly
    rows: int = 0
    raised: bool = False
    id: str = ""


@dataclass
class AnomalyState:
    """Persisted per anomaly rule."""

    last_ts: float | None = None  # last processed result row
    abnormal_run: int = 0
    normal_run: int = 0
    episode: Episode | None = None


@dataclass
class OpenEvent:
    """An open data-health alarm."""

    id: str
    first_ts: float
    last_seen: float  # ts of the latest raising event (for clear_after_quiet_secs)
    message: str
    subject: str
    count: int = 1
    window_start: int | None = None
    window_end: int | None = None


def _top_k(diagnostics: Iterable[Diagnostic], k: int) -> list[list]:
    ranked = sorted(diagnostics, key=lambda d: (-d.value, d.name))
    return [[d.name, float(d.value)] for d in ranked[:k]]


def _row_window_end(row: Result, window_secs: int | None) -> int | None:
    if row.window_start is not None and window_secs:
        return row.window_start + window_secs
    return int(row.ts)  # the last grid point seen: the window end once the window is complete


class Decider:
    """Pure rule evaluation for one asset. Methods mutate the given state objects and return transitions."""

    def __init__(self, asset: str, window_secs: int | None = None) -> None:
        self.asset = asset
        self.window_secs = window_secs

    # -- anomaly ---------------------------------------------------------------------------------------

    def anomaly(self, rule: AnomalyRuleConfig, state: AnomalyState, rows: Iterable[Result]) -> list[Alarm]:
        """Feed result rows (any order; sorted here) to one anomaly rule; return raise/clear transitions."""
        out: list[Alarm] = []
        for row in sorted(rows, key=lambda r: r.ts):
            if state.last_ts is not None and row.ts <= state.last_ts:
                continue  # replayed or out-of-order row: already counted
            state.last_ts = row.ts
            alarm = self._anomaly_row(rule, state, row)
            if alarm is not None:
                out.append(alarm)
        return out

    def _anomaly_row(self, rule: AnomalyRuleConfig, state: AnomalyState, row: Result) -> Alarm | None:
        if row.reason == "MACHINE_OFF":
            state.abnormal_run = 0
            if state.episode is not None and not state.episode.raised:
                state.episode = None
            return None
        hit = rule.score_threshold is not None and row.score is not None and row.score >= rule.score_threshold
        if row.prediction == 1 or hit:
            return self._abnormal(rule, state, row, hit)
        state.abnormal_run = 0
        episode = state.episode
        if episode is None:
            return None
        if not episode.raised:
            state.episode = None  # the run broke before it reached min_consecutive
            return None
        state.normal_run += 1
        if state.normal_run < rule.clear_after:
            return None
        state.episode = None
        state.normal_run = 0
        return self._episode_alarm(rule, episode, "cleared", row.ts, f"cleared after {rule.clear_after} normal rows")

    def _abnormal(self, rule: AnomalyRuleConfig, state: AnomalyState, row: Result, hit: bool) -> Alarm | None:
        state.abnormal_run += 1
        state.normal_run = 0
        episode = state.episode
        if episode is None:
            episode = state.episode = Episode(
                first_ts=row.ts, last_ts=row.ts, window_start=row.window_start, window_end=None
            )
        episode.last_ts = row.ts
        episode.rows += 1
        episode.window_end = _row_window_end(row, self.window_secs)
        if episode.window_start is None:
            episode.window_start = row.window_start
        # Diagnostics come from the row with the highest score (the most telling one); without scores
        # (old models) from the latest abnormal row that has any.
        better = row.score is not None and (episode.score is None or row.score > episode.score)
        if better or (episode.score is None and row.score is None and row.diagnostics):
            episode.diagnostics = _top_k(row.diagnostics, rule.top_k)
        if row.score is not None and (episode.score is None or row.score > episode.score):
            episode.score = row.score
        if episode.raised or not (hit or state.abnormal_run >= rule.min_consecutive):
            return None
        episode.raised = True
        episode.id = alarm_id(self.asset, rule.name, "", episode.first_ts)
        why = (
            f"score {row.score:.3f} >= {rule.score_threshold}"
            if hit
            else f"{state.abnormal_run} consecutive abnormal rows"
        )
        return self._episode_alarm(rule, episode, "raised", row.ts, f"anomaly: {why}")

    def _episode_alarm(self, rule: AnomalyRuleConfig, ep: Episode, state: str, ts: float, why: str) -> Alarm:
        diagnostics = tuple(Diagnostic(name, value) for name, value in ep.diagnostics)
        top = ", ".join(d.name for d in diagnostics)
        score = "n/a" if ep.score is None else f"{ep.score:.3f}"
        message = f"{why}; max score {score}" + (f"; top sensors {top}" if top else "")
        return Alarm(
            id=ep.id,
            asset=self.asset,
            rule=rule.name,
            state=state,
            ts=ts,
            severity=rule.severity,
            message=message,
            score=ep.score,
            window_start=ep.window_start,
            window_end=ep.window_end,
            diagnostics=diagnostics,
        )

    # -- events ----------------------------------------------------------------------------------------

    def event(self, rule: EventRuleConfig, state: dict[str, OpenEvent], event: Event) -> list[Alarm]:
        """Apply one Event to one data-health rule (state: open alarms by subject key)."""
        spec = EVENT_RULES[rule.kind]
        key = event.subject if spec.per_subject else ""
        if event.kind in spec.raise_kinds:
            return self._event_raise(rule, state, key, event)
        if event.kind in spec.clear_kinds:
            keys = [key] if spec.per_subject else list(state)
            return [
                self._event_clear(rule, state, k, event.ts, event.message or event.kind) for k in keys if k in state
            ]
        return []

    def _event_raise(self, rule: EventRuleConfig, state: dict[str, OpenEvent], key: str, event: Event) -> list[Alarm]:
        current = state.get(key)
        if current is not None:  # repeat: suppressed, but keeps the alarm fresh for clear_after_quiet_secs
            current.last_seen = max(current.last_seen, event.ts)
            current.count += 1
            current.message = event.message or current.message
            return []
        details = event.details or {}
        opened = state[key] = OpenEvent(
            id=alarm_id(self.asset, rule.name, key, event.ts),
            first_ts=event.ts,
            last_seen=event.ts,
            message=event.message or event.kind,
            subject=event.subject,
            window_start=_int_or_none(details.get("window_start")),
            window_end=_int_or_none(details.get("window_end")),
        )
        return [self._event_alarm(rule, opened, "raised", event.ts, opened.message)]

    def _event_clear(self, rule: EventRuleConfig, state: dict[str, OpenEvent], key: str, ts: float, why: str) -> Alarm:
        opened = state.pop(key)
        return self._event_alarm(rule, opened, "cleared", ts, why)

    def _event_alarm(self, rule: EventRuleConfig, opened: OpenEvent, state: str, ts: float, message: str) -> Alarm:
        subject = f"{opened.subject}: " if opened.subject else ""
        return Alarm(
            id=opened.id,
            asset=self.asset,
            rule=rule.name,
            state=state,
            ts=ts,
            severity=rule.severity,
            message=f"{rule.kind}: {subject}{message}",
            window_start=opened.window_start,
            window_end=opened.window_end,
        )

    def results_clear(self, rule: EventRuleConfig, state: dict[str, OpenEvent], rows: list[Result]) -> list[Alarm]:
        """Result rows arrived (a successful execution): clear rules that such a success ends."""
        if not rows or not EVENT_RULES[rule.kind].clear_on_results:
            return []
        ts = max(r.ts for r in rows)
        return [self._event_clear(rule, state, k, ts, "a later execution succeeded") for k in list(state)]

    def quiet_clear(self, rule: EventRuleConfig, state: dict[str, OpenEvent], now: float) -> list[Alarm]:
        """Clear alarms whose raising events stopped ``clear_after_quiet_secs`` ago."""
        if rule.clear_after_quiet_secs is None:
            return []
        stale = [k for k, o in state.items() if now - o.last_seen >= rule.clear_after_quiet_secs]
        why = f"no new event for {rule.clear_after_quiet_secs:g} s"
        return [self._event_clear(rule, state, k, now, why) for k in stale]


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------
# Persisted state: rule states + the outbox, one JSON file written atomically.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class OutboxEntry:
    """A transition still owed to some hooks (in the order they were decided: ``seq``)."""

    seq: int
    alarm: Alarm
    pending: list[str]


@dataclass
class EngineState:
    """Everything the engine persists (``alarms.json`` in the state directory): per-rule counters and open
    alarms, and the outbox of deliveries still owed."""

    anomaly: dict[str, AnomalyState] = field(default_factory=dict)
    events: dict[str, dict[str, OpenEvent]] = field(default_factory=dict)
    outbox: list[OutboxEntry] = field(default_factory=list)
    next_seq: int = 1

    def to_json(self) -> bytes:
        data = {
            "version": STATE_VERSION,
            "anomaly": {name: asdict(st) for name, st in self.anomaly.items()},
            "events": {name: {k: asdict(o) for k, o in opened.items()} for name, opened in self.events.items()},
            "outbox": [{"seq": e.seq, "alarm": alarm_to_dict(e.alarm), "pending": e.pending} for e in self.outbox],
            "next_seq": self.next_seq,
        }
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EngineState:
        data = json.loads(raw)
        if data.get("version") != STATE_VERSION:
            raise StateError(f"alarm state version {data.get('version')!r}, expected {STATE_VERSION}")
        state = cls(next_seq=int(data.get("next_seq", 1)))
        for name, st in data.get("anomaly", {}).items():
            episode = st.pop("episode", None)
            state.anomaly[name] = AnomalyState(**st, episode=Episode(**episode) if episode else None)
        for name, opened in data.get("events", {}).items():
            state.events[name] = {k: OpenEvent(**o) for k, o in opened.items()}
        for e in data.get("outbox", []):
            state.outbox.append(OutboxEntry(int(e["seq"]), alarm_from_dict(e["alarm"]), list(e["pending"])))
        return state


def _write_atomic(path: Path, data: bytes) -> None:
    """agent.core.atomic.write_atomic: after a crash the file holds either the old or the new state."""
    write_atomic(path, data)


# ----------------------------------------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------------------------------------


class AlarmEngine:
    """Evaluates rules on results and events, persists, and delivers transitions to hooks.

    asset: the asset name carried by alarms. hooks: built by agent.alarms.hooks.build_hooks (by name). clock: the
    agent clock (its ``now()`` drives clear_after_quiet_secs). window_secs: the upload frequency in seconds,
    used for an alarm's window end (without it, the latest row ts of the episode). No I/O before ``start()``
    (called by the first on_results/on_event/tick if not called before).
    """

    def __init__(
        self,
        asset: str,
        config: AlarmsConfig,
        state_dir: Path,
        hooks: Mapping[str, AlarmHook],
        clock: Clock,
        *,
        window_secs: int | None = None,
    ) -> None:
        missing = sorted({h for rule in config.rules for h in rule.hooks if h not in hooks})
        if missing:
            raise ConfigError(f"alarm hooks not built: {missing}", key="alarms.hooks")
        self.asset = asset
        self.config = config
        self.state_path = Path(state_dir) / STATE_FILE
        self.hooks = dict(hooks)
        self.clock = clock
        self._decider = Decider(asset, window_secs)
        self._state = EngineState()
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self._chains: dict[tuple[str, str], asyncio.Task] = {}  # (hook, alarm id) → latest delivery task
        self._hook_log = TransitionLog(log)
        # set by the service: where a failed save of the state (full disk) is reported instead of logged
        self.disk: DiskHealth | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the saved state and re-send every delivery still pending from before a restart."""
        async with self._lock:
            if self._started:
                return
            self._state = await asyncio.to_thread(self._load)
            self._prune_to_config()
            self._started = True
            for entry in self._state.outbox:
                self._dispatch(entry)

    async def close(self, timeout_secs: float = 10.0) -> None:
        """Wait up to ``timeout_secs`` for in-flight deliveries, then cancel the rest (they stay pending in
        the saved outbox and are re-sent by the next start)."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_secs)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def drain(self, timeout_secs: float | None = None) -> bool:
        """Wait until no delivery is in flight; True if the outbox is then empty."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_secs is None else loop.time() + timeout_secs
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return not self._state.outbox

    # -- inputs ----------------------------------------------------------------------------------------

    async def on_results(self, results: Iterable[Result]) -> list[Alarm]:
        """Feed result rows (one or more executions); returns the transitions decided (already persisted and
        queued for delivery). Raises StateError when the state cannot be saved: then nothing changed and
        nothing is delivered, so the caller can feed the same rows again (rows already counted are skipped)."""
        rows = list(results)
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, AnomalyRuleConfig):
                    out += self._decider.anomaly(rule, state.anomaly.setdefault(rule.name, AnomalyState()), rows)
                else:
                    opened = state.events.setdefault(rule.name, {})
                    out += self._decider.results_clear(rule, opened, rows)
                    out += self._decider.quiet_clear(rule, opened, now)
            return out

        return await self._apply(decide)

    async def on_event(self, event: Event) -> list[Alarm]:
        """Feed one pipeline or data-health event; returns the transitions decided."""
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, EventRuleConfig):
                    opened = state.events.setdefault(rule.name, {})
                    out += self._decider.event(rule, opened, event)
                    out += self._decider.quiet_clear(rule, opened, now)
            return out

        return await self._apply(decide)

    async def tick(self) -> list[Alarm]:
        """Time-driven checks (clear_after_quiet_secs); call periodically, e.g. once a minute."""
        now = self.clock.now()

        def decide(state: EngineState) -> list[Alarm]:
            out: list[Alarm] = []
            for rule in self.config.rules:
                if isinstance(rule, EventRuleConfig):
                    out += self._decider.quiet_clear(rule, state.events.setdefault(rule.name, {}), now)
            return out

        return await self._apply(decide)

    # -- views -----------------------------------------------------------------------------------------

    def open_alarms(self) -> list[dict[str, Any]]:
        """Open alarms for `status`: rule, id, since (ts), subject/score."""
        out = []
        for name, st in self._state.anomaly.items():
            if st.episode is not None and st.episode.raised:
                out.append(
                    {
                        "rule": name,
                        "id": st.episode.id,
                        "since": st.episode.first_ts,
                        "score": st.episode.score,
                    }
                )
        for name, opened in self._state.events.items():
            out += [{"rule": name, "id": o.id, "since": o.first_ts, "subject": o.subject} for o in opened.values()]
        return out

    def pending_deliveries(self) -> int:
        """(transition, hook) pairs not yet delivered."""
        return sum(len(e.pending) for e in self._state.outbox)

    # -- internals -------------------------------------------------------------------------------------

    async def _apply(self, decide: Callable[[EngineState], list[Alarm]]) -> list[Alarm]:
        # Decide on a copy and swap it in only after it is on disk: if the save fails (disk full), memory
        # and disk still agree and the input can be fed again.
        if self._closed:
            raise RuntimeError("AlarmEngine is closed")
        await self.start()
        async with self._lock:
            state = copy.deepcopy(self._state)
            alarms = decide(state)
            entries = []
            for alarm in alarms:
                hooks = [h for h in self._rule(alarm.rule).hooks]
                if hooks:
                    entries.append(OutboxEntry(state.next_seq, alarm, hooks))
                    state.next_seq += 1
            state.outbox.extend(entries)
            try:
                await asyncio.to_thread(self._save, state.to_json())
            except StateError as exc:
                if not (alarms and disk_error(exc) is not None
                        and all(self._rule(a.rule).kind == "disk" for a in alarms)):
                    raise
                # The disk alarm exists to be heard while the disk refuses writes: adopt and deliver it from
                # memory; it is saved with the next write that succeeds (a crash before that forgets it, the
                # one at-most-once case). The StateError still reaches the caller, which feeds the same
                # event again (then a suppressed repeat) until the state can be saved.
                self._adopt(state, alarms, entries)
                raise
            self._adopt(state, alarms, entries)
        return alarms

    def _adopt(self, state: EngineState, alarms: list[Alarm], entries: list[OutboxEntry]) -> None:
        self._state = state
        for alarm in alarms:
            log.debug("alarm %s %s rule=%s", alarm.id, alarm.state, alarm.rule)
        # Dispatch last, with no await after it: a crash before the tasks run leaves them pending on disk.
        for entry in entries:
            self._dispatch(entry)

    def _rule(self, name: str) -> AnomalyRuleConfig | EventRuleConfig:
        return next(rule for rule in self.config.rules if rule.name == name)

    def _dispatch(self, entry: OutboxEntry) -> None:
        for hook_name in list(entry.pending):
            chain_key = (hook_name, entry.alarm.id)
            previous = self._chains.get(chain_key)
            task = asyncio.create_task(
                self._deliver(entry, hook_name, previous),
                name=f"alarm-{entry.alarm.id}-{entry.alarm.state}-{hook_name}",
            )
            self._chains[chain_key] = task
            self._tasks.add(task)
            task.add_done_callback(lambda t, k=chain_key: self._task_done(t, k))

    def _task_done(self, task: asyncio.Task, chain_key: tuple[str, str]) -> None:
        self._tasks.discard(task)
        if self._chains.get(chain_key) is task:
            del self._chains[chain_key]
        if not task.cancelled() and task.exception() is not None:  # only _mark_done's StateError can get here
            exc = task.exception()
            if self.disk is not None and disk_error(exc) is not None:
                # the mark is in memory and is saved with the next state write that succeeds
                self.disk.failure("alarms", exc)
            else:
                log.error("alarm delivery bookkeeping failed: %s", exc, exc_info=exc)

    async def _deliver(self, entry: OutboxEntry, hook_name: str, previous: asyncio.Task | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keep raise → clear order per (hook, alarm); ignore its outcome
        hook = self.hooks[hook_name]
        alarm = entry.alarm
        try:
            await asyncio.wait_for(hook.fire(alarm), timeout=hook.deadline_secs)
        except (HookError, TimeoutError) as exc:  # the delivery failed (after the hook's retries, or its deadline)
            hook.failures += 1
            self._hook_log.failure(
                hook_name,
                "alarm hook %s failed to deliver %s %s: %s",
                hook_name,
                alarm.id,
                alarm.state,
                str(exc) or type(exc).__name__,
            )
        except Exception as exc:  # supervision boundary: a bug in a hook never reaches the data path
            hook.failures += 1
            self._hook_log.failure(
                hook_name,
                "alarm hook %s raised %s delivering %s %s (a bug in the hook)",
                hook_name,
                type(exc).__name__,
                alarm.id,
                alarm.state,
                exc_info=exc,
            )
        else:
            hook.delivered += 1
            self._hook_log.success(hook_name, "alarm hook %s delivers again", hook_name)
        # The outcome is known: record it even if close() cancels this task meanwhile, or the next start
        # would send it again.
        mark = asyncio.ensure_future(self._mark_done(entry.seq, hook_name))
        try:
            await asyncio.shield(mark)
        except asyncio.CancelledError:
            await mark
            raise

    async def _mark_done(self, seq: int, hook_name: str) -> None:
        async with self._lock:
            for entry in self._state.outbox:
                if entry.seq == seq and hook_name in entry.pending:
                    entry.pending.remove(hook_name)
            self._state.outbox = [e for e in self._state.outbox if e.pending]
            await asyncio.to_thread(self._save, self._state.to_json())

    def _prune_to_config(self) -> None:
        """Drop state of rules no longer configured and deliveries to hooks that no longer exist."""
        rules = {rule.name: rule for rule in self.config.rules}
        for table in (self._state.anomaly, self._state.events):
            for name in [n for n in table if n not in rules]:
                log.warning("alarm rule %s is no longer configured; its saved state is dropped", name)
                del table[name]
        for entry in self._state.outbox:
            gone = [h for h in entry.pending if h not in self.hooks]
            if gone:
                log.warning(
                    "alarm %s %s: hooks %s no longer exist; not delivered",
                    entry.alarm.id,
                    entry.alarm.state,
                    gone,
                )
                entry.pending = [h for h in entry.pending if h in self.hooks]
        self._state.outbox = [e for e in self._state.outbox if e.pending]

    def _load(self) -> EngineState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return EngineState()
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc}") from exc
        try:
            # A StateError (a file from a newer agent) propagates: better stop than forget open alarms.
            return EngineState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # A corrupt file cannot come from _write_atomic; keep it for inspection and start afresh rather
            # than stop alarming altogether.
            broken = self.state_path.with_suffix(".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.state_path, broken)
            log.error("alarm state %s unreadable (%s); moved to %s, starting empty", self.state_path, exc, broken)
            return EngineState()

    def _save(self, data: bytes) -> None:
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.state_path, data)
        except OSError as exc:
            raise StateError(f"cannot write {self.state_path}: {exc}") from exc
