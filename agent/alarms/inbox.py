"""The alarm engine's inbox: asset events kept on disk from the moment they are handed over until the engine
has taken them.

An asset's data path and health checks produce events (a window missing or written, a source silent or back,
bad quality, a dropped window, the disk failing); the alarm engine takes them at its next run. Between the
two they live here, in ``<state_dir>/events.json`` (tmp, fsync, rename: agent.core.atomic), so a kill -9 in
that gap neither forgets an alarm to raise nor one to clear: the next start feeds them to the engine first.

The file also holds ``conditions``: the asset's current condition flags (which sources are silent, answer
with bad quality only, or are untrusted), saved in the same write as the events that changed them, so a
restart knows which of them an open alarm stands for and sends the clearing event once the condition ends.

Delivery to the engine is at-least-once: a crash after the engine saved its state and before the inbox
dropped the events it took feeds them again; a raising event for an open alarm only updates it and a
clearing event for a closed one does nothing, so a repeat changes no alarm.

A write that fails (full disk) leaves the events in memory; they are saved with the next write that
succeeds. The inbox holds at most ``MAX_EVENTS``; beyond that the oldest are dropped with one ERROR (the
engine has not taken anything for that long: its state cannot be saved). Thread-safe (one lock): the window
closer journals a window's events from the disk worker thread while the loop adds and takes others.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from pathlib import Path

from agent.core.atomic import write_json_atomic
from agent.core.model import Event

log = logging.getLogger("l4e.alarms")

INBOX_FILE = "events.json"
INBOX_VERSION = 1
MAX_EVENTS = 10_000


def _locked(method):
    """Run ``method`` under the inbox's lock (re-entrant: methods call ``load``)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


def _event_to_dict(event: Event) -> dict:
    return {"kind": event.kind, "subject": event.subject, "message": event.message, "ts": event.ts,
            "details": event.details}


def _event_from_dict(doc: dict) -> Event:
    return Event(str(doc["kind"]), str(doc["subject"]), str(doc["message"]), float(doc["ts"]),
                 dict(doc.get("details") or {}))


class EventInbox:
    """Events handed over and not yet taken by the alarm engine, plus the asset's condition flags, on disk.

    No I/O in the constructor: the file is read by ``load()`` or at first use, so a runner built for a reload
    reads what the runner it replaces left after its drain. An unreadable or corrupt file is logged and set
    aside: the agent starts with an empty inbox rather than not at all."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._events: list[Event] = []
        self._conditions: dict[str, list[str]] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self._overflow_logged = False
        self._unsaved = False  # memory holds what the file does not (a failed save): saved by the next one

    @property
    @_locked
    def conditions(self) -> dict[str, list[str]]:
        """The condition flags saved with the events: kind (e.g. "source_silent") → subjects."""
        self.load()
        return dict(self._conditions)

    @_locked
    def load(self) -> None:
        """Read the file (once; later calls do nothing)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            doc = json.loads(self.path.read_bytes())
            if doc.get("version") != INBOX_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {INBOX_VERSION}")
            self._events = [_event_from_dict(e) for e in doc.get("events", [])]
            self._conditions = {str(k): sorted(str(s) for s in v) for k, v in (doc.get("conditions") or {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # a file write_json_atomic made cannot be half; keep it for inspection and start empty
            broken = self.path.with_suffix(".corrupt")
            try:
                self.path.replace(broken)
            except OSError:
                broken = self.path
            log.error("alarm event inbox %s unreadable (%s); kept as %s, starting empty", self.path, exc, broken)
            self._events, self._conditions = [], {}
            return
        if self._events:
            log.info("alarm event inbox: %d event(s) from before the restart are handed to the alarm engine",
                     len(self._events))

    @_locked
    def pending(self) -> list[Event]:
        """The events not yet taken, oldest first (a copy)."""
        self.load()
        return list(self._events)

    @_locked
    def __len__(self) -> int:
        self.load()
        return len(self._events)

    @_locked
    def add(self, events: list[Event], conditions: dict[str, list[str]] | None = None, save: bool = True) -> None:
        """Append ``events`` (and replace the condition flags when given), then save (``save`` False: the caller
        saves, e.g. in its disk thread). Raises OSError when the save fails: the events stay in memory and are
        saved with the next write that succeeds."""
        self.load()
        self._events.extend(events)
        if conditions is not None:
            self._conditions = {k: sorted(v) for k, v in conditions.items() if v}
        if len(self._events) > MAX_EVENTS:
            dropped = len(self._events) - MAX_EVENTS
            del self._events[:dropped]
            if not self._overflow_logged:
                self._overflow_logged = True
                log.error("alarm event inbox holds more than %d events (the alarm engine takes none): the "
                          "oldest are dropped", MAX_EVENTS)
        self._unsaved = True
        if save:
            self._save()

    @_locked
    def taken(self, count: int, save: bool = True) -> None:
        """The engine took the first ``count`` events (its state is saved): drop them, then save (also when
        ``count`` is 0 and an earlier save failed). Raises OSError when the save fails (they are dropped from
        memory anyway; a crash before the next successful save feeds them again, which changes no alarm)."""
        self.load()
        if count <= 0 and not self._unsaved:
            return
        del self._events[:count]
        if len(self._events) <= MAX_EVENTS // 2:
            self._overflow_logged = False
        self._unsaved = True
        if save:
            self._save()

    @_locked
    def save(self) -> None:
        """Write what memory holds, when it differs from the file. Raises OSError when the write fails."""
        if self._unsaved:
            self._save()

    def _save(self) -> None:
        self._unsaved = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"version": INBOX_VERSION, "events": [_event_to_dict(e) for e in self._events],
                                      "conditions": self._conditions}, default=str)
        self._unsaved = False
