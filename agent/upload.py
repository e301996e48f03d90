"""Outbox → object store, oldest window first, with capped exponential backoff.

Contract: a file leaves the outbox only after ``store.put`` returned (the store confirmed it). The key is
``prefix + <object name>``, a function of the window alone (rule 7), so a retry after a lost answer or a crash
overwrites the same object with the same bytes and never makes a second one. Uploads go strictly in outbox
order; after a failure nothing newer is tried until the oldest went through, so the scheduler never sees a
later window before an earlier one. A window uploaded after its deadline (end + delay offset) is still
uploaded, counted and logged as late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from agent.clock import Backoff, Clock
from agent.errors import StoreError, StoreUnavailable, TransitionLog
from agent.outbox import Outbox
from agent.store import ObjectStore

log = logging.getLogger("l4e.upload")


@dataclass
class UploadStats:
    uploaded: int = 0
    windows_late: int = 0
    failures: int = 0
    last_latency_secs: float | None = None  # clock seconds from window end to confirmed upload
    latency_sum: float = 0.0
    latency_count: int = 0
    uploaded_keys: list[str] = field(default_factory=list)  # the most recent keys (bounded), for status
    recent_latencies: list[float] = field(default_factory=list)  # the most recent samples (bounded), for metrics

    def record(self, key: str, latency: float) -> None:
        self.uploaded += 1
        self.last_latency_secs = latency
        self.latency_sum += latency
        self.latency_count += 1
        self.uploaded_keys.append(key)
        del self.uploaded_keys[:-50]
        self.recent_latencies.append(latency)
        del self.recent_latencies[:-200]


class Uploader:
    def __init__(self, outbox: Outbox, store: ObjectStore, prefix: str, clock: Clock, delay_offset_secs: int,
                 backoff: Backoff | None = None) -> None:
        self.outbox = outbox
        self.store = store
        self.prefix = prefix
        self.clock = clock
        self.delay_offset_secs = delay_offset_secs
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.stats = UploadStats()
        self._retry_at = 0.0  # monotonic wall time before which no attempt is made
        self._failing_since: float | None = None  # monotonic wall time of the first failure in a row
        self._errors = TransitionLog(log)
        self._late_logged: set[int] = set()
        self._lock = asyncio.Lock()  # the scheduled job and a drain must not upload the same file twice

    def failing_for(self) -> float:
        """Wall seconds since uploads started failing (0 when the last attempt succeeded)."""
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    def backlog(self) -> int:
        return len(self.outbox.entries())

    async def run_once(self, force: bool = False) -> int:
        """Upload what is pending, oldest first, until done or the first failure. Returns files uploaded.
        During a backoff nothing is tried unless ``force`` (the last round before shutdown)."""
        async with self._lock:
            return await self._run_once(force)

    async def _run_once(self, force: bool) -> int:
        if not force and time.monotonic() < self._retry_at:
            return 0
        done = 0
        for entry in self.outbox.entries():
            key = self.prefix + entry.name
            try:
                data = entry.path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                await asyncio.to_thread(self.store.put, key, data)
            except (StoreUnavailable, StoreError) as exc:
                self.stats.failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                delay = self.backoff.next()
                self._retry_at = time.monotonic() + delay
                permanent = not isinstance(exc, StoreUnavailable)
                self._errors.failure("put", "upload of %s to %s failed%s: %s; retrying in %.1fs (kept in the "
                                     "outbox)", key, self.store.describe(), " (not retriable by itself: check "
                                     "permissions)" if permanent else "", exc, delay)
                return done
            self.outbox.remove(entry)
            self.backoff.reset()
            self._failing_since = None
            self._errors.success("put", "uploads to %s work again", self.store.describe())
            now = self.clock.now()
            self.stats.record(key, now - entry.window_end)
            deadline = entry.window_end + self.delay_offset_secs
            if now > deadline and entry.window_end not in self._late_logged:
                if len(self._late_logged) > 1000:  # bounded memory over months of running
                    self._late_logged.clear()
                self._late_logged.add(entry.window_end)
                self.stats.windows_late += 1
                log.warning("window ending %s uploaded %.0fs after its deadline (end + delay offset): the "
                            "scheduler may have run without it", entry.window_end, now - deadline)
            done += 1
        return done
