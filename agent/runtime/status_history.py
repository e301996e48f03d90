"""The little the status page remembers: bounded, in memory, filled off the per-reading path.

``GET /`` and ``GET /api/status`` (agent.runtime.status_data) read what the agent holds anyway (connector stats,
closer, uploader, outbox, alarm engine). A few things the agent does not keep are recorded here, each at a
moment that happens once per window, execution, alarm or health tick, never once per reading:

- sensor history: the last hour of *closed-window grid rows* per sensor, parsed from the CSV bytes of each
  window file right after the closer wrote it (``read_window_file``, in the runner's disk worker, in the
  same call as the write, so the uploader cannot have taken the file yet; ``on_event`` with the
  ``window_written`` event then keeps the rows). At most ``max_points`` rows per
  hour are kept (with a fine sampling rate every k-th grid row), so memory is bounded by sensors ×
  ``max_points`` whatever the rate; ``points_per_sensor`` sizes it for the asset: 120 up to 2,500 sensors,
  then fewer so the whole history stays near 300,000 points (2.4 MB; 15 points an hour at 20,000 sensors).
  Reading the CSV was chosen over a hook in the closer: the closer stays untouched and the page shows exactly
  what was sent to Lookout (after aggregation and the fill rule).
- executions (``execution_succeeded`` / ``execution_failed`` events from the results poller): the last
  ``executions``;
- result rows: the last ``score_rows`` (ts, score, prediction) for the score trend, and the top
  diagnostics of the latest ``abnormal_rows`` rows with prediction = 1;
- alarm transitions: the last ``transitions``;
- source states: the state per source with the clock time it was first seen in that state
  (``observe_sources``, called from the alarm job, every few seconds), and a few (clock ts, readings total)
  samples per source for a readings-per-second rate.

All times are agent clock seconds (Unix, UTC). Not thread-safe: used from the event loop only.
"""

from __future__ import annotations

import bisect
import csv
import math
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.core.model import Alarm, Event, Result, Window

HORIZON_SECS = 3600.0
RATE_WINDOW_SECS = 60.0  # readings per second are averaged over about this much clock time


@dataclass
class SourceMemo:
    state: str
    since: float
    samples: deque = field(default_factory=lambda: deque(maxlen=64))  # (clock ts, readings total)


def source_state(stats, silent: bool, bad_quality: bool) -> str:
    """down | reconnecting | bad quality | connected, from the agent's own verdicts and a SourceStats.

    down: the agent judges the source silent (``[health] source_silent_secs``, the same verdict as /healthz
    and the source_silent alarm); reconnecting: not connected, not silent that long yet (also before the
    first connection); bad quality: connected, but its items are Bad/Uncertain (``bad_quality``: the
    runner's verdict where it has one, else every sensor in ``stats.bad_now``); connected otherwise."""
    if silent:
        return "down"
    if not stats.connected:
        return "reconnecting"
    return "bad quality" if bad_quality else "connected"


class Timeline:
    """The grid seconds of the kept rows of one window file (a component), shared by its sensors: their rows
    arrive together, so one ring of timestamps serves them all and a sensor holds only its values. A ring of
    ``capacity`` grid seconds (int64), allocated once; ``push`` returns the slot of the new row."""

    __slots__ = ("capacity", "size", "start", "ts")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ts = array("q", bytes(8 * capacity))  # grid points: whole seconds
        self.start = 0
        self.size = 0

    def push(self, ts: float) -> int:
        if self.size < self.capacity:
            slot = (self.start + self.size) % self.capacity
            self.size += 1
        else:  # full: overwrite the oldest
            slot = self.start
            self.start = (self.start + 1) % self.capacity
        self.ts[slot] = round(ts)
        return slot

    def order(self, column: array) -> tuple[array, array]:
        """The timestamps and ``column`` (an array indexed by slot), oldest first."""
        end = self.start + self.size
        if end <= self.capacity:
            return self.ts[self.start:end], column[self.start:end]
        wrap = end - self.capacity
        return self.ts[self.start:] + self.ts[:wrap], column[self.start:] + column[:wrap]


class Series:
    """One sensor's kept grid rows, compact and allocated once: its values (double) in the slots of a
    :class:`Timeline`, the ring of grid seconds it shares with the other sensors of its window file. 8 bytes a
    point (plus the timeline's 8 per component) where a ring of its own timestamps cost 16 and a deque of
    (ts, value) tuples about 110: at 20,000 sensors × 122 points, 20 MB instead of 40 MB (and 270 MB). The
    values are allocated when the sensor's first row arrives, so the agent's memory does not grow while the
    history fills its hour. Iterates oldest first as (grid ts, value | None); an empty cell is stored as NaN.
    ``Series(capacity)`` alone has a timeline of its own (``append`` adds a row to it)."""

    __slots__ = ("timeline", "values")

    def __init__(self, capacity: int, timeline: Timeline | None = None) -> None:
        self.timeline = timeline if timeline is not None else Timeline(capacity)
        self.values = array("d", [math.nan]) * self.timeline.capacity

    @property
    def ts(self) -> array:
        return self.timeline.ts

    def append(self, ts: float, value: float | None) -> None:
        """A row on this series' own timeline (a shared one is pushed once by its owner, then ``put``)."""
        self.put(self.timeline.push(ts), value)

    def put(self, slot: int, value: float | None) -> None:
        self.values[slot] = math.nan if value is None else value

    def __len__(self) -> int:
        return self.timeline.size

    def __iter__(self) -> Iterator[tuple[int, float | None]]:
        return iter(self.after(-math.inf))

    def after(self, cut: float) -> list[tuple[int, float | None]]:
        """The points with ts > ``cut``, oldest first."""
        ts, values = self.timeline.order(self.values)
        i = bisect.bisect_right(ts, cut)
        return list(zip(ts[i:], [None if v != v else v for v in values[i:]], strict=True))  # NaN: empty


HISTORY_POINTS_BUDGET = 300_000  # points of sensor history for the whole asset (8 bytes each)


def points_per_sensor(n_sensors: int, most: int = 120, least: int = 12) -> int:
    """Rows of history kept per sensor: ``most`` for a small asset, fewer for a large one so sensors ×
    points stays near HISTORY_POINTS_BUDGET (never below ``least``: a sparkline needs a few points)."""
    return max(least, min(most, HISTORY_POINTS_BUDGET // max(1, n_sensors)))


class StatusHistory:
    """See the module docstring. ``outbox_dir`` and ``name_of(component, window)`` locate a written window
    file; ``rate`` is the grid step in seconds."""

    def __init__(self, outbox_dir: Path, name_of, rate: int, *, horizon_secs: float = HORIZON_SECS,
                 max_points: int = 120, executions: int = 20, transitions: int = 20, score_rows: int = 288,
                 abnormal_rows: int = 3, diagnostics_per_row: int = 5) -> None:
        self.outbox_dir = Path(outbox_dir)
        self.name_of = name_of
        self.rate = rate
        self.horizon_secs = horizon_secs
        # keep one grid row in `step`, so an hour holds at most max_points rows
        self.step = max(1, math.ceil(horizon_secs / rate / max_points))
        self._points = max_points + 2
        self.series: dict[str, Series] = {}  # sensor → its kept (grid ts, value | None) rows
        self.timelines: dict[str, Timeline] = {}  # component → the grid seconds its sensors' rows share
        self.latest_grid_ts: float | None = None
        self.version = 0  # bumped whenever the sensor history changes (render caches key on it)
        self.executions: deque = deque(maxlen=executions)
        self.scores: deque = deque(maxlen=score_rows)
        self.abnormal: deque = deque(maxlen=abnormal_rows)
        self.transitions: deque = deque(maxlen=transitions)
        self.sources: dict[str, SourceMemo] = {}
        self.unreadable_windows = 0
        # (component, window start) → rows read off the event loop (read_window_file), taken by on_event
        self.prepared: dict[tuple[str, int], list | None] = {}
        self.sensor_sources: dict[str, str] | None = None  # sensor → source name (agent.runtime.status_data caches it)
        self._diag_k = diagnostics_per_row

    # --- inputs ---------------------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """An AssetRunner event listener: window files and executions."""
        if event.kind == "window_written":
            start, end = event.details.get("window_start"), event.details.get("window_end")
            if start is not None and end is not None:
                self._window_file(event.subject, Window(int(start), int(end)))
        elif event.kind in ("execution_succeeded", "execution_failed"):
            d = event.details
            self.executions.append({
                "window_start": d.get("window_start"), "window_end": d.get("window_end"),
                "status": "SUCCESS" if event.kind == "execution_succeeded" else "FAILED",
                "ts": event.ts, "rows": d.get("rows"), "anomalous": d.get("anomalous"),
                "max_score": d.get("max_score"),
                "reason": "" if event.kind == "execution_succeeded" else event.message[:300]})

    def on_results(self, rows: Iterable[Result]) -> None:
        for row in rows:
            self.scores.append((row.ts, row.score, row.prediction))
            if row.prediction == 1:
                top = sorted(row.diagnostics, key=lambda d: (-d.value, d.name))[: self._diag_k]
                self.abnormal.append({"ts": row.ts, "score": row.score, "reason": row.reason,
                                      "diagnostics": [[d.name, d.value] for d in top]})

    def on_alarms(self, alarms: Iterable[Alarm]) -> None:
        for a in alarms:
            self.transitions.append({"id": a.id, "rule": a.rule, "state": a.state, "ts": a.ts,
                                     "severity": a.severity, "message": a.message[:300], "score": a.score})

    def observe_sources(self, connectors, silent: set[str], bad_quality: set[str], now: float) -> None:
        """Record state transitions and a readings-total sample per source (cheap: a few per source)."""
        for conn in connectors:
            state = source_state(conn.stats, conn.name in silent, conn.name in bad_quality)
            memo = self.sources.get(conn.name)
            if memo is None:
                memo = self.sources[conn.name] = SourceMemo(state, now)
            elif memo.state != state:
                memo.state, memo.since = state, now
            total = sum(conn.stats.readings.values())
            if not memo.samples or now > memo.samples[-1][0]:
                memo.samples.append((now, total))

    # --- views ----------------------------------------------------------------------------------------
    def rate_of(self, name: str, total: int, now: float) -> float | None:
        """Readings per clock second over about the last minute, or None before two samples."""
        memo = self.sources.get(name)
        if memo is None or not memo.samples:
            return None
        base = memo.samples[0]
        for sample in memo.samples:
            if now - sample[0] >= RATE_WINDOW_SECS:
                base = sample
            else:
                break
        elapsed = now - base[0]
        return (total - base[1]) / elapsed if elapsed > 0 else None

    def sensor_points(self, sensor: str) -> list[tuple[float, float | None]]:
        """The kept grid rows of ``sensor`` within the horizon before the latest grid row, oldest first."""
        points = self.series.get(sensor)
        if not points or self.latest_grid_ts is None:
            return []
        return points.after(self.latest_grid_ts - self.horizon_secs)

    # --- internals ------------------------------------------------------------------------------------
    def read_window_file(self, component: str, window: Window) -> list[tuple[float, list[str], list]] | None:
        """The kept grid rows of a written window file as (ts, sensors, values: float or None for an empty
        cell), or None when it cannot be
        read. Pure (reads the file, changes nothing here): the runner calls it in its disk worker, right after
        the closer wrote the file, and hands the rows to ``on_event`` through ``prepared``."""
        path = self.outbox_dir / str(window.end) / self.name_of(component, window)
        try:
            text = path.read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            return None
        lines = text.split("\n")
        header = next(csv.reader([lines[0]]))
        sensors = header[1:]
        rows = []
        for i, line in enumerate(lines[1:], start=1):
            ts = window.start + i * self.rate  # one row per grid point in (start, end], in order
            if line and (ts // self.rate) % self.step == 0:
                cells = next(csv.reader([line]))
                stamp = datetime.strptime(cells[0], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
                # the file does not have one row per grid point: trust its timestamps
                rows.append((stamp if stamp != ts else ts, sensors, [float(c) if c else None for c in cells[1:]]))
        return rows

    def _window_file(self, component: str, window: Window) -> None:
        rows = self.prepared.pop((component, window.start), None)
        if rows is None:
            rows = self.read_window_file(component, window)
        if rows is None:
            self.unreadable_windows += 1  # dropped by the budget meanwhile: the page just misses it
            return
        timeline = self.timelines.get(component)
        if timeline is None:
            timeline = self.timelines[component] = Timeline(self._points)
        for ts, sensors, values in rows:
            slot = timeline.push(ts)
            for i, sensor in enumerate(sensors):
                points = self.series.get(sensor)
                if points is None:
                    points = self.series[sensor] = Series(self._points, timeline)
                if points.timeline is timeline:  # a sensor of two components is kept from its first one
                    # every sensor of the file is set in the pushed slot (a short row: empty), else it would
                    # show the value an hour older that the slot held
                    points.put(slot, values[i] if i < len(values) else None)
            if self.latest_grid_ts is None or ts > self.latest_grid_ts:
                self.latest_grid_ts = ts
        self.version += 1
