"""Outbox → object store, oldest window first, with capped exponential backoff.

Contract: a file leaves the outbox only after ``store.put`` returned (the store confirmed it). The key is
``prefix + <object name>``, a function of the window alone (rule 7), so a retry after a lost answer or a crash
overwrites the same object with the same bytes and never makes a second one. Uploads go strictly in outbox
order; after a failure nothing newer is tried until the oldest went through, so the scheduler never sees a
later window before an earlier one. A window uploaded after its deadline (end + delay offset) is still
uploaded, counted and logged as late.

Every put is bounded (``timeout_secs``, wall seconds, on top of the store's own connect/read timeouts), so a
store that accepts connections and never answers is an outage like a refused connection. An outage is two
log lines: one WARNING at the first failed attempt and one INFO at the first success after it, with its
duration, the failed attempts and the windows it delayed (those are not logged as "late" one by one);
retries in between are DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.core.clock import Backoff, Clock
from agent.core.errors import StoreError, StoreUnavailable
from agent.pipeline.outbox import Outbox
from agent.pipeline.store import ObjectStore

log = logging.getLogger("l4e.upload")
# Without an explicit Backoff (tests, tools): the [upload] defaults (backoff_initial_secs, backoff_max_secs).
DEFAULT_BACKOFF_INITIAL_SECS = 1.0
DEFAULT_BACKOFF_MAX_SECS = 60.0


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
    """See the module docstring. ``timeout_secs`` bounds one ``store.put`` (wall seconds, whatever the store:
    an S3 endpoint that accepts the connection and never answers, a hung NFS folder)."""

    def __init__(self, outbox: Outbox, store: ObjectStore, prefix: str, clock: Clock, delay_offset_secs: int,
                 backoff: Backoff | None = None, timeout_secs: float = 60.0,
                 offload: Callable[..., Awaitable] | None = None) -> None:
        self.outbox = outbox
        self.store = store
        self.prefix = prefix
        self.clock = clock
        self.delay_offset_secs = delay_offset_secs
        self.backoff = backoff or Backoff(DEFAULT_BACKOFF_INITIAL_SECS, DEFAULT_BACKOFF_MAX_SECS)
        self.timeout_secs = timeout_secs
        # runs the outbox's file work (listing, reading, removing) off the event loop, in the order of the
        # other writes to the state directory (agent.core.offloop); None: inline (tests, tools)
        self._offload = offload
        self.stats = UploadStats()
        self._retry_at = 0.0  # monotonic wall time before which no attempt is made
        self._failing_since: float | None = None  # monotonic wall time of the first failure in a row
        self._failed_attempts = 0  # in the current outage
        self._late_counted: set[int] = set()  # window ends counted in stats.windows_late
        self._quiet_late: set[int] = set()  # windows delayed by an outage: summarised, no line of their own
        # a put that outlived its timeout: (key, result future). Its thread cannot be killed; no second put
        # is started while it runs (so a hung store cannot pile up threads), and if it ends well it counts.
        self._inflight: tuple[str, asyncio.Future] | None = None
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

    async def _put(self, key: str, data: bytes) -> None:
        """One bounded put. Raises StoreUnavailable on timeout (the thread is kept as ``_inflight``)."""
        inflight = self._inflight
        if inflight is not None:
            old_key, fut = inflight
            if not fut.done():
                raise StoreUnavailable(f"the previous put of {old_key} is still waiting for an answer")
            self._inflight = None
            if fut.exception() is None and old_key == key:
                return  # it did land after its timeout: the store has these bytes, no second put
        fut = _in_daemon_thread(self.store.put, key, data)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_secs)
        except TimeoutError:
            self._inflight = (key, fut)
            raise StoreUnavailable(f"no answer within {self.timeout_secs:g}s") from None

    async def _blocking(self, fn, *args):
        return fn(*args) if self._offload is None else await self._offload(fn, *args)

    async def _run_once(self, force: bool) -> int:
        if not force and time.monotonic() < self._retry_at:
            return 0
        if not force and self.outbox.certainly_empty():  # one stat instead of a listing in the disk worker
            return 0
        done = 0
        for entry in await self._blocking(self.outbox.entries):
            key = self.prefix + entry.name
            try:
                data = await self._blocking(entry.path.read_bytes)
            except FileNotFoundError:
                continue
            try:
                await self._put(key, data)
            except (StoreUnavailable, StoreError) as exc:
                self._failed(key, exc)
                return done
            if self._failing_since is not None:
                self._recovered()
            await self._blocking(self.outbox.remove, entry)
            self.backoff.reset()
            now = self.clock.now()
            self.stats.record(key, now - entry.window_end)
            deadline = entry.window_end + self.delay_offset_secs
            if now > deadline and entry.window_end not in self._late_counted:
                if len(self._late_counted) > 1000:  # bounded memory over months of running
                    self._late_counted.clear()
                    self._quiet_late.clear()
                self._late_counted.add(entry.window_end)
                self.stats.windows_late += 1
                if entry.window_end not in self._quiet_late:
                    log.warning("window ending %s uploaded %.0fs after its deadline (end + delay offset): the "
                                "scheduler may have run without it", entry.window_end, now - deadline)
            done += 1
        return done

    def _failed(self, key: str, exc: StoreError) -> None:
        """One failed attempt: back off; only the first of an outage is logged above DEBUG."""
        self.stats.failures += 1
        self._failed_attempts += 1
        delay = self.backoff.next()
        self._retry_at = time.monotonic() + delay
        if self._failing_since is not None:
            log.debug("upload of %s to %s failed again: %s; retrying in %.1fs", key, self.store.describe(), exc,
                      delay)
            return
        self._failing_since = time.monotonic()
        permanent = not isinstance(exc, StoreUnavailable)
        log.warning("uploads to %s failing: %s%s; windows stay in the outbox and are retried with backoff "
                    "(up to %gs); further failures are logged at DEBUG until uploads work again",
                    self.store.describe(), exc, " (not retriable by itself: check permissions)" if permanent else "",
                    self.backoff.max_secs)

    def _recovered(self) -> None:
        """The first confirmed put after an outage: one INFO line for the whole outage."""
        now = self.clock.now()
        pending = {e.window_end for e in self.outbox.entries()}
        late = sum(1 for end in pending if now > end + self.delay_offset_secs)
        # the windows still waiting are the outage's: summarised here instead of one "late" line each
        self._quiet_late |= pending
        log.info("uploads to %s work again after %.1fs (%d failed attempts); %d window(s) delayed by the "
                 "outage, %d of them past their deadline (end + delay offset), uploading now",
                 self.store.describe(), time.monotonic() - self._failing_since, self._failed_attempts,
                 len(pending), late)
        self._failing_since = None
        self._failed_attempts = 0


def _in_daemon_thread(fn, *args) -> asyncio.Future:
    """Run a blocking call in its own daemon thread; its result as a future of the running loop.

    Not the loop's default executor: a call that never returns (a hung NFS write) must neither occupy a
    shared worker (the alarm engine saves through asyncio.to_thread) nor hold up interpreter exit."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result, exc) -> None:
        if fut.cancelled():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the awaiting coroutine
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="l4e-upload-put", daemon=True).start()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception was never retrieved"
    return fut
