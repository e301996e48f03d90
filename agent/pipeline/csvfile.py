"""The CSV bytes of one component's window file (README, Decisions rule 4).

Header: the timestamp column, then the component's sensors in schema order. One row per grid point in
(start, end]; the timestamp as ``%Y-%m-%dT%H:%M:%S.%f`` in UTC without a zone; values as the shortest text
that round-trips the float64 (Python ``repr``); an empty cell where no value is left after the fill rule.
Lines end with ``\\n``; the file ends with a newline. Same grid → same bytes.
"""

from __future__ import annotations

import math

import numpy as np

from agent.pipeline.resample import Grid
from agent.pipeline.windows import format_csv_time


def cell(value: float) -> str:
    """A value's CSV text: at most 12 significant digits, the shortest text of the rounded float64 (60.0 → '60.0',
    1e-07 → '1e-07')."""
    return repr(float(f"{value:.12g}"))


def time_column(times: np.ndarray) -> list[str]:
    return [format_csv_time(int(t)) for t in times]


def component_csv(grid: Grid, sensors: list[str], timestamp_column: str = "Timestamp",
                  times_text: list[str] | None = None) -> bytes | None:
    """CSV bytes for ``sensors`` (a component, schema order), or None when none of them has any value."""
    idx = [grid.sensors.index(s) for s in sensors]
    block = grid.values[:, idx]
    if not np.isfinite(block).any():
        return None
    times_text = times_text if times_text is not None else time_column(grid.times)
    lines = [",".join([timestamp_column, *sensors])]
    # each cell at most 12 significant digits (cell): a resampled mean's float noise is not data
    isnan = math.isnan
    for stamp, row in zip(times_text, block, strict=True):  # a row at a time: no Python float per cell at once
        lines.append(stamp + "," + ",".join(["" if isnan(v) else cell(v) for v in row.tolist()]))
    lines.append("")
    return "\n".join(lines).encode()
