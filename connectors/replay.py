"""Replay connector: emits a historian CSV's rows as readings at the pace of the injected clock.

The CSV has a timestamp column (ISO 8601; a value without a zone is UTC) and one numeric column per sensor.
An empty or non-numeric cell yields no reading for that sensor (non-numeric ones are counted as read errors).

Where it starts (replay is exact: the same CSV and settings give the same readings, so the same bytes):
- ``resume_after`` (set by the service from what the agent already holds for this source: the latest reading
  in the spool, or the end of the last written window) → rows after it;
- else, on a clock with a start anchor (``--clock-start``) → rows from that anchor on, whatever the start-up
  latency was;
- else (the system clock) → rows after "now": older rows are history (e.g. for `provision`).
Rows whose time has already come are emitted at once, in one batch; the rest at clock pace.

``rows = "sampled"`` (default): each row is a sample; between rows only the fill rule carries a value.
``rows = "changes"``: a historian "changes only" export; a value holds until the sensor's next row (rule 2a).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.core.clock import Clock, parse_instant
from agent.core.model import Reading
from connectors.base import ProbeLine, ProbeReport, SourceConfig, SourceStats

log = logging.getLogger("l4e.connectors.replay")


class ReplaySourceConfig(SourceConfig):
    """A historian CSV replayed at clock pace."""

    kind: Literal["replay"] = Field(description="Source kind.")
    path: Path = Field(description="CSV file: a timestamp column, then one column per sensor. "
                                   "Relative paths are resolved against the asset file's folder.")
    timestamp_column: str | None = Field(default=None, description="Name of the timestamp column "
                                         "(default: the first column).")
    columns: list[str] | None = Field(default=None, description="Sensor columns to emit (default: every "
                                      "column but the timestamp).")
    rows: Literal["sampled", "changes"] = Field(
        default="sampled", description="What a row means: a sample (between rows only the fill rule carries a "
        "value), or a change, as in a historian's changes-only export (a value holds until that sensor's next "
        "row).")

    @property
    def holds_values(self) -> bool:
        return self.rows == "changes"

    def resolved_path(self, base_dir: Path) -> Path:
        return self.path if self.path.is_absolute() else base_dir / self.path

    def header(self, base_dir: Path) -> list[str]:
        """The CSV header row. Raises OSError/ValueError when the file cannot be read."""
        with open(self.resolved_path(base_dir), newline="") as fh:
            row = next(csv.reader(fh), None)
        if not row or len(row) < 2:
            raise ValueError("needs a header with a timestamp column and at least one sensor column")
        return [c.strip() for c in row]

    def sensors(self, base_dir: Path) -> list[str]:
        header = self.header(base_dir)
        ts_col = self.timestamp_column or header[0]
        if ts_col not in header:
            raise ValueError(f"timestamp column {ts_col!r} not in header {header}")
        available = [c for c in header if c != ts_col]
        if self.columns is None:
            return available
        missing = [s for s in self.columns if s not in available]
        if missing:
            raise ValueError(f"sensors {missing} are not columns of the file (columns: {available})")
        return list(self.columns)


class ReplayConnector:
    """Replays ``config.path`` against ``clock``. See the module docstring for the contract."""

    def __init__(self, config: ReplaySourceConfig, clock: Clock, base_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.base_dir = base_dir
        self.stats = SourceStats()
        self.resume_after: float | None = None  # see the module docstring; set before readings() starts
        self.stats.session_watched = True  # alive while the file is being replayed
        self.stats.watermark = -math.inf  # nothing handed over yet (see SourceStats.watermark)

    def _rows(self):
        path = self.config.resolved_path(self.base_dir)
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = [c.strip() for c in next(reader)]
            ts_col = self.config.timestamp_column or header[0]
            ts_idx = header.index(ts_col)
            wanted = set(self.config.sensors(self.base_dir))
            columns = [(i, name) for i, name in enumerate(header) if name in wanted]
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    ts = parse_instant(row[ts_idx].strip())
                except (ValueError, IndexError):
                    self.stats.read_errors["<timestamp>"] += 1
                    if self.stats.read_errors["<timestamp>"] == 1:
                        log.warning("replay %s: line %d: unreadable timestamp, row skipped", self.name, line_no)
                    continue
                yield ts, [(name, row[i] if i < len(row) else "") for i, name in columns]

    def _convert(self, ts: float, cells) -> list[Reading]:
        batch = []
        for sensor, text in cells:
            text = text.strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if math.isnan(value) or math.isinf(value):
                self.stats.read_errors[sensor] += 1
                if self.stats.read_errors[sensor] == 1:
                    log.warning("replay %s: sensor %s: non-numeric value %r skipped (counted; logged once)",
                                self.name, sensor, text)
                continue
            self.stats.readings[sensor] += 1
            batch.append(Reading(sensor, value, ts))
        return batch

    def _first_instant(self) -> tuple[float, bool]:
        """(instant, inclusive): rows at/after (inclusive) or after it are emitted (module docstring)."""
        if self.resume_after is not None:
            return self.resume_after, False
        anchor = getattr(self.clock, "start", None)
        if anchor is not None:
            return float(anchor), True
        return self.clock.now(), False

    async def readings(self) -> AsyncIterator[list[Reading]]:
        first, inclusive = self._first_instant()
        self.stats.watermark = first
        self.stats.connected = True
        pending: list[Reading] = []  # rows whose time has already come: one batch
        for ts, cells in self._rows():
            if ts < first or (ts == first and not inclusive):
                continue
            if ts > self.clock.now():
                if pending:
                    yield self._delivered(pending)
                    pending = []
                self.stats.watermark = ts  # every row before this one is out
                await self.clock.sleep_until(ts)
                batch = self._convert(ts, cells)
                if batch:
                    yield self._delivered(batch)
            else:
                pending.extend(self._convert(ts, cells))
        if pending:
            yield self._delivered(pending)
        self.stats.watermark = math.inf
        self.stats.connected = False
        log.info("replay %s: end of file reached", self.name)

    def _delivered(self, batch: list[Reading]) -> list[Reading]:
        now = self.clock.now()
        self.stats.last_reading_ts = now
        self.stats.last_alive_ts = now
        return batch

    async def probe(self) -> ProbeReport:
        report = ProbeReport(source=self.name, ok=True)
        try:
            first = next(self._rows(), None)
        except (OSError, ValueError) as exc:
            return ProbeReport(source=self.name, ok=False, error=str(exc))
        if first is None:
            return ProbeReport(source=self.name, ok=False, error="no data rows")
        ts, cells = first
        for sensor, text in cells:
            report.lines.append(ProbeLine(sensor=sensor, value=text, type="csv", status="Good",
                                          source_ts=str(ts)))
        return report
