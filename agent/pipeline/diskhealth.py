"""Write health of one state directory, shared by every job that writes there.

A full or failing disk (ENOSPC, EDQUOT, EIO, EROFS) is an expected, usually temporary condition, not a bug:
no traceback, no crash, no log line per attempt. Each job reports the outcome of its writes here
(``failure(job, exc)`` / ``success(job)``, or the ``guard(job)`` context manager at the job boundary) and
this object turns them into transitions of one *episode*:

- the first failure of an episode logs ONE WARNING (which job, which error) and emits a ``disk_failed``
  event (the ``disk`` data-health alarm rule raises on it); further failures, of that job or others, are
  DEBUG;
- when every job that failed during the episode has succeeded again, ONE INFO says so (with the duration
  and the number of failed attempts) and a ``disk_recovered`` event clears the alarm.

What a failing job does with its data is its own business (the spool holds readings in memory, the window
closer retries the window, the alarm engine keeps its events); this object only decides what is logged and
signalled. Events carry ``subject`` = the state directory. Thread-safe: the spool and the window closer
report from their disk worker thread (agent.core.offloop), the other jobs from the event loop; ``on_event``
is called from the reporting thread (agent.runtime.asset.AssetRunner.emit hands it to the loop).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.core.model import Event

log = logging.getLogger("l4e.disk")

# errno values that mean "the disk refuses writes right now": retried, alarmed, never a traceback
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def disk_error(exc: BaseException | None) -> OSError | None:
    """The OSError with a disk errno behind ``exc`` (itself, or its cause/context chain), else None.

    Wrapped errors count too: the alarm engine raises ``StateError`` *from* the OSError of its save."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class DiskHealth:
    """See the module docstring. ``on_event`` receives the transition events (may be None: log only)."""

    def __init__(self, state_dir: Path | str, now: Callable[[], float] | None = None,
                 on_event: Callable[[list[Event]], None] | None = None) -> None:
        self.state_dir = str(state_dir)
        self._now = now or time.time
        self.on_event = on_event
        self._failing: dict[str, int] = {}  # job → failed attempts in the current episode
        self._episode_started: float | None = None  # monotonic seconds
        self._episode_failures = 0
        self.episodes = 0
        self.failures: Counter = Counter()  # job → failed attempts, over the whole run (metrics, tests)
        self._lock = threading.RLock()  # one episode, whichever thread reports first

    @property
    def failing(self) -> bool:
        """True while an episode is open (some job's last attempt failed)."""
        return bool(self._failing)

    def failure(self, job: str, exc: BaseException) -> None:
        """Record a failed write of ``job``; logs and signals only the start of an episode."""
        with self._lock:
            self._failure(job, exc)

    def _failure(self, job: str, exc: BaseException) -> None:
        self.failures[job] += 1
        self._episode_failures += 1
        first_of_job = job not in self._failing
        self._failing[job] = self._failing.get(job, 0) + 1
        if self._episode_started is not None:
            if first_of_job:
                log.debug("state directory %s: %s cannot write either: %s", self.state_dir, job, exc)
            else:
                log.debug("state directory %s: %s still cannot write: %s", self.state_dir, job, exc)
            return
        self._episode_started = time.monotonic()
        self.episodes += 1
        err = disk_error(exc) or exc
        reason = getattr(err, "strerror", None) or str(err)
        log.warning("state directory %s: cannot write (%s: %s); data is kept in memory or in place and retried, "
                    "further disk errors are logged at DEBUG until it recovers", self.state_dir, job, reason)
        self._emit(Event("disk_failed", self.state_dir, f"state directory {self.state_dir}: {job}: {reason}",
                         self._now(), {"job": job, "errno": getattr(err, "errno", None), "error": str(exc)}))

    def success(self, job: str) -> None:
        """Record a successful write of ``job``; ends the episode when no other job is still failing."""
        with self._lock:
            self._success(job)

    def _success(self, job: str) -> None:
        if self._failing.pop(job, None) is None or self._failing or self._episode_started is None:
            return
        secs = time.monotonic() - self._episode_started
        failures = self._episode_failures
        self._episode_started = None
        self._episode_failures = 0
        log.info("state directory %s writable again after %.1fs (%d failed writes)", self.state_dir, secs,
                 failures)
        self._emit(Event("disk_recovered", self.state_dir, f"state directory {self.state_dir} writable again",
                         self._now(), {"seconds": round(secs, 3), "failures": failures}))

    @contextlib.contextmanager
    def guard(self, job: str) -> Iterator[None]:
        """Run a job's body: a disk error is recorded and swallowed (the job retries at its next wake-up);
        any other exception propagates; normal completion counts as a success of ``job``."""
        try:
            yield
        except Exception as exc:
            if disk_error(exc) is None:
                raise
            self.failure(job, exc)
        else:
            self.success(job)

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event([event])
