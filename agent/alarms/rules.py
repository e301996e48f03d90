"""Rules: pure functions of (config, state, input) → transitions. No I/O, no clock.

The semantics of each rule are in agent.alarms.engine's docstring; which events raise and clear a data-health
rule is EVENT_RULES below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.alarms.config import AnomalyRuleConfig, EventRuleConfig
from agent.core.model import Alarm, Diagnostic, Event, Result


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

