"""Alarm rules, lifecycle and the persisted engine (hooks replaced by in-memory recorders)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from agent.alarms import config as alarms_config
from agent.alarms import hook_config
from agent.alarms.config import AlarmsConfig, AnomalyRuleConfig, EventRuleConfig
from agent.alarms.engine import AlarmEngine
from agent.alarms.hook_config import HookError, alarm_from_dict, alarm_json, alarm_to_dict
from agent.alarms.hooks import build_hooks
from agent.alarms.rules import AnomalyState, Decider
from agent.alarms.state import STATE_FILE
from agent.core.errors import ConfigError
from agent.core.model import Alarm, Diagnostic, Event, Result

T0 = 1_700_000_000  # a whole minute, on a 5-minute grid
EXAMPLE = """
[hooks.ops]
kind = "webhook"
url = "http://127.0.0.1:8080/alarm"
secret_file = "hook.secret"
timeout_secs = 5
retries = 3

[hooks.journal]
kind = "file"
path = "alarms.jsonl"

[hooks.horn]
kind = "write_back"
source = "plc"
table = "coil"
device_id = 1
address = 10

[[rules]]
name = "anomaly"
kind = "anomaly"
min_consecutive = 3
score_threshold = 0.8
clear_after = 5
top_k = 3
hooks = ["ops", "journal"]

[[rules]]
name = "silent"
kind = "source_silent"
hooks = ["journal", "horn"]
"""


class FakeClock:
    speed = 1.0

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class Recorder:
    """An AlarmHook that records what it got; can fail or wait for a gate first."""

    def __init__(
        self, name: str, *, fail: bool = False, gate: asyncio.Event | None = None, deadline_secs: float = 5.0
    ) -> None:
        self.name = name
        self.failures = 0
        self.delivered = 0
        self.deadline_secs = deadline_secs
        self.fail = fail
        self.gate = gate
        self.got: list[Alarm] = []
        self.fired = asyncio.Event()

    async def fire(self, alarm: Alarm) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise HookError("boom")
        self.got.append(alarm)
        self.fired.set()


def diag(*pairs: tuple[str, float]) -> tuple[Diagnostic, ...]:
    return tuple(Diagnostic(f"pump\\{n}", v) for n, v in pairs)


def rows(
    preds: list[int], start: float = T0 + 60, scores: list[float | None] | None = None, window: int = T0, step: int = 60
) -> list[Result]:
    """Result rows one ``step`` apart; score defaults to 0.9 for prediction 1 and 0.1 for 0."""
    out = []
    for i, p in enumerate(preds):
        score = scores[i] if scores else (0.9 if p else 0.1)
        reason = "ANOMALY_DETECTED" if p else "NO_ANOMALY_DETECTED"
        out.append(
            Result(
                ts=start + i * step,
                prediction=p,
                reason=reason,
                score=score,
                diagnostics=diag(("a", 0.5), ("b", 0.3), ("c", 0.15), ("d", 0.05)),
                window_start=window,
            )
        )
    return out


def anomaly_rule(**kw) -> AnomalyRuleConfig:
    return AnomalyRuleConfig(**{"name": "anomaly", "kind": "anomaly", **kw})


def config(*rules, hooks=("rec",)) -> AlarmsConfig:
    return AlarmsConfig(
        rules=[{**r, "hooks": list(hooks)} for r in rules],
        hooks={h: {"kind": "log"} for h in hooks},
    )


# ---------------------------------------------------------------------------------------------- config


def test_example_config_parses_and_builds_hooks(tmp_path: Path) -> None:
    cfg = AlarmsConfig.model_validate(tomllib.loads(EXAMPLE))
    assert [r.name for r in cfg.rules] == ["anomaly", "silent"]
    assert cfg.hooks["horn"].protocol == "modbus"
    written = []

    def writer_factory(hook_config):
        async def write(value):
            written.append((hook_config.address, value))

        return write

    hooks = build_hooks(cfg, tmp_path, writer_factory)
    assert set(hooks) == {"ops", "journal", "horn"}
    assert hooks["journal"].path == tmp_path / "alarms.jsonl"  # relative to the asset file's folder
    assert hooks["ops"].secret_path == tmp_path / "hook.secret"
    with pytest.raises(ConfigError):
        build_hooks(cfg, tmp_path)  # write_back without a writer factory


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda d: d["rules"][0].update(colour="red"), "colour"),
        (lambda d: d["rules"][0].update(hooks=["nope"]), "unknown hooks"),
        (lambda d: d["rules"][0].update(kind="vibes"), "kind"),
        (lambda d: d["rules"][1].update(min_consecutive=2), "min_consecutive"),  # anomaly-only field
        (lambda d: d["rules"][1].update(name="anomaly"), "duplicate rule names"),
        (lambda d: d["hooks"]["ops"].update(kind="pager"), "kind"),
        (lambda d: d["hooks"]["ops"].update(url="ftp://x"), "url"),
        (lambda d: d["hooks"]["horn"].update(node_id="ns=2;s=X"), "not both"),
        (lambda d: d["hooks"]["horn"].pop("table"), "table"),
        (lambda d: d["hooks"]["horn"].update(type="float32"), "holding registers only"),
        (lambda d: d["rules"][0].update(min_consecutive=0), "min_consecutive"),
    ],
)
def test_invalid_config_is_rejected(change, fragment) -> None:
    data = tomllib.loads(EXAMPLE)
    change(data)
    with pytest.raises(ValidationError, match=fragment):
        AlarmsConfig.model_validate(data)


def test_write_back_sources_are_cross_checked() -> None:
    cfg = AlarmsConfig.model_validate(tomllib.loads(EXAMPLE))
    cfg.check_sources({"plc": "modbus"})
    with pytest.raises(ConfigError, match="opcua"):
        cfg.check_sources({"plc": "opcua"})
    with pytest.raises(ConfigError, match="no source named"):
        cfg.check_sources({"other": "modbus"})


def test_every_config_field_is_described() -> None:
    models = [
        m
        for module in (alarms_config, hook_config)
        for m in vars(module).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == module.__name__
    ]
    assert len(models) >= 8
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_alarm_payload_round_trips() -> None:
    alarm = Alarm(
        "id1",
        "pump",
        "anomaly",
        "raised",
        T0,
        score=0.9,
        window_start=T0,
        window_end=T0 + 300,
        diagnostics=diag(("a", 0.5)),
    )
    payload = json.loads(alarm_json(alarm))
    assert payload["time"] == "2023-11-14T22:13:20Z"
    assert payload["diagnostics"] == [{"name": "pump\\a", "value": 0.5}]
    assert alarm_from_dict(alarm_to_dict(alarm)) == alarm


# ---------------------------------------------------------------------------------------------- anomaly rule


def run_rule(rule: AnomalyRuleConfig, batches: list[list[Result]], window_secs: int | None = 300):
    decider, state, out = Decider("pump", window_secs), AnomalyState(), []
    for batch in batches:
        out.append(decider.anomaly(rule, state, batch))
    return out, state


def test_raise_needs_n_consecutive_abnormal_rows() -> None:
    rule = anomaly_rule(min_consecutive=3, clear_after=2)
    (first, second), _ = run_rule(rule, [rows([1, 1, 0, 1, 1]), rows([1, 1], start=T0 + 600)])
    assert first == []  # runs of 2 only
    assert [(a.state, a.ts) for a in second] == [("raised", T0 + 600)]  # the run continues across batches
    assert second[0].window_start == T0


def test_raise_at_the_nth_row_then_repeats_suppressed_then_clear_after_m() -> None:
    rule = anomaly_rule(min_consecutive=3, clear_after=2)
    scores = [0.6, 0.7, 0.95, 0.65, 0.1, 0.9, 0.1, 0.1, 0.1]
    preds = [1, 1, 1, 1, 0, 1, 0, 0, 0]
    (out,), state = run_rule(rule, [rows(preds, scores=scores)])
    assert [(a.state, a.ts) for a in out] == [("raised", T0 + 180), ("cleared", T0 + 480)]
    raised, cleared = out
    assert raised.id == cleared.id
    assert raised.score == 0.95 and cleared.score == 0.95  # max over the episode so far
    assert raised.window_start == T0 and raised.window_end == T0 + 300
    assert [d.name for d in raised.diagnostics] == ["pump\\a", "pump\\b", "pump\\c"]  # top_k = 3, ranked
    assert state.episode is None and state.abnormal_run == 0


def test_score_threshold_raises_at_once() -> None:
    rule = anomaly_rule(min_consecutive=5, score_threshold=0.8, clear_after=1)
    (out,), _ = run_rule(rule, [rows([0, 1, 0], scores=[0.1, 0.85, 0.2])])
    assert [(a.state, a.ts) for a in out] == [("raised", T0 + 120), ("cleared", T0 + 180)]
    assert "0.850 >= 0.8" in out[0].message


def test_replayed_rows_are_not_counted_twice() -> None:
    rule = anomaly_rule(min_consecutive=3, clear_after=1)
    batch = rows([1, 1])
    (a, b), state = run_rule(rule, [batch, batch])
    assert a == b == [] and state.abnormal_run == 2


def test_machine_off_breaks_a_run_and_does_not_clear() -> None:
    rule = anomaly_rule(min_consecutive=2, clear_after=1)
    off = Result(ts=T0 + 120, prediction=0, reason="MACHINE_OFF", score=None)
    (out,), state = run_rule(rule, [[*rows([1]), off, *rows([1], start=T0 + 180)]])
    assert out == [] and state.abnormal_run == 1
    (out,), state = run_rule(rule, [[*rows([1, 1]), Result(T0 + 180, 0, "MACHINE_OFF", None)]])
    assert [a.state for a in out] == ["raised"] and state.episode.raised


def test_window_end_without_window_secs_is_the_latest_row() -> None:
    (out,), _ = run_rule(anomaly_rule(), [rows([1])], window_secs=None)
    assert out[0].window_end == T0 + 60


# ---------------------------------------------------------------------------------------------- event rules


def ev(kind: str, subject: str = "", ts: float = T0, message: str = "") -> Event:
    return Event(kind=kind, subject=subject, message=message or kind, ts=ts)


def test_source_silent_per_subject() -> None:
    rule = EventRuleConfig(name="silent", kind="source_silent")
    decider, state = Decider("pump"), {}
    assert [a.state for a in decider.event(rule, state, ev("source_silent", "plc1"))] == ["raised"]
    assert decider.event(rule, state, ev("source_silent", "plc1", T0 + 5)) == []  # repeat suppressed
    assert [a.state for a in decider.event(rule, state, ev("source_silent", "plc2"))] == ["raised"]
    assert decider.event(rule, state, ev("source_recovered", "plc3")) == []
    cleared = decider.event(rule, state, ev("source_recovered", "plc1", T0 + 9))
    assert [(a.state, a.ts) for a in cleared] == [("cleared", T0 + 9)] and list(state) == ["plc2"]
    assert "plc1" in cleared[0].message


def test_execution_failed_carries_the_reason_and_clears_on_results() -> None:
    rule = EventRuleConfig(name="exec", kind="execution_failed", severity="critical")
    decider, state = Decider("pump"), {}
    reason = "Could not find data file for sensor pump within expected range"
    raised = decider.event(
        rule,
        state,
        Event("execution_failed", "2023-11-14T22:10:00Z", reason, T0, {"window_start": T0, "window_end": T0 + 300}),
    )
    assert reason in raised[0].message and raised[0].severity == "critical"
    assert (raised[0].window_start, raised[0].window_end) == (T0, T0 + 300)
    assert decider.event(rule, state, ev("execution_failed", "later")) == []  # one per asset
    cleared = decider.results_clear(rule, state, rows([0]))
    assert [(a.id, a.state) for a in cleared] == [(raised[0].id, "cleared")]


def test_window_missing_and_spool_full() -> None:
    decider = Decider("pump")
    wm, state = EventRuleConfig(name="wm", kind="window_missing"), {}
    assert decider.event(wm, state, ev("window_missing", "motor"))[0].state == "raised"
    assert decider.event(wm, state, ev("window_written", "bearing")) == []
    assert decider.event(wm, state, ev("window_written", "motor"))[0].state == "cleared"
    spool, state = EventRuleConfig(name="spool", kind="spool_full", clear_after_quiet_secs=60), {}
    assert decider.event(spool, state, ev("spool_dropped", "spool", T0))[0].state == "raised"
    assert decider.event(spool, state, ev("spool_dropped", "spool", T0 + 30)) == []
    assert decider.quiet_clear(spool, state, T0 + 89) == []  # 59 s after the last drop
    assert decider.quiet_clear(spool, state, T0 + 90)[0].state == "cleared"


# ---------------------------------------------------------------------------------------------- engine


def make_engine(tmp_path: Path, cfg: AlarmsConfig, *hooks: Recorder, clock=None, **kw) -> AlarmEngine:
    return AlarmEngine("pump", cfg, tmp_path / "state", {h.name: h for h in hooks}, clock or FakeClock(), **kw)


ANOMALY = {"name": "anomaly", "kind": "anomaly", "min_consecutive": 2, "clear_after": 2}


async def test_engine_delivers_each_transition_once_per_hook(tmp_path: Path) -> None:
    a, b = Recorder("a"), Recorder("b")
    engine = make_engine(tmp_path, config(ANOMALY, hooks=("a", "b")), a, b, window_secs=300)
    out = await engine.on_results(rows([1, 1, 1, 1]))
    assert [x.state for x in out] == ["raised"]
    assert await engine.drain(5)
    assert engine.open_alarms()[0]["id"] == out[0].id
    await engine.on_results(rows([0, 0], start=T0 + 300))
    assert await engine.drain(5)
    for hook in (a, b):
        assert [x.state for x in hook.got] == ["raised", "cleared"] and hook.delivered == 2
    assert engine.open_alarms() == [] and engine.pending_deliveries() == 0
    await engine.close()


async def test_state_survives_a_new_engine(tmp_path: Path) -> None:
    cfg = config(ANOMALY, {"name": "silent", "kind": "source_silent"})
    first = Recorder("rec")
    engine = make_engine(tmp_path, cfg, first)
    await engine.on_results(rows([1]))  # half a run
    await engine.on_event(ev("source_silent", "plc1"))
    await engine.drain(5)
    # no close(): a crash after the state was saved
    second = Recorder("rec")
    again = make_engine(tmp_path, cfg, second)
    out = await again.on_results(rows([1, 1, 0, 0], start=T0 + 120))  # completes the run of 2, then clears
    assert [x.state for x in out] == ["raised", "cleared"] and out[0].ts == T0 + 120
    assert await again.on_event(ev("source_silent", "plc1", T0 + 1)) == []  # still open: no second raise
    cleared = await again.on_event(ev("source_recovered", "plc1", T0 + 2))
    await again.drain(5)
    assert [x.state for x in first.got] == ["raised"]
    # deliveries keep raise → clear order per alarm; two alarms' deliveries may interleave (under load they did)
    assert sorted(x.rule for x in second.got) == ["anomaly", "anomaly", "silent"]
    assert [x.state for x in second.got if x.rule == "anomaly"] == ["raised", "cleared"]
    assert [x.state for x in second.got if x.rule == "silent"] == ["cleared"]
    assert cleared[0].id == first.got[0].id
    await again.close()


async def test_pending_deliveries_are_sent_by_the_next_engine(tmp_path: Path) -> None:
    cfg = config(ANOMALY, hooks=("slow", "fast"))
    slow, fast = Recorder("slow", gate=asyncio.Event()), Recorder("fast")
    engine = make_engine(tmp_path, cfg, slow, fast)
    raised = await engine.on_results(rows([1, 1]))
    await asyncio.wait_for(fast.fired.wait(), 5)
    await engine.close(timeout_secs=0)  # cancels the slow delivery: stays pending on disk
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert [e["pending"] for e in saved["outbox"]] == [["slow"]]
    slow2, fast2 = Recorder("slow"), Recorder("fast")
    again = make_engine(tmp_path, cfg, slow2, fast2)
    await again.start()
    assert await again.drain(5)
    assert [x.id for x in slow2.got] == [raised[0].id] and fast2.got == []
    await again.close()


async def test_failing_and_hanging_hooks_do_not_block_others(tmp_path: Path, caplog) -> None:
    cfg = config(ANOMALY, hooks=("bad", "hang", "good"))
    bad, hang, good = (
        Recorder("bad", fail=True),
        Recorder("hang", gate=asyncio.Event(), deadline_secs=0.2),
        Recorder("good"),
    )
    engine = make_engine(tmp_path, cfg, bad, hang, good)
    with caplog.at_level(logging.DEBUG, logger="l4e.alarms"):
        await engine.on_results(rows([1, 1, 0, 0, 1, 1]))
        assert await engine.drain(5)  # given up deliveries are done too
    first = [x.state for x in good.got if x.id == good.got[0].id]
    assert first == ["raised", "cleared"] and len(good.got) == 3  # ordered per alarm, not across alarms
    assert bad.failures == 3 and hang.failures == 3 and good.failures == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "hook bad " in r.getMessage()]
    assert len(warnings) == 1  # a transition into failure, not one line per delivery
    await engine.close()


async def test_raise_and_clear_reach_a_slow_hook_in_order(tmp_path: Path) -> None:
    gate = asyncio.Event()
    hook = Recorder("rec", gate=gate)
    engine = make_engine(tmp_path, config(ANOMALY), hook)
    out = await engine.on_results(rows([1, 1, 0, 0]))
    assert [x.state for x in out] == ["raised", "cleared"]
    gate.set()
    await engine.drain(5)
    assert [x.state for x in hook.got] == ["raised", "cleared"]
    await engine.close()


async def test_quiet_clear_by_tick(tmp_path: Path) -> None:
    clock = FakeClock()
    hook = Recorder("rec")
    engine = make_engine(
        tmp_path, config({"name": "spool", "kind": "spool_full", "clear_after_quiet_secs": 60}), hook, clock=clock
    )
    await engine.on_event(ev("spool_dropped", "spool", T0))
    assert await engine.tick() == []
    clock.t = T0 + 61
    assert [x.state for x in await engine.tick()] == ["cleared"]
    await engine.drain(5)
    assert [x.state for x in hook.got] == ["raised", "cleared"]
    await engine.close()


async def test_corrupt_state_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text("{not json")
    engine = make_engine(tmp_path, config(ANOMALY), Recorder("rec"))
    await engine.start()
    assert (tmp_path / "state" / "alarms.corrupt").exists()
    assert await engine.on_results(rows([1, 1]))
    await engine.close()


def test_engine_refuses_missing_hooks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rec"):
        AlarmEngine("pump", config(ANOMALY), tmp_path, {}, FakeClock())


@settings(max_examples=200, deadline=None)
@given(
    preds=st.lists(st.sampled_from([0, 1, 1, 2]), max_size=60),  # 2 = a MACHINE_OFF row
    cuts=st.lists(st.integers(0, 60), max_size=5),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
)
def test_transitions_alternate_and_do_not_depend_on_batching(preds, cuts, n, m) -> None:
    rule = anomaly_rule(min_consecutive=n, clear_after=m)
    lines = [
        Result(T0 + 60 * (i + 1), 0, "MACHINE_OFF", None) if p == 2 else rows([p], start=T0 + 60 * (i + 1))[0]
        for i, p in enumerate(preds)
    ]
    bounds = sorted({0, len(lines), *(c for c in cuts if c <= len(lines))})
    batches = [lines[a:b] for a, b in itertools.pairwise(bounds)]
    whole, _ = run_rule(rule, [lines])
    split, _ = run_rule(rule, [*batches, lines])  # and a full replay at the end, which changes nothing
    assert [a for batch in split for a in batch] == whole[0]
    states = [a.state for a in whole[0]]
    assert states == ["raised", "cleared"] * (len(states) // 2) + ["raised"] * (len(states) % 2)
    for raised, cleared in zip(whole[0][::2], whole[0][1::2], strict=False):
        assert raised.id == cleared.id and raised.ts < cleared.ts
