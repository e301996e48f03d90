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

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from agent.lookout_local import csv_blocks
from agent.lookout_local.schema import Component
from agent.lookout_local.staging import OUT_CELLS, Staging, write_sorted
from agent.lookout_local.stores import location
from agent.lookout_local.timestamps import SAMPLE_SIZE, choose_format, parse_with, sample
from agent.pipeline.store import FileStore, S3Store, StoreUnavailable

log = logging.getLogger(__name__)

STAGING = ".staging."  # in the name of the hidden folder a component is staged in, beside the output
_KEY_PATTERN = re.compile(r"^\{prefix\}/?\{component_name\}(?:\[(.)\]|(.))\*$")


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

    def add(self, other: Quality) -> None:
        """Add the value counts of ``other`` (one file's) to these."""
        for mine, theirs in ((self.missing_by_sensor, other.missing_by_sensor),
                             (self.invalid_by_sensor, other.invalid_by_sensor)):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        self.unsupported_timestamps += other.unsupported_timestamps

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


def _check_header(frame: pd.DataFrame, comp: Component) -> None:
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (comp.timestamp, *comp.sensors) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} of component {comp.name!r} are missing from the header")


def _convert(frame: pd.DataFrame, comp: Component, time_format: str | None,
             quality: Quality | None) -> pd.DataFrame:
    """Rows of a CSV (or of a chunk of one) → ``timestamp`` + sensors (float64), bad timestamps dropped."""
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
    out.insert(0, "timestamp", parse_with(frame[comp.timestamp], time_format))
    bad_time = out["timestamp"].isna()
    if quality is not None:
        quality.unsupported_timestamps += int(bad_time.sum())
    return out[~bad_time]


def read_component_csv(data: bytes, comp: Component, quality: Quality | None = None) -> pd.DataFrame:
    """One CSV's rows for ``comp``: ``timestamp`` (naive UTC) + sensors (float64), rows with bad timestamps
    dropped, in file order. Raises ValueError when the file is unreadable or lacks a schema column."""
    frame = pd.read_csv(io.BytesIO(data), dtype={comp.timestamp: str}, skipinitialspace=True)
    _check_header(frame, comp)
    return _convert(frame, comp, choose_format(sample(frame[comp.timestamp])), quality)


def read_component_chunks(stream: BinaryIO, comp: Component, quality: Quality | None = None, *,
                          block_bytes: int = csv_blocks.BLOCK_BYTES) -> Iterator[pd.DataFrame]:
    """``read_component_csv`` for a file read from ``stream`` about ``block_bytes`` at a time (whole records,
    agent.lookout_local.csv_blocks): the same rows (in file order, split into frames) and counts. The
    timestamp format is chosen once per file, from its first non-empty cells, as ``read_component_csv``
    does (blocks are held until they show SAMPLE_SIZE of them). Raises ValueError (and pandas' errors)
    like it, possibly after some frames; a row with too many fields is an error wherever it is."""
    options = {"dtype": {comp.timestamp: str}, "skipinitialspace": True, "low_memory": False}
    header, previous = None, b""
    pending: list[pd.DataFrame] = []  # blocks read before the timestamp format is known
    cells: list[pd.Series] = []
    decided, time_format = False, None
    for block in csv_blocks.blocks(stream, block_bytes):
        if header is None:
            header, block = csv_blocks.split_header(block)
            frame = pd.read_csv(io.BytesIO(header + block), **options)
        else:
            frame = pd.read_csv(io.BytesIO(header + previous + block), **options).iloc[1 if previous else 0:]
        _check_header(frame, comp)
        previous = csv_blocks.last_record(block) or previous
        if decided:
            yield _convert(frame, comp, time_format, quality)
            continue
        pending.append(frame)
        cells.append(sample(frame[comp.timestamp]))
        if sum(map(len, cells)) >= SAMPLE_SIZE:
            decided, time_format = True, choose_format(pd.concat(cells).head(SAMPLE_SIZE))
            while pending:
                yield _convert(pending.pop(0), comp, time_format, quality)
    if header is None:
        raise pd.errors.EmptyDataError("No columns to parse from file")  # what read_csv says of an empty file
    if not decided:
        time_format = choose_format(pd.concat(cells).head(SAMPLE_SIZE))
    for frame in pending:
        yield _convert(frame, comp, time_format, quality)


def open_object(store, key: str) -> tuple[BinaryIO, int]:
    """``key`` of ``store`` as a binary stream, and its size in bytes: read as it is consumed, never whole
    (a folder store's file, an S3 object's body). Raises like ``store.get``."""
    if isinstance(store, FileStore):
        path = store._path(key)  # the store's own key checks
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {path}: {exc}") from exc
        return fh, os.fstat(fh.fileno()).st_size
    if isinstance(store, S3Store):
        response = store._call(store.client.get_object, Key=key)
        return response["Body"], int(response["ContentLength"])
    data = store.get(key)
    return io.BytesIO(data), len(data)


def ingest(store, bucket: str, prefix: str, key_pattern: str | None, components: list[Component],
           out_dir: Path, *, block_bytes: int = csv_blocks.BLOCK_BYTES,
           out_cells: int = OUT_CELLS) -> tuple[Quality, float, float]:
    """Read every component's files, write ``out_dir/<component>.parquet``; (quality, data start, data end)
    with the instants in epoch seconds. Raises IngestionFailed when a component has no usable data.

    Memory: no file and no component is held whole. Each file is parsed ``block_bytes`` at a time into a
    staging file (Arrow IPC, beside the output); only the timestamps stay in memory (8 bytes a row;
    16 while sorting rows that arrived out of order). The output is then written in timestamp order, block by
    block, from the staging file. The result is the one a whole-frame sort (stable: on equal timestamps the
    later file, then the later row, wins) gives."""
    quality = Quality()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".*{STAGING}*"):  # what an ingestion killed in the middle left
        shutil.rmtree(stale, ignore_errors=True)
    start, end = None, None
    for comp in components:
        list_prefix = component_prefix(prefix, comp.name, key_pattern)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{comp.name}{STAGING}") as tmp, \
                contextlib.closing(Staging(Path(tmp) / "rows.arrow")) as staging:
            ingested = 0
            for key in store.list(list_prefix):
                quality.total_files += 1
                mark, counts = staging.mark(), Quality()
                try:
                    stream, size = open_object(store, key)
                    quality.size_bytes += size
                    with contextlib.closing(stream):
                        for frame in read_component_chunks(stream, comp, counts, block_bytes=block_bytes):
                            staging.append(frame)
                    quality.add(counts)
                    ingested += 1
                except (ValueError, pd.errors.ParserError, UnicodeDecodeError, KeyError) as exc:
                    staging.rollback(mark)  # a file is taken whole or not at all
                    log.info("discarding %s: %s", location(store, bucket, key), exc)
                    quality.discarded.append({"Bucket": bucket, "Key": key})
            quality.ingested_files += ingested
            if not ingested:
                raise IngestionFailed(f"no usable data file for component {comp.name} under "
                                      f"{location(store, bucket, list_prefix)}")
            if not staging.rows:
                raise IngestionFailed(f"component {comp.name} has no row with a supported timestamp")
            first, last = write_sorted(staging, comp, out_dir / f"{comp.name}.parquet", quality, out_cells)
        start = first if start is None else min(start, first)
        end = last if end is None else max(end, last)
    return quality, float(start), float(end)
