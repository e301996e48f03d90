"""The CSV bytes of one component's window file (README, Decisions rule 4).

Header: the timestamp column, then the component's sensors in schema order. One row per grid point in
(start, end]; the timestamp as ``%Y-%m-%dT%H:%M:%S.%f`` in UTC without a zone; values as the shortest text
that round-trips the float64 (Python ``repr``) of the value rounded to 12 significant digits (``cell``); an
empty cell where no value is left after the fill rule. Lines end with ``\\n``; the file ends with a newline.
Same grid → same bytes.

Speed: a window at 20,000 sensors is 6 million cells, so a row is formatted by one ``%`` operation (C) whose
format gives each cell the notation of ``cell`` (``_rows``); ``cell`` stays the definition, and the tests compare
the two on every kind of float.
"""

from __future__ import annotations

import numpy as np

from agent.pipeline.resample import Grid
from agent.pipeline.windows import format_csv_time


def cell(value: float) -> str:
    """A value's CSV text: at most 12 significant digits, the shortest text of the rounded float64 (60.0 → '60.0',
    1e-07 → '1e-07')."""
    return repr(float(f"{value:.12g}"))


def time_column(times: np.ndarray) -> list[str]:
    return [format_csv_time(int(t)) for t in times]


# How a cell is formatted. ``"%.12g" % v`` has the digits of ``cell(v)`` (a decimal of at most 12 significant
# digits is the shortest text of the float it parses to); only the notation can differ, so each cell gets one of:
_PLAIN = 0  # ",%.12g": the same text as cell(v) (a decimal, "inf", or an exponent below -4 or from 16)
_EMPTY = 1  # NaN: ",%.0s" writes nothing (the empty cell)
_WHOLE = 2  # an exact integer below 1e12: ",%.1f" ("60.0", "-0.0"), where %.12g would drop the ".0"
_ODD = 3  # cell(v) itself, passed as text: a value that rounds to an integer (2.99999999999996 → "3.0"), from
#           1e12 (%.12g turns scientific at 1e12, repr at 1e16), or near the subnormals (fewer digits of precision)
_FORMATS = (",%.12g", ",%.0s", ",%.1f", ",%s")


def _cell_kinds(block: np.ndarray) -> np.ndarray:
    """The format of each cell of ``block`` (uint8, same shape). ``_ODD`` is conservative: any value that might
    round to an integer at 12 significant digits (within 1e-11 of one, relatively) is formatted by ``cell``."""
    with np.errstate(invalid="ignore"):
        size = np.abs(block)
        whole = block == np.rint(block)
        kinds = np.full(block.shape, _PLAIN, dtype=np.uint8)
        kinds[(np.abs(block - np.rint(block)) <= size * 1e-11) | (size >= 1e12 - 1) | (size < 1e-290)] = _ODD
        kinds[whole & (size < 1e12 - 1)] = _WHOLE
        kinds[np.isnan(block)] = _EMPTY
    return kinds


def _rows(times_text: list[str], block: np.ndarray) -> list[str]:
    """The data lines: one ``%`` operation (C) per row with a format made from its cells' kinds (rows of the same
    kinds share it), instead of one Python call per cell: a window at 20,000 sensors is 6 million cells."""
    kinds = _cell_kinds(block)
    formats: dict[bytes, tuple[str, list[int]]] = {}
    lines = []
    for stamp, row, row_kinds in zip(times_text, block.tolist(), kinds, strict=True):
        key = row_kinds.tobytes()
        made = formats.get(key)
        if made is None:
            made = formats[key] = ("%s" + "".join([_FORMATS[k] for k in key]),
                                   [j for j, k in enumerate(key) if k == _ODD])
        row_format, odd = made
        for j in odd:
            row[j] = cell(row[j])
        lines.append(row_format % (stamp, *row))
    return lines


def component_csv(grid: Grid, sensors: list[str], timestamp_column: str = "Timestamp",
                  times_text: list[str] | None = None) -> bytes | None:
    """CSV bytes for ``sensors`` (a component, schema order), or None when none of them has any value."""
    idx = [grid.sensors.index(s) for s in sensors]
    block = grid.values[:, idx]
    if not np.isfinite(block).any():
        return None
    times_text = times_text if times_text is not None else time_column(grid.times)
    # each cell at most 12 significant digits (cell): a resampled mean's float noise is not data
    lines = [",".join([timestamp_column, *sensors]), *_rows(times_text, block), ""]
    return "\n".join(lines).encode()
