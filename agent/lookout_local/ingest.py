"""Data ingestion: CSVs under an S3-style prefix → one Parquet file per component + quality summary.

Files per component are found by the job's KeyPattern (README, L4E contract §4): ``{prefix}/{component_name}/*``
(the default), ``{prefix}/{component_name}_*`` or ``{prefix}/{component_name}[D]*`` with D one of
space, dot, underscore, hyphen. A file whose header lacks a schema column, or that cannot be read as
CSV, is discarded (listed in DiscardedFiles). Kept rows: parseable timestamp; duplicates keep the last
row. Sensor cells that are empty count as missing values, cells that are not numbers (or infinite) as
invalid values; both become NaN. The result is stored as ``<dir>/<component>.parquet`` with a
``timestamp`` column (naive UTC, ascending) then the schema's sensors as float64.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agent.core.atomic import replace_with
from agent.lookout_local.schema import Component
from agent.lookout_local.stores import location
from agent.lookout_local.timestamps import parse_column

log = logging.getLogger(__name__)

_KEY_PATTERN = re.compile(r"^\{prefix\}/?\{component_name\}(?:\[(.)\]|(.))\*$")
SHORT_RANGE_SECS = 14 * 86400


class IngestionFailed(Exception):
    """The job fails with this message as FailedReason."""


def component_prefix(prefix: str, component: str, key_pattern: str | None) -> str:
    """The listing prefix for a component's files under ``prefix`` for a KeyPattern."""
    sep = "/"
    if key_pattern:
        m = _KEY_PATTERN.match(key_pattern)
        if not m:
            raise IngestionFailed(f"KeyPattern {key_pattern!r} is not one of {{prefix}}/{{component_name}}/*, "
                                  "{prefix}/{component_name}_*, {prefix}/{component_name}[DELIMITER]*")
        sep = m.group(1) or m.group(2)
        if sep not in "/ ._-":
            raise IngestionFailed(f"KeyPattern delimiter {sep!r}; allowed: space, dot, underscore, hyphen")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{component}{sep}"


@dataclass
class Quality:
    """Counts for DataQualitySummary / IngestedFilesSummary."""

    total_files: int = 0
    ingested_files: int = 0
    discarded: list[dict] = field(default_factory=list)
    missing_by_sensor: dict[str, int] = field(default_factory=dict)
    invalid_by_sensor: dict[str, int] = field(default_factory=dict)
    unsupported_timestamps: int = 0
    duplicate_timestamps: int = 0
    all_missing_sensors: int = 0
    short_range_sensors: int = 0
    size_bytes: int = 0

    def data_quality_summary(self) -> dict:
        return {
            "InsufficientSensorData": {
                "MissingCompleteSensorData": {"AffectedSensorCount": self.all_missing_sensors},
                "SensorsWithShortDateRange": {"AffectedSensorCount": self.short_range_sensors},
            },
            "MissingSensorData": {
                "AffectedSensorCount": sum(1 for v in self.missing_by_sensor.values() if v),
                "TotalNumberOfMissingValues": sum(self.missing_by_sensor.values()),
            },
            "InvalidSensorData": {
                "AffectedSensorCount": sum(1 for v in self.invalid_by_sensor.values() if v),
                "TotalNumberOfInvalidValues": sum(self.invalid_by_sensor.values()),
            },
            "UnsupportedTimestamps": {"TotalNumberOfUnsupportedTimestamps": self.unsupported_timestamps},
            "DuplicateTimestamps": {"TotalNumberOfDuplicateTimestamps": self.duplicate_timestamps},
        }

    def files_summary(self) -> dict:
        return {"TotalNumberOfFiles": self.total_files, "IngestedNumberOfFiles": self.ingested_files,
                "DiscardedFiles": self.discarded}


def read_component_csv(data: bytes, comp: Component, quality: Quality | None = None) -> pd.DataFrame:
    """One CSV's rows for ``comp``: ``timestamp`` (naive UTC) + sensors (float64), rows with bad timestamps
    dropped, in file order. Raises ValueError when the file is unreadable or lacks a schema column."""
    frame = pd.read_csv(io.BytesIO(data), dtype={comp.timestamp: str}, skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (comp.timestamp, *comp.sensors) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} of component {comp.name!r} are missing from the header")
    raw = frame[list(comp.sensors)]
    # whole-frame numpy work: per-column pandas assignment dominated the cost with hundreds of sensors
    absent = raw.isna().to_numpy()
    text_cols = [i for i, kind in enumerate(raw.dtypes.map(lambda d: d.kind)) if kind not in "fiub"]
    if not text_cols:
        values = raw.to_numpy(dtype=np.float64)
    else:
        values = np.empty(raw.shape, dtype=np.float64)
        numeric_cols = [i for i in range(raw.shape[1]) if i not in set(text_cols)]
        if numeric_cols:
            values[:, numeric_cols] = raw.iloc[:, numeric_cols].to_numpy(dtype=np.float64)
        for i in text_cols:  # text in a sensor column: blanks are missing, other non-numbers invalid
            col = raw.iloc[:, i]
            absent[:, i] |= col.astype("string").str.strip().eq("").fillna(False).to_numpy(dtype=bool)
            values[:, i] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if quality is not None:
        invalid = (~finite & ~absent).sum(axis=0)
        for i, sensor in enumerate(comp.sensors):
            name = f"{comp.name}\\{sensor}"
            quality.missing_by_sensor[name] = quality.missing_by_sensor.get(name, 0) + int(absent[:, i].sum())
            quality.invalid_by_sensor[name] = quality.invalid_by_sensor.get(name, 0) + int(invalid[i])
    values[~finite] = np.nan
    out = pd.DataFrame(values, columns=list(comp.sensors), index=frame.index)
    out.insert(0, "timestamp", parse_column(frame[comp.timestamp]))
    bad_time = out["timestamp"].isna()
    if quality is not None:
        quality.unsupported_timestamps += int(bad_time.sum())
    return out[~bad_time]


def ingest(store, bucket: str, prefix: str, key_pattern: str | None, components: list[Component],
           out_dir: Path) -> tuple[Quality, float, float]:
    """Read every component's files, write ``out_dir/<component>.parquet``; (quality, data start, data end)
    with the instants in epoch seconds. Raises IngestionFailed when a component has no usable data."""
    quality = Quality()
    out_dir.mkdir(parents=True, exist_ok=True)
    start, end = None, None
    for comp in components:
        list_prefix = component_prefix(prefix, comp.name, key_pattern)
        frames = []
        for key in store.list(list_prefix):
            quality.total_files += 1
            try:
                data = store.get(key)
                quality.size_bytes += len(data)
                frames.append(read_component_csv(data, comp, quality))
                quality.ingested_files += 1
            except (ValueError, pd.errors.ParserError, UnicodeDecodeError, KeyError) as exc:
                log.info("discarding %s: %s", location(store, bucket, key), exc)
                quality.discarded.append({"Bucket": bucket, "Key": key})
        if not frames:
            raise IngestionFailed(f"no usable data file for component {comp.name} under "
                                  f"{location(store, bucket, list_prefix)}")
        frame = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")
        dup = frame["timestamp"].duplicated(keep="last")
        quality.duplicate_timestamps += int(dup.sum())
        frame = frame[~dup].reset_index(drop=True)
        if frame.empty:
            raise IngestionFailed(f"component {comp.name} has no row with a supported timestamp")
        for sensor in comp.sensors:
            present = frame["timestamp"][frame[sensor].notna()]
            if present.empty:
                quality.all_missing_sensors += 1
            elif (present.iloc[-1] - present.iloc[0]).total_seconds() < SHORT_RANGE_SECS:
                quality.short_range_sensors += 1
        # agent.core.atomic: a reader (training) never sees a half-written file, a crash never a torn one
        replace_with(out_dir / f"{comp.name}.parquet", functools.partial(frame.to_parquet, index=False))
        first = frame["timestamp"].iloc[0].timestamp()
        last = frame["timestamp"].iloc[-1].timestamp()
        start = first if start is None else min(start, first)
        end = last if end is None else max(end, last)
    return quality, float(start), float(end)
