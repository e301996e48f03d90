"""Clocks. Every time-dependent part (connectors, windows, uploader deadlines, the scheduler) takes a Clock.

SystemClock is wall time. ScaledClock runs a simulated timeline ``speed`` times faster than wall time from
``start``; it is anchored to wall time (not the monotonic clock) so that, when the anchor is persisted in the
state directory, a restarted agent continues the same timeline, as a plant's time would have continued.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    speed: float

    def now(self) -> float:
        """Current time in Unix seconds (UTC) on this clock's timeline."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""

    async def sleep_until(self, ts: float) -> None:
        """Sleep until this clock reads at least ``ts`` (returns at once if it already does)."""

    def real_seconds(self, seconds: float) -> float:
        """Wall seconds that ``seconds`` of this clock's time take."""


class SystemClock:
    """Wall-clock time."""

    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, ts: float) -> None:
        # Re-check after waking: the wall clock may have been stepped (NTP) while we slept.
        while (delay := ts - time.time()) > 0:
            await asyncio.sleep(min(delay, 60.0))

    def real_seconds(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """A timeline that starts at ``start`` (Unix s) when wall time was ``anchor`` and runs ``speed``× faster."""

    def __init__(self, start: float, speed: float, anchor: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = float(start)
        self.speed = float(speed)
        self.anchor = time.time() if anchor is None else float(anchor)

    def now(self) -> float:
        return self.start + (time.time() - self.anchor) * self.speed

    def rebase(self, start: float, speed: float | None = None) -> None:
        """Continue from ``start`` now (and at ``speed``): e.g. the demo holds the clock still while it
        provisions, then lets the plant's time run. Sleepers re-check the clock, so none oversleeps."""
        if speed is not None:
            if speed <= 0:
                raise ValueError("speed must be > 0")
            self.speed = float(speed)
        self.start = float(start)
        self.anchor = time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, ts: float) -> None:
        while (delay := ts - self.now()) > 0:
            await asyncio.sleep(min(delay / self.speed, 1.0))  # short naps: the clock may be rebased

    def real_seconds(self, seconds: float) -> float:
        return seconds / self.speed

    @classmethod
    def persistent(cls, start: float, speed: float, state_file: Path) -> ScaledClock:
        """A clock whose anchor is kept in ``state_file``: the same (start, speed) resumes the same timeline."""
        try:
            saved = json.loads(state_file.read_text())
            if saved.get("start") == float(start) and saved.get("speed") == float(speed):
                return cls(start, speed, anchor=saved["anchor"])
        except (OSError, ValueError, KeyError):
            pass
        clock = cls(start, speed)
        from agent.core.atomic import write_json_atomic

        try:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            # a failed write leaves the old anchor intact
            write_json_atomic(state_file, {"start": clock.start, "speed": clock.speed, "anchor": clock.anchor})
        except OSError as exc:
            from agent.core.errors import StateError

            raise StateError(f"cannot keep the clock in {state_file}: {exc}") from exc
        return clock


def parse_instant(text: str) -> float:
    """ISO 8601 instant → Unix seconds. A value without a zone is taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso_utc(ts: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Backoff:
    """Capped exponential backoff with full jitter, in seconds: the one retry helper (uploads, connectors,
    hooks, the connector supervisor). Settings that configure it are named ``backoff_initial_secs`` and
    ``backoff_max_secs`` everywhere.

    ``next()`` returns the delay before the next attempt: uniform in [initial·2ⁿ/2, min(max, initial·2ⁿ)],
    so a fleet of gateways does not retry in lock-step; ``reset()`` after a success.
    """

    def __init__(self, initial_secs: float = 0.5, max_secs: float = 30.0, rng=None) -> None:
        import random

        self.initial_secs = initial_secs
        self.max_secs = max_secs
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.max_secs, self.initial_secs * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 62)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
