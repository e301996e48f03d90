"""A daemon thread that calls ``tick()`` every ``tick_secs`` wall seconds until ``stop()``.

The local scheduler (one process) and the fleet dispatcher (every worker) both run on it. ``tick()`` decides its
work from the clock and the persisted state, so a late or skipped tick is caught up by the next one. An error in
a tick never ends the thread: ``tick_failed`` reports it and the next tick runs as usual.
"""

from __future__ import annotations

import threading


class Ticker:
    thread_name = "l4e-ticker"

    def __init__(self, tick_secs: float) -> None:
        self.tick_secs = tick_secs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        raise NotImplementedError

    def tick_failed(self, exc: Exception) -> None:
        raise NotImplementedError

    def tick_succeeded(self) -> None:
        """Called after every tick that did not raise."""

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # supervision boundary: one bad tick must not stop the next ones
                self.tick_failed(exc)
            else:
                self.tick_succeeded()
            self._stop.wait(self.tick_secs)
