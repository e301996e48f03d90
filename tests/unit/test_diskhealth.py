"""DiskHealth: one WARNING per episode across jobs, one INFO when every job writes again, events for the alarm."""

from __future__ import annotations

import errno
import logging

import pytest

from agent.alarms.config import EventRuleConfig
from agent.alarms.rules import Decider
from agent.core.errors import StateError
from agent.pipeline.diskhealth import DiskHealth, disk_error


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def test_disk_errors_are_found_behind_wrappers() -> None:
    try:
        try:
            raise enospc()
        except OSError as exc:
            raise StateError("cannot write alarms.json") from exc
    except StateError as wrapped:
        assert disk_error(wrapped).errno == errno.ENOSPC
    assert disk_error(OSError(errno.EIO, "I/O error")).errno == errno.EIO
    assert disk_error(OSError(errno.ENOENT, "gone")) is None  # a bug or a race, not a full disk
    assert disk_error(ValueError("x")) is None


def test_one_episode_over_several_jobs_is_one_warning_and_one_info(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="l4e.disk")
    events = []
    disk = DiskHealth("/state", now=lambda: 42.0, on_event=events.extend)
    disk.failure("spool", enospc())
    disk.failure("alarms", enospc())
    disk.failure("spool", enospc())
    disk.success("spool")  # alarms still failing: the episode goes on
    assert disk.failing
    disk.failure("spool", enospc())
    disk.success("spool")
    disk.success("alarms")
    assert not disk.failing
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert "No space left on device" in lines[0][1] and "4 failed writes" in lines[1][1]
    assert [(e.kind, e.subject, e.ts) for e in events] == [("disk_failed", "/state", 42.0),
                                                           ("disk_recovered", "/state", 42.0)]
    assert disk.failures == {"spool": 3, "alarms": 1} and disk.episodes == 1
    disk.success("windows")  # a success with no failure before it is not a transition
    assert len(events) == 2
    disk.failure("windows", enospc())  # a new episode: logged again
    assert disk.episodes == 2 and events[-1].kind == "disk_failed"


def test_guard_swallows_disk_errors_only() -> None:
    disk = DiskHealth("/state")
    with disk.guard("alarms"):
        raise StateError("cannot write") from enospc()
    assert disk.failing
    with pytest.raises(KeyError), disk.guard("alarms"):
        raise KeyError("a bug is not a full disk")
    assert disk.failing  # an unrelated error is not a recovery either
    with disk.guard("alarms"):
        pass
    assert not disk.failing


def test_disk_rule_raises_on_failure_and_clears_on_recovery() -> None:
    from agent.core.model import Event

    rule, state = EventRuleConfig(name="disk", kind="disk"), {}
    decider = Decider("pump-07")
    raised = decider.event(rule, state, Event("disk_failed", "/state", "full", 1.0))
    assert [a.state for a in raised] == ["raised"]
    assert decider.event(rule, state, Event("disk_failed", "/state", "full", 2.0)) == []  # repeat suppressed
    cleared = decider.event(rule, state, Event("disk_recovered", "/state", "ok", 3.0))
    assert [(a.state, a.id) for a in cleared] == [("cleared", raised[0].id)]
