"""Where one asset's events go: the alarm engine's durable inbox, and the listeners (status page, history).

Contract (``AssetEvents``, owned by agent.runtime.asset.AssetRunner):

- ``emit`` records events on the event loop: into the inbox in memory at once (the alarm job sees them) and on
  disk through the asset's disk worker (queued behind what it is writing, so within milliseconds; the loop
  never waits on the disk), then to the listeners. Called from another thread (the disk worker reports a disk
  episode there), it hands the events to the loop instead. A failed inbox write keeps them in memory, saved
  by the next write that succeeds; a disk error is one WARNING per episode and the disk alarm
  (agent.pipeline.diskhealth).
- ``journal`` is the window closer's: a window's events are in the inbox on disk before its progress is saved.
- ``feed`` hands the inbox's events to the alarm engine, oldest first, and drops those it took: a kill -9 in
  between loses none.
- A listener that raises is logged with its traceback the first time, then only counted
  (``listener_failures``): a listener never breaks the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableSequence

from agent.alarms.inbox import EventInbox
from agent.core.model import Event
from agent.core.offloop import DiskWorker
from agent.pipeline.diskhealth import DiskHealth, disk_error

log = logging.getLogger("l4e.service")


class AssetEvents:
    """``conditions()``: the open source conditions saved with each inbox write (agent.runtime.source_health);
    ``recent``: where every announced event is also appended (the runner's bounded ``stats.events``)."""

    def __init__(self, inbox: EventInbox, disk: DiskHealth, disk_worker: DiskWorker,
                 conditions: Callable[[], dict[str, list[str]]], recent: MutableSequence[Event]) -> None:
        self.inbox = inbox
        self.disk = disk
        self.disk_worker = disk_worker
        self.conditions = conditions
        self.recent = recent
        self.listeners: list[Callable[[Event], None]] = []
        self.listener_failures: Counter[str] = Counter()  # listener → exceptions it raised
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the jobs run on (set at their first run)
        self._loop_thread: int | None = None

    def bind_loop(self) -> None:
        """Remember the running loop (once): events emitted from other threads are handed back to it."""
        if self._loop is None:
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()

    def emit(self, events: list[Event]) -> None:
        """Record events: into the inbox (memory now, disk through the worker) and to the listeners."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                self._loop.call_soon_threadsafe(self.emit, list(events))
            return
        if events:
            self.inbox.add(events, self.conditions(), save=False)
            self.disk_worker.submit(self._save_inbox)
        self.announce(events)

    def journal(self, events: list[Event]) -> None:
        """The closer's journal (in the disk worker). Raises OSError (the closer retries the window; the events
        stay queued in memory)."""
        self.inbox.add(events)

    async def feed(self, take: Callable[[Event], Awaitable[None]], offload) -> None:
        """Hand the inbox's events to ``take`` (the alarm engine), oldest first; drop from the inbox those it
        took. One at a time: if the engine's state cannot be saved (full disk), it changed nothing and the
        events not yet taken stay in the inbox for the next run. Events emitted meanwhile are appended behind
        them. ``offload`` runs the save in the disk worker; it raises OSError on a failed save."""
        taken = 0
        try:
            for event in self.inbox.pending():
                await take(event)
                taken += 1
        finally:
            self.inbox.taken(taken, save=False)
            await offload(self.inbox.save)

    def announce(self, events: list[Event]) -> None:
        """Hand events to the listeners (status page, history); they are already in the inbox."""
        for ev in events:
            self.recent.append(ev)
            self._tell_listeners(ev)

    def _save_inbox(self) -> None:
        """(In the disk worker.) Save the inbox; a failure keeps the events in memory for the next save."""
        try:
            self.inbox.save()
        except OSError as exc:
            if disk_error(exc) is not None:
                # one WARNING per disk episode, and the disk alarm; the alarm job saves the inbox at its next
                # run (agent.alarms.inbox), and its success ends the episode
                self.disk.failure("alarms", exc)
            else:
                log.error("alarm event inbox %s cannot be written: %s; the events are kept in memory",
                          self.inbox.path, exc)

    def _tell_listeners(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # supervision boundary: a bug in a listener (status history, tests' probes)
                name = getattr(listener, "__qualname__", repr(listener))
                self.listener_failures[name] += 1
                log.log(logging.DEBUG if self.listener_failures[name] > 1 else logging.ERROR,
                        "event listener %s failed for %s (%d time(s))", name, event.kind,
                        self.listener_failures[name], exc_info=self.listener_failures[name] == 1)
