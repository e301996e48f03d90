"""The Connector protocol and the config fields every source shares.

A connector is built from its validated config model (no I/O in ``__init__``), then ``readings()`` is iterated
until cancelled. A new connector = a config model with ``kind: Literal[...]`` deriving from SourceConfig, one
class, one line in each table of connectors.registry (the model in ``connectors/<kind>/config.py``, free of the
protocol library), a test against a real server on 127.0.0.1, and a ``tests/cases/`` folder.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.core.model import Reading


class SourceConfig(BaseModel):
    """Fields every [[sources]] entry has. Subclasses add ``kind: Literal["..."]`` and their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique name of this source within the asset (used in logs and metrics).",
                      pattern=r"^[A-Za-z0-9._\-]{1,64}$")

    def sensors(self, base_dir: Path) -> list[str]:
        """The sensor names this source provides (used to check that every schema sensor has one source)."""
        raise NotImplementedError

    @property
    def holds_values(self) -> bool:
        """Whether a value of this source holds until its next value or a validity end (rule 2a): true for
        sources that report by exception or are polled (OPC-UA, Modbus); false for sampled rows, which only
        the fill rule carries."""
        return True


@dataclass
class SourceStats:
    """Counters a connector keeps for metrics and `status`. Keys of the Counters are sensor names."""

    readings: Counter = field(default_factory=Counter)
    bad_quality: Counter = field(default_factory=Counter)
    read_errors: Counter = field(default_factory=Counter)
    reconnects: int = 0
    connected: bool = False
    last_reading_ts: float | None = None  # clock time of the last delivered reading
    # Liveness is the transport's, not the data's: clock time the source last answered (a publish response
    # or keep-alive, a successful poll). A steady plant with a healthy session stays alive.
    last_alive_ts: float | None = None
    session_up_ts: float | None = None  # clock time the current (or last) session came up (sessions only)
    # Sensors whose latest sample was Bad/Uncertain (their value does not hold); all of them: "bad quality"
    bad_now: set = field(default_factory=set)
    # True for connectors whose ``connected`` already means "answering right now" (a session with its own
    # stale-timer, a file being replayed); others are judged by ``last_alive_ts`` alone.
    session_watched: bool = False
    # For sources that play a timeline (replay): every reading with ts < watermark has been handed over (clock
    # seconds). The closer writes no window ending at or after it, so a source that lags behind the clock (a
    # loaded machine at 300x) never sees its window closed without its last rows. None: a live source.
    watermark: float | None = None

    def alive(self, now: float, bound_secs: float) -> bool:
        """The source's transport answers: a watched session is up, or it answered within ``bound_secs``."""
        if self.session_watched and self.connected:
            return True
        return self.last_alive_ts is not None and now - self.last_alive_ts <= bound_secs
    untrusted: str | None = None  # why the server's identity is refused right now (OPC-UA trust), else None
    # why the last attempt to connect failed (connection refused, timeout, ...); None once connected. Health
    # (agent.runtime.supervision) reports a source that is not connected as soon as this is set.
    connect_error: str | None = None


@dataclass
class ProbeLine:
    """One configured point as read once by ``probe``."""

    sensor: str
    value: Any = None
    type: str = ""
    status: str = ""
    source_ts: str = ""
    server_ts: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class ProbeReport:
    source: str
    ok: bool
    lines: list[ProbeLine] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)  # about the source as a whole (e.g. its certificate)

    def format(self) -> str:
        out = [f"source {self.source}: {'OK' if self.ok else 'FAILED'}" + (f" ({self.error})" if self.error else "")]
        out.extend(f"  {note}" for note in self.notes)
        for line in self.lines:
            text = f"  {line.sensor:<24} value={line.value!r} type={line.type} status={line.status}"
            if line.source_ts or line.server_ts:
                text += f" source_ts={line.source_ts} server_ts={line.server_ts}"
            if line.error:
                text += f" error={line.error}"
            for key, val in line.extra.items():
                text += f"\n      {key}: {val}"
            out.append(text)
        return "\n".join(out)


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task has a cancellation pending that something swallowed.

    Cancellation is a connector's only stop signal, and protocol libraries lose it now and then: asyncua awaits
    its own tasks under ``except CancelledError: pass``, and Python 3.11's ``asyncio.wait_for`` returns the
    inner result when it completes in the same loop iteration as the cancel. The task still counts the request
    (``Task.cancelling()``), so calling this at the points a loop passes on every cycle (each reconnect attempt,
    each batch, each poll) gives the cancellation back within one cycle. Costs one C call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Connector(Protocol):
    """A source of Readings from one endpoint."""

    name: str
    stats: SourceStats

    def readings(self) -> AsyncIterator[list[Reading]]:
        """Yield batches of GOOD readings until cancelled.

        Reconnects inside with capped backoff and never raises for a lost connection; logs the transition
        once. Non-GOOD samples are counted in ``stats.bad_quality`` and not yielded. Cancellation is the only
        stop signal. Batches (not single readings) keep the per-reading cost low on the hot path.
        """

    async def probe(self) -> ProbeReport:
        """Connect, read every configured point once, report values and errors (for `check`/`probe`)."""

