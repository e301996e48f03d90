"""The engine's persisted state: rule states and the outbox, one JSON file (``alarms.json``) written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.alarms.hook_config import alarm_from_dict, alarm_to_dict
from agent.alarms.rules import AnomalyState, Episode, OpenEvent
from agent.core.atomic import write_atomic
from agent.core.errors import StateError
from agent.core.model import Alarm

STATE_FILE = "alarms.json"
STATE_VERSION = 1


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

