"""The alarm engine's inbox (agent.alarms.inbox) on real files: what is handed over survives a restart, a
failed save keeps the events in memory until a save succeeds, a corrupt file is set aside."""

from __future__ import annotations

import json

import pytest

from agent.alarms.inbox import EventInbox
from agent.core.model import Event

MISSING = Event("window_missing", "pump", "no readings", 1_767_225_900.0, {"window_start": 1_767_225_600})
WRITTEN = Event("window_written", "pump", "written", 1_767_226_200.0, {"window_start": 1_767_225_900})


def test_events_and_conditions_survive_a_restart_until_taken(tmp_path):
    inbox = EventInbox(tmp_path / "events.json")
    inbox.add([MISSING, WRITTEN], {"source_silent": ["plc"], "source_bad_quality": []})
    again = EventInbox(tmp_path / "events.json")  # a new process reading what the last one left
    assert again.pending() == [MISSING, WRITTEN]
    assert again.pending()[0].details == MISSING.details
    assert again.conditions == {"source_silent": ["plc"]}
    again.taken(1)
    assert EventInbox(tmp_path / "events.json").pending() == [WRITTEN]


def test_a_failed_save_keeps_the_events_and_the_next_save_writes_them(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    inbox = EventInbox(blocker / "events.json")
    with pytest.raises(OSError):
        inbox.add([MISSING])
    assert inbox.pending() == [MISSING]  # kept in memory
    blocker.unlink()
    inbox.taken(0)  # nothing taken, but the unsaved events are written now
    assert EventInbox(blocker / "events.json").pending() == [MISSING]


def test_a_corrupt_inbox_is_set_aside_and_the_agent_starts_empty(tmp_path, caplog):
    path = tmp_path / "events.json"
    path.write_text('{"version": 1, "events": [{"kind": "window_missing"}]}')  # no subject, message, ts
    inbox = EventInbox(path)
    assert inbox.pending() == [] and inbox.conditions == {}
    assert json.loads(path.with_suffix(".corrupt").read_text())["version"] == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)
