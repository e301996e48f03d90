"""sd_notify(3) without a systemd library, and a watchdog that pings only while the agent is healthy.

systemd gives a ``Type=notify`` service the address of a datagram socket in ``NOTIFY_SOCKET``: a
filesystem path, or an abstract-namespace name written with a leading ``@``. Each message is one
datagram of newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``).

With ``WatchdogSec=`` set, systemd exports ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and kills the
service when no ``WATCHDOG=1`` arrives within that time. :class:`WatchdogGate` pings from the event
loop and only while a health predicate holds, so a stalled loop *or* stopped data both end in a restart.

Usage (in ``agent.runtime.agent``)::

    notifier = Notifier.from_env()
    health = all_healthy(ProgressCheck("readings", lambda: sum(counts.values()), max_stall_secs=120),
                         supervisor_ok)          # each: () -> bool | tuple[bool, str]
    gate = WatchdogGate(notifier, health)        # the same health() can serve /healthz
    ...start connectors and the metrics server...
    notifier.ready("collecting 12 sensors")
    watchdog_task = asyncio.create_task(gate.run())
    ...on SIGTERM: notifier.stopping(); drain; cancel watchdog_task

Every call is a no-op returning False when ``NOTIFY_SOCKET`` is unset (run from a shell, in tests).
Notification failures never raise: a service must not die because its manager went away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

HealthResult = bool | tuple[bool, str]
"""What a health predicate returns: a bool, or ``(ok, reason)`` as ``/healthz`` uses."""


def _socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value; None when it is not a usable AF_UNIX name.

    ``@name`` is the abstract namespace (a leading NUL byte on the wire); ``/path`` a socket file.
    ``vsock:`` addresses (VMs) are not supported: the agent runs on the gateway's own systemd.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages to one socket.

    ``address`` is the ``NOTIFY_SOCKET`` value (``/run/systemd/notify`` or ``@name``); None (or an
    unsupported value) makes every method a no-op that returns False. Methods return True when the
    datagram was handed to the kernel. The socket is non-blocking: a full receive queue drops the
    message (logged at DEBUG) rather than stalling the event loop.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._target = _socket_address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address; sd_notify disabled", address)
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """A Notifier for ``$NOTIFY_SOCKET``.

        ``unset=True`` removes NOTIFY_SOCKET from ``os.environ`` so child processes (exec alarm hooks)
        cannot notify in the agent's name; it only applies when ``environ`` is None (the real environment).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if unset and environ is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        """True when messages are actually sent somewhere."""
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram. Never raises."""
        if self._target is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._target)
        except OSError as exc:
            # Log the first failure only: the watchdog would otherwise log every few seconds.
            level = logging.DEBUG if self._failed else logging.WARNING
            log.log(level, "sd_notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify to %s works again", self.address)
            self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete (``READY=1``), optionally with a status line."""
        return self.notify("READY=1", *self._status_field(status))

    def reloading(self) -> bool:
        """A configuration reload has begun (``RELOADING=1``); call :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is included because systemd ≥ 253 requires it for ``Type=notify-reload``.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (``STOPPING=1``); systemd stops expecting watchdog pings."""
        return self.notify("STOPPING=1", *self._status_field(status))

    def watchdog(self) -> bool:
        """Watchdog keep-alive (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status`` (``STATUS=``); newlines become spaces."""
        return self.notify(*self._status_field(text))

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status_field(text: str | None) -> list[str]:
        # A newline would start a new assignment in the datagram.
        return [] if text is None else ["STATUS=" + " ".join(text.splitlines())]


def watchdog_interval_secs(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to ping, in seconds: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off: WATCHDOG_USEC unset, not a positive integer, or WATCHDOG_PID set
    to another process (the variables were inherited from a parent service). ``pid`` defaults to ours.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    pid_text = env.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            if int(pid_text) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class ProgressCheck:
    """A health check that holds while a running total keeps growing: "data is flowing".

    ``total()`` returns a monotonic count kept elsewhere (e.g. the sum of a connector's readings
    Counter); it is read only when the check runs, so the hot path pays nothing. The check is healthy
    until ``max_stall_secs`` (monotonic seconds) pass without the total changing; the time before the
    first check counts as progress, so a fresh start has ``max_stall_secs`` to produce data.
    """

    def __init__(
        self,
        name: str,
        total: Callable[[], float],
        max_stall_secs: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.total = total
        self.max_stall_secs = max_stall_secs
        self._monotonic = monotonic
        self._last_total: float | None = None
        self._last_progress = monotonic()

    def __call__(self) -> tuple[bool, str]:
        now = self._monotonic()
        current = self.total()
        if current != self._last_total:
            self._last_total = current
            self._last_progress = now
        stalled = now - self._last_progress
        if stalled > self.max_stall_secs:
            return False, f"{self.name}: no progress for {stalled:.0f} s"
        return True, ""


def all_healthy(*checks: Callable[[], HealthResult]) -> Callable[[], tuple[bool, str]]:
    """One check from several: healthy when every one is; the reason lists each failing check's reason.

    Every check runs each time (so each :class:`ProgressCheck` keeps its own baseline up to date).
    """

    def check() -> tuple[bool, str]:
        reasons = []
        for one in checks:
            ok, reason = _split_health(one())
            if not ok:
                reasons.append(reason)
        return not reasons, "; ".join(reasons)

    return check


def _split_health(result: HealthResult) -> tuple[bool, str]:
    if isinstance(result, tuple):
        ok, reason = result
        return bool(ok), str(reason)
    return bool(result), "" if result else "unhealthy"


class WatchdogGate:
    """Pings the systemd watchdog every ``interval_secs`` while ``health()`` says the agent is healthy.

    ``health`` is called on the event loop at each tick and must be cheap and non-blocking; it should
    turn False when data stops flowing (no reading for a while) or a supervised task is failing, so
    systemd restarts the service after ``WatchdogSec``. Because the pings come from the event loop, a
    blocked loop stops them too. A health check that raises counts as unhealthy.

    The interval is wall time (``asyncio.sleep``), never a scaled demo clock: systemd's deadline is real.
    On a change of health the gate sends ``STATUS=`` with the reason and logs the transition once.
    """

    def __init__(
        self,
        notifier: Notifier,
        health: Callable[[], HealthResult],
        interval_secs: float | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``interval_secs`` defaults to :func:`watchdog_interval_secs` of ``environ`` (the process env)."""
        self.notifier = notifier
        self.health = health
        self.interval_secs = watchdog_interval_secs(environ) if interval_secs is None else interval_secs
        self.pings = 0
        self._healthy: bool | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a watchdog to feed (an interval and a notify socket)."""
        return self.interval_secs is not None and self.notifier.enabled

    def tick(self) -> bool:
        """Check health once and ping if healthy; returns whether a ping was sent."""
        error: BaseException | None = None
        try:
            ok, reason = _split_health(self.health())
        except Exception as exc:  # supervision boundary: a broken check withholds pings, never kills the gate
            ok, reason, error = False, f"health check raised {type(exc).__name__}: {exc}", exc
        self._note_transition(ok, reason, error)
        if not ok:
            return False
        sent = self.notifier.watchdog()
        self.pings += int(sent)
        return sent

    async def run(self) -> None:
        """Tick until cancelled. Returns at once when the watchdog is not enabled (see :attr:`enabled`)."""
        if not self.enabled:
            log.debug("systemd watchdog not enabled; not pinging")
            return
        assert self.interval_secs is not None
        while True:
            self.tick()
            await asyncio.sleep(self.interval_secs)

    def _note_transition(self, ok: bool, reason: str, error: BaseException | None = None) -> None:
        if ok == self._healthy:
            return
        first = self._healthy is None
        self._healthy = ok
        if ok:
            if not first:
                log.info("healthy again; watchdog pings resumed")
                self.notifier.status("healthy")
        else:
            log.warning("unhealthy (%s); withholding watchdog pings", reason, exc_info=error)  # a bug: traceback
            self.notifier.status(f"unhealthy: {reason}")
