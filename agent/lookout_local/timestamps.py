"""Timestamp columns of sensor CSVs → UTC instants.

Accepted: the formats listed in the L4E user guide (README, L4E contract §3), what AWS's own samples write
(``%Y-%m-%dT%H:%M:%S.%f``), the guide's own ``1/1/2020 0:00`` example, and ISO 8601 with a zone suffix
(converted to UTC). A column is parsed with the single format that reads most of its first values, as the
service does per file; cells that do not parse are counted as unsupported timestamps, never guessed.
"""

from __future__ import annotations

import pandas as pd

# User-guide list (Java patterns translated), then the samples' format, then extras.
FORMATS = (
    "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d-%H-%M-%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d-%H:%M:%S", "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M", "%Y-%m-%d-%H:%M", "%Y/%m/%dT%H:%M:%S", "%Y%m%dT%H:%M", "%Y%m%d %H:%M", "%Y%m%d%H%M",
    "%Y/%m/%d %H:%M:%S", "%Y%m%dT%H:%M:%S", "%Y%m%d %H:%M:%S", "%Y%m%d%H%M%S", "%Y/%m/%dT%H:%M",
    "%Y/%m/%d %H:%M", "%Y %m %dT%H:%M:%S", "%Y %m %d %H:%M:%S", "%Y %m %dT%H:%M", "%Y %m %d %H:%M",
    "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S",
)
SAMPLE_SIZE = 50


def _try(values: pd.Series, fmt: str) -> pd.Series:
    if fmt == "ISO8601":
        parsed = pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
        return parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.to_datetime(values, format=fmt, errors="coerce")


def sample(values: pd.Series) -> pd.Series:
    """The first SAMPLE_SIZE non-empty cells of a column (stripped text): what ``choose_format`` looks at."""
    text = values.astype("string").str.strip().dropna()
    return text[text != ""].head(SAMPLE_SIZE)


def choose_format(cells: pd.Series) -> str | None:
    """The format that reads most of ``cells`` (a ``sample``), None when none reads any."""
    if cells.empty:
        return None
    best, best_count = None, 0
    for fmt in (*FORMATS, "ISO8601"):
        count = int(_try(cells, fmt).notna().sum())
        if count > best_count:
            best, best_count = fmt, count
            if count == len(cells):
                break
    return best


def parse_with(values: pd.Series, fmt: str | None) -> pd.Series:
    """datetime64[ns] (naive UTC) of the same length, every cell read with ``fmt`` (None: all NaT)."""
    if fmt is None:
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    return _try(values.astype("string").str.strip(), fmt).astype("datetime64[ns]")


def parse_column(values: pd.Series) -> pd.Series:
    """datetime64[ns] (naive UTC) of the same length; NaT where a cell is empty or unsupported."""
    return parse_with(values, choose_format(sample(values)))
