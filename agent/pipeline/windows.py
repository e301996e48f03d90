"""Window math and object names, per README, Decisions rules 1–3. Pure functions, no I/O, no clock.

All instants are Unix seconds (UTC). Grids are aligned to the top of the UTC hour: every allowed upload
frequency and sampling rate divides one hour or is one hour, and Unix time 0 is on
every such grid, so ``floor(t / step) * step`` is the grid point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime

from agent.core.model import Window

UPLOAD_FREQUENCIES = {"PT5M": 300, "PT10M": 600, "PT15M": 900, "PT30M": 1800, "PT1H": 3600}
# botocore TargetSamplingRate enum
SAMPLING_RATES = {
    "PT1S": 1, "PT5S": 5, "PT10S": 10, "PT15S": 15, "PT30S": 30, "PT1M": 60, "PT5M": 300,
    "PT10M": 600, "PT15M": 900, "PT30M": 1800, "PT1H": 3600,
}
TIMESTAMP_FORMATS = ("EPOCH", "yyyy-MM-dd-HH-mm-ss", "yyyyMMddHHmmss")
DELIMITERS = ("-", "_", " ", "")
_STRFTIME = {"yyyy-MM-dd-HH-mm-ss": "%Y-%m-%d-%H-%M-%S", "yyyyMMddHHmmss": "%Y%m%d%H%M%S"}
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
CSV_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"  # rule 4: UTC, no zone suffix, as AWS's samples write


def parse_offset(text: str) -> int:
    """``+05:30`` → 19800 seconds. Raises ValueError unless it matches ``^(\\+|\\-)[0-9]{2}\\:[0-9]{2}$``."""
    m = _OFFSET.match(text)
    if not m:
        raise ValueError(f"time zone offset {text!r} must look like +HH:MM or -HH:MM")
    sign = 1 if m.group(1) == "+" else -1
    hours, minutes = int(m.group(2)), int(m.group(3))
    if minutes >= 60:
        raise ValueError(f"time zone offset {text!r}: minutes must be < 60")
    return sign * (hours * 3600 + minutes * 60)


def grid_point(ts: float, rate: int) -> int:
    """The grid point (label right, closed right) a reading at ``ts`` belongs to: t in (g − rate, g] → g."""
    return math.ceil(ts / rate) * rate


def window_end_for(ts: float, frequency: int) -> int:
    """End of the window (start, end] that contains ``ts``. Equal to the end of the window of its grid point
    whenever the sampling rate divides the frequency."""
    return math.ceil(ts / frequency) * frequency


def window_ending(end: int, frequency: int) -> Window:
    if end % frequency:
        raise ValueError(f"{end} is not on the {frequency}s grid")
    return Window(end - frequency, end)


def window_containing(ts: float, frequency: int) -> Window:
    return window_ending(window_end_for(ts, frequency), frequency)


def windows_between(after_end: int, up_to_end: int, frequency: int) -> Iterator[Window]:
    """Windows with end in (after_end, up_to_end], oldest first."""
    end = (after_end // frequency + 1) * frequency
    while end <= up_to_end:
        yield Window(end - frequency, end)
        end += frequency


def grid_points(window: Window, rate: int) -> list[int]:
    """Grid points of a window: (start, end] stepped by ``rate``."""
    return list(range(window.start + rate, window.end + 1, rate))


def wake_time(window: Window, delay_offset_minutes: int) -> int:
    """When the L4E scheduler runs inference for ``window`` (rule 1): end + D. The file must be there before."""
    return window.end + 60 * delay_offset_minutes


def format_name_timestamp(start: int, timestamp_format: str, offset_secs: int = 0) -> str:
    """The timestamp part of an input file name (rule 3). Calendar formats are shifted by the time-zone
    offset; EPOCH is the Unix seconds of the UTC window start, unshifted (an assumption, see decisions)."""
    if timestamp_format == "EPOCH":
        return str(int(start))
    try:
        pattern = _STRFTIME[timestamp_format]
    except KeyError:
        raise ValueError(f"timestamp format {timestamp_format!r}; allowed: {', '.join(TIMESTAMP_FORMATS)}") from None
    return datetime.fromtimestamp(start + offset_secs, UTC).strftime(pattern)


def parse_name_timestamp(text: str, timestamp_format: str, offset_secs: int = 0) -> int | None:
    """Inverse of format_name_timestamp: the UTC window start, or None when ``text`` is not of that format."""
    try:
        if timestamp_format == "EPOCH":
            return int(text) if text.isdigit() else None
        dt = datetime.strptime(text, _STRFTIME[timestamp_format]).replace(tzinfo=UTC)
    except (ValueError, KeyError):
        return None
    if format_name_timestamp(int(dt.timestamp()) - offset_secs, timestamp_format, offset_secs) != text:
        return None  # strptime is lenient about field widths; names must round-trip exactly
    return int(dt.timestamp()) - offset_secs


def object_name(component: str, delimiter: str, start: int, timestamp_format: str, offset_secs: int = 0) -> str:
    """``<ComponentName><Delimiter><Timestamp>.csv`` for the window starting at ``start`` (rule 3)."""
    return f"{component}{delimiter}{format_name_timestamp(start, timestamp_format, offset_secs)}.csv"


def object_key(prefix: str, component: str, delimiter: str, start: int, timestamp_format: str,
               offset_secs: int = 0) -> str:
    """The store key: a function of (prefix, component, window) only (rule 7)."""
    return prefix + object_name(component, delimiter, start, timestamp_format, offset_secs)


def parse_object_name(name: str, component: str, delimiter: str, timestamp_format: str,
                      offset_secs: int = 0) -> int | None:
    """Window start encoded in an input file name for ``component``, or None when the name is not one."""
    head = component + delimiter
    if not (name.startswith(head) and name.endswith(".csv")):
        return None
    return parse_name_timestamp(name[len(head):-4], timestamp_format, offset_secs)


def results_key(output_prefix: str, window: Window) -> str:
    """``<OutputPrefix><window start UTC as yyyy-MM-ddTHH:mm:ssZ>/results.jsonl`` (rule 6)."""
    return f"{output_prefix}{datetime.fromtimestamp(window.start, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}/results.jsonl"


def format_csv_time(ts: int | float) -> str:
    """A grid instant as written inside CSV files and results: ``2022-05-13T12:10:00.000000`` (UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime(CSV_TIME_FORMAT)


def iso_window(window: Window) -> str:
    """``(2022-05-13T12:10:00Z, 2022-05-13T12:15:00Z]`` — the form L4E's FailedReason texts use."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (f"({datetime.fromtimestamp(window.start, UTC).strftime(fmt)}, "
            f"{datetime.fromtimestamp(window.end, UTC).strftime(fmt)}]")
