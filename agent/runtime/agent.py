"""The running agent (Agent): one AssetRunner per asset file, the scheduler, metrics and status over HTTP,
health, sd_notify, SIGHUP reload and SIGTERM drain. While it runs, the interpreter's thread switch interval
is 0.5 ms (``GIL_SWITCH_INTERVAL_SECS``) so the event loop is not held up by the disk workers.

Shutdown (SIGTERM/SIGINT, or ``until`` on the clock): every runner drains (agent.runtime.asset), exit code 0.
A reload builds fresh runners from the re-read files; when that raises a configuration, state or Lookout
error, the running configuration stays and the reason is logged. Otherwise the old runners are drained (their
jobs removed and waited for, so nothing of theirs writes any more) and only then are the fresh ones started:
a runner reads its progress and last sign of life at start (agent.runtime.asset), not when it is built.
The fresh runners are built in a worker thread: the event loop never waits on the disk (agent.core.offloop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from agent.core.clock import Clock
from agent.core.errors import ConfigError, LookoutError, StateError
from agent.runtime.asset import AssetRunner
from agent.runtime.scheduler import JobScheduler

log = logging.getLogger("l4e.service")
# How long a thread may hold the interpreter lock while another waits for it (CPython's default: 5 ms). The
# disk workers' window closes are Python work too; with the default the event loop waits up to 5 ms for
# every step it takes while a close runs, so a connector's step of a few ms becomes tens of ms
# (tests/bench/bench_loop_lag.py, three interleaved pairs on a busy 2-core machine: p99 lag within closes
# 37–48 ms at 5 ms, 16–26 ms at 0.5 ms). The cost is a few more lock hand-overs, only while two threads are busy.
GIL_SWITCH_INTERVAL_SECS = 0.0005


class Agent:
    """Runs one AssetRunner per asset file until stopped; metrics, health, sd_notify and SIGHUP reload.

    ``reload`` (SIGHUP) is a callable returning fresh runners built from the re-read asset files; when it
    raises (e.g. ConfigError), the running configuration stays and the reason is logged.
    """

    def __init__(self, runners: list[AssetRunner], clock: Clock, *, metrics_config=None, reload=None) -> None:
        from agent.runtime.sdnotify import Notifier
        from agent.runtime.supervision import Supervision

        self.runners = runners
        self.clock = clock
        self.scheduler = JobScheduler()
        self.stop_event = asyncio.Event()
        self.supervision = Supervision(runners)
        self.metrics_config = metrics_config
        self.metrics_server = None
        self.notifier = Notifier.from_env(unset=True)  # hooks started by us must not inherit the socket
        self._reload = reload
        self._reload_requested = asyncio.Event()

    def request_stop(self) -> None:
        self.stop_event.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            if self._reload is None:
                continue
            self.notifier.reloading()
            try:
                # in a thread: building runners reads the asset files and probes the state folders (an fsync)
                fresh = await asyncio.to_thread(self._reload)
            except (ConfigError, StateError, LookoutError) as exc:  # a bad new file keeps the old one running
                log.error("reload refused, keeping the running configuration: %s", exc)
                self.notifier.ready(self.supervision.summary())
                continue
            log.info("reloading: %d asset(s)", len(fresh))
            for runner in self.runners:
                await runner.drain()
            self.runners = fresh
            self.supervision.set_runners(fresh)
            for runner in fresh:
                runner.start(self.scheduler)
            self.notifier.ready(self.supervision.summary())

    async def _status_job(self) -> None:
        self.notifier.status(self.supervision.summary())

    async def run(self, until: float | None = None) -> int:
        from agent.runtime.httpd import MetricsServer
        from agent.runtime.sdnotify import WatchdogGate

        loop = asyncio.get_running_loop()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECS)
        signals = {signal.SIGTERM: self.request_stop, signal.SIGINT: self.request_stop,
                   signal.SIGHUP: self.request_reload}
        for sig, handler in signals.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        for runner in self.runners:
            runner.start(self.scheduler)
        self.scheduler.every("agent.status", 10.0, self._status_job, 10.0)
        self.scheduler.start()
        helpers = [asyncio.create_task(self._reload_loop(), name="reload")]
        gate = WatchdogGate(self.notifier, self.supervision.liveness)
        if gate.enabled:
            helpers.append(asyncio.create_task(gate.run(), name="watchdog"))
        if self.metrics_config is not None and self.metrics_config.enabled:
            from agent.runtime.status_data import collect_status

            self.metrics_server = MetricsServer.from_config(
                self.metrics_config, self.supervision.registry, self.supervision.health,
                status=lambda: collect_status(self.runners, self.clock.now()))
            await self.metrics_server.start()
            log.info("metrics on http://%s:%d/metrics", self.metrics_config.host, self.metrics_server.port)
        self.notifier.ready(self.supervision.summary())
        status = ""
        if self.metrics_server is not None:  # the first thing a new user looks for: where to look
            status = f"; status page http://{self.metrics_config.host}:{self.metrics_server.port}/"
        log.info("agent started: %d asset(s): %s%s", len(self.runners),
                 ", ".join(r.plan.asset for r in self.runners), status)
        try:
            if until is None:
                await self.stop_event.wait()
            else:
                stopper = asyncio.create_task(self.clock.sleep_until(until))
                waiter = asyncio.create_task(self.stop_event.wait())
                await asyncio.wait({stopper, waiter}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                waiter.cancel()
        finally:
            log.info("agent stopping: draining")
            self.notifier.stopping("draining")
            for task in helpers:
                task.cancel()
            await self.scheduler.shutdown()
            for runner in self.runners:
                await runner.drain()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            sys.setswitchinterval(switch_interval)
            self.notifier.close()  # its datagram socket; STOPPING=1 was the last message
        log.info("agent stopped")
        return 0
