"""Labelled runs from CSV files, for evaluation: one file = one run of consecutive grid rows.

A run file has a header row, a time column (the first column unless named), numeric sensor columns, a 0/1
label column (1 while a fault is active) and optionally columns to ignore. SKAB's files are read as they
are: ``;``-separated, ``datetime;<sensors>;anomaly;changepoint`` (``RunFormat.skab()``). Rows are taken as
the grid in file order; the rate (seconds per row) is the median spacing of the timestamps.

Every problem is a ``RunError`` naming the file: unreadable or empty, no label column, a non-numeric sensor
column or label, unparseable or decreasing timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class RunError(Exception):
    """A run that cannot be evaluated; the message names the file."""


@dataclass(frozen=True)
class RunFormat:
    """How run files are laid out."""

    sep: str = ","
    label: str | None = "label"  # None: no label column, every row is normal (an anomaly-free run)
    drop: tuple[str, ...] = ()
    time_column: str | None = None  # None: the first column

    @classmethod
    def skab(cls) -> RunFormat:
        return cls(sep=";", label="anomaly", drop=("changepoint",), time_column="datetime")


@dataclass
class Run:
    """One labelled run: ``values`` (rows × sensors), ``labels`` (0/1 per row), timestamps in epoch seconds."""

    name: str
    sensors: list[str]
    times: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    rate: float


def run_files(paths: list[Path]) -> list[Path]:
    """Files named or found directly inside named folders (``*.csv``, in natural order: 2.csv before 10.csv).
    Raises RunError for a path that does not exist or a folder without CSV files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.csv"), key=_natural)
            if not found:
                raise RunError(f"{path}: no *.csv file in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise RunError(f"{path}: no such file or folder")
    return files


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def load_run(path: Path, fmt: RunFormat, name: str | None = None) -> Run:
    """Read one run file. Raises RunError (naming ``path``) for anything that is not a labelled run."""
    try:
        frame = pd.read_csv(path, sep=fmt.sep, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RunError(f"{path}: cannot read it as a {fmt.sep!r}-separated CSV file: {exc}") from None
    if frame.empty or frame.shape[1] < 2:
        raise RunError(f"{path}: no data rows, or a single column (is the separator {fmt.sep!r} right?)")
    columns = list(frame.columns)
    time_col = fmt.time_column or columns[0]
    if time_col not in columns:
        raise RunError(f"{path}: no time column {time_col!r} (columns: {', '.join(columns)})")
    if fmt.label is not None and fmt.label not in columns:
        raise RunError(f"{path}: no label column {fmt.label!r} (columns: {', '.join(columns)})")
    times = pd.to_datetime(frame[time_col], errors="coerce", utc=True)
    if times.isna().any():
        line = int(np.flatnonzero(times.isna().to_numpy())[0]) + 2
        raise RunError(f"{path}: line {line}: {time_col} {frame[time_col].iloc[line - 2]!r} is not a timestamp")
    secs = times.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    if len(secs) > 1 and (np.diff(secs) < 0).any():
        line = int(np.flatnonzero(np.diff(secs) < 0)[0]) + 3
        raise RunError(f"{path}: line {line}: timestamps go backwards")
    labels = _numeric(path, frame, fmt.label) if fmt.label is not None else np.zeros(len(frame))
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0.0, 1.0)))[0])
        raise RunError(f"{path}: line {bad + 2}: label {fmt.label} is {frame[fmt.label].iloc[bad]!r}; allowed: 0 or 1")
    sensors = [c for c in columns if c not in (time_col, fmt.label, *fmt.drop)]
    if not sensors:
        raise RunError(f"{path}: no sensor column (columns: {', '.join(columns)})")
    values = np.column_stack([_numeric(path, frame, c, empty_ok=True) for c in sensors])
    rate = float(np.median(np.diff(secs))) if len(secs) > 1 else 1.0
    if not rate > 0:
        raise RunError(f"{path}: the median spacing of the timestamps is 0 (duplicated timestamps?)")
    return Run(name or str(path), sensors, secs, values, labels.astype(np.int8), rate)


def _numeric(path: Path, frame: pd.DataFrame, column: str, empty_ok: bool = False) -> np.ndarray:
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != "", None) if empty_ok else text, errors="coerce").to_numpy(
        dtype=np.float64)
    bad = np.isnan(values) & ((text != "") if empty_ok else np.ones(len(text), dtype=bool))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RunError(f"{path}: line {row + 2}: column {column!r} is not numeric ({frame[column].iloc[row]!r})")
    return values
