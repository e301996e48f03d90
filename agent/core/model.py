"""Value types that flow through the agent. Frozen dataclasses, no I/O.

Times are Unix epoch seconds (float, UTC) everywhere inside the agent: cheap to create per reading,
exact for the whole-second grids L4E uses, and free of time-zone ambiguity.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class Quality(enum.IntEnum):
    """Quality of a reading, as reported by the source. Only GOOD values reach the CSV files."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one sensor.

    sensor: the sensor name as used in the asset's [components] (the CSV column name).
    value: float64; booleans are 0.0/1.0.
    ts: Unix seconds (UTC) of the sample, as chosen by the connector's timestamp policy.
    quality: non-GOOD readings are counted and dropped before the spool.

    A Reading whose value is NaN is a validity-end marker (see :func:`validity_end`), never a measurement.
    """

    sensor: str
    value: float
    ts: float
    quality: Quality = Quality.GOOD


def validity_end(sensor: str, ts: float) -> Reading:
    """A marker: from ``ts`` (Unix s) on, the last value of ``sensor`` no longer holds (rule 2a of the README's
    "Decisions"). Connectors emit it when their source stops vouching for a value (a Bad/Uncertain status, a
    lost session or subscription, a failed poll); the service emits it when a connector stops. It travels
    through the spool like a reading (value NaN) and only the resampler interprets it."""
    return Reading(sensor, math.nan, ts, Quality.BAD)


@dataclass(frozen=True, slots=True)
class Window:
    """An L4E scheduling window (start, end], in Unix seconds; end on the grid of the upload frequency."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One sensor's contribution to an anomaly score (name is ``component\\sensor``)."""

    name: str
    value: float


@dataclass(frozen=True, slots=True)
class Result:
    """One line of an L4E results.jsonl: the verdict for one grid point.

    ts: Unix seconds (UTC) of the grid point. score is None for MACHINE_OFF lines and old models.
    window_start: the DataStartTime of the execution that produced it (Unix seconds).
    """

    ts: float
    prediction: int
    reason: str
    score: float | None
    diagnostics: tuple[Diagnostic, ...] = ()
    window_start: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A pipeline or data-health event (a window missing, data dropped, an execution failed, ...).

    kind: a short stable identifier (e.g. "window_missing", "spool_dropped", "execution_failed").
    subject: what it is about (a component, a sensor, a window start as ISO text, a source name).
    """

    kind: str
    subject: str
    message: str
    ts: float
    details: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm transition delivered to hooks. id is stable for the life of one alarm."""

    id: str
    asset: str
    rule: str
    state: str  # "raised" | "cleared"
    ts: float
    severity: str = "warning"
    message: str = ""
    score: float | None = None
    window_start: int | None = None
    window_end: int | None = None
    diagnostics: tuple[Diagnostic, ...] = ()
