"""The ``[alarms]`` table: rules and the named hooks they deliver to (hook models in agent.alarms.hook_config)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.alarms.hook_config import HOOK_NAME_PATTERN, HookConfig, WriteBackHookConfig, _Model
from agent.core.errors import ConfigError


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
    check_interval_secs: float = Field(
        5.0,
        gt=0,
        le=3600,
        description=("Agent clock seconds between two runs of the alarm job: source health checks (silent, bad "
                     "quality, trust) and the hand-over of queued events (a window missing or written, ...) to the "
                     "rules. Queued events wait on disk (events.json in the state folder), so a restart in between "
                     "loses none."),
    )
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

