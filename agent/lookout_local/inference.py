"""One inference execution: a scheduler's window (start, end] → results.jsonl or a FailedReason.

Per the README's Decisions: for each schema component, input files are found by name (<Prefix><component>
<delimiter><timestamp>.csv directly under the prefix) with a name timestamp in [start − F, end + F] (the
range the real service lists, README, L4E contract §1); only rows with timestamps in (start, end] are used,
resampled to the model's rate (label right, closed right), missing grid points filled from the nearest
earlier (else later) point of the same window. Results go to ``results_key(OutputPrefix, window)``.

The detector's score of a row also uses the rows before it (smoothing and its recent-past reference,
``Detector.context_rows``): the files of the windows before this one are read for that history, the grid points
in (start − context, start], filled forward only. History that is not there (the first window, a gap) is simply
shorter; it never fails the execution, and its rows are never scored or written.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agent.core.model import Window
from agent.lookout_local.ingest import read_component_csv
from agent.lookout_local.modeling import TrainedModel
from agent.lookout_local.schema import Component
from agent.lookout_local.stores import location
from agent.lookout_local.window_grid import fill_both_ways, fill_forward, grid_means
from agent.pipeline.windows import format_name_timestamp, grid_points, parse_object_name, results_key

log = logging.getLogger(__name__)


class _ParsedFiles:
    """LRU of parsed input files keyed by (component schema, content digest). Each file is read by three
    consecutive windows (names in [start − F, end + F]); parsing, not reading, is what costs, and a digest
    key stays correct when the agent rewrites a key (it would then write the same bytes anyway, rule 7)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, data: bytes, comp: Component) -> pd.DataFrame:
        key = (comp, hashlib.blake2b(data, digest_size=16).digest())
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        frame = read_component_csv(data, comp)
        with self._lock:
            self._items[key] = frame
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return frame


_PARSED = _ParsedFiles()


class InferenceFailed(Exception):
    """The execution fails with this message as FailedReason."""


@dataclass(frozen=True)
class InputConfig:
    """Where and how a scheduler finds its input (DataInputConfiguration, resolved with defaults)."""

    bucket: str
    prefix: str
    delimiter: str
    timestamp_format: str
    offset_secs: int


def _z(ts: float) -> str:
    return pd.Timestamp(int(ts), unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_utc_minutes(ts: float) -> str:
    """``2022-03-30T10:45Z``: the minute-precision form the service's second FailedReason uses."""
    return pd.Timestamp(int(ts), unit="s").strftime("%Y-%m-%dT%H:%MZ")


def find_files(store, cfg: InputConfig, component: str, window: Window, frequency: int,
               history: int = 0) -> list[str]:
    """Keys of ``component``'s files whose name timestamp lies in [start − F − history, end + F], oldest first,
    except that the window's own file (named with its start) comes last: where files overlap (the agent writes
    [start, end], so a window's end row is also the next file's start row) its rows win."""
    return [key for _start, key in find_named_files(store, cfg, component, window, frequency, history)]


def find_named_files(store, cfg: InputConfig, component: str, window: Window, frequency: int,
                     history: int = 0) -> list[tuple[int, str]]:
    """``find_files`` with each key's name timestamp: (start, key), in the same order."""
    head = f"{cfg.prefix}{component}{cfg.delimiter}"
    low, high = window.start - frequency - history, window.end + frequency
    # Names sort by time within a component (fixed-width calendar formats; EPOCH while it has 10 digits), so
    # the listing starts just before the range and stops after it: an execution costs the same in the first
    # week and after a year of files under the prefix.
    ordered = cfg.timestamp_format != "EPOCH"
    before = format_name_timestamp(low - 60, cfg.timestamp_format, cfg.offset_secs) if low > 60 else None
    found = []
    for key in store.list(head, start_after=head + before if before else None):
        name = key[len(cfg.prefix):]
        if "/" in name:
            continue  # files sit directly under the prefix (rule 3)
        start = parse_object_name(name, component, cfg.delimiter, cfg.timestamp_format, cfg.offset_secs)
        if start is not None and low <= start <= high:
            found.append((start, key))
        elif start is not None and start > high and ordered:
            break
    found.sort(key=lambda item: (item[0] == window.start, item[0], item[1]))
    return found


def missing_file_reason(cfg: InputConfig, component: str, window: Window, frequency: int, store=None) -> str:
    """The FailedReason of a window without a file for ``component`` (the L4E service's wording; the
    searched range names the bucket once, where the real service's text doubled the prefix). With a folder
    ``store`` the range names the real folder, not ``s3://``."""
    def name(ts: int) -> str:
        return location(store, cfg.bucket, f"{cfg.prefix}{component}{cfg.delimiter}"
                        f"{format_name_timestamp(ts, cfg.timestamp_format, cfg.offset_secs)}")
    return (f"Could not find data file for sensor {component} within expected range of ({_z(window.start)}, "
            f"{_z(window.end)}]. Please ensure data is present for all sensors of the machine under prefix "
            f"'{name(window.start - frequency)}' ~ '{name(window.end + frequency)}'")


def no_rows_reason(component: str, window: Window, seen: tuple[float, float] | None) -> str:
    """FailedReason when files exist but none of their rows fall in (start, end]."""
    searched = f" while searching in the given data range of ({iso_utc_minutes(seen[0])}, " \
               f"{iso_utc_minutes(seen[1])})" if seen else ""
    return (f"Could not find data for sensor {component} within expected time range of ({_z(window.start)}, "
            f"{_z(window.end)}]{searched}. Please ensure data is present for all sensors of the machine and "
            "ensure there is data within the expected time range.")


def _history_secs(context_rows: int, rate: int, frequency: int) -> int:
    """Seconds of history before a window the detector's context needs, rounded up to whole windows."""
    secs = context_rows * rate
    return -(-secs // frequency) * frequency if secs else 0


def window_frame(store, cfg: InputConfig, components: list[Component], window: Window, frequency: int,
                 rate: int, context_rows: int = 0) -> tuple[pd.DataFrame, int]:
    """(rows, context): the window's resampled rows, index = the grid points in (start − context × rate, end],
    columns ``component\\sensor``; the first ``context`` rows are history (filled forward only, empty where
    there was none), the rest every grid point in (start, end] (filled both ways, as before).
    Raises InferenceFailed with the service's wording when a component has no file or no row in the window."""
    grid_s = np.asarray(grid_points(window, rate), dtype=np.int64)
    history_s = np.asarray(grid_s[0] - rate * np.arange(context_rows, 0, -1), dtype=np.int64)
    history = _history_secs(context_rows, rate, frequency)
    parts, past_parts, columns = [], [], []
    for comp in components:
        named = find_named_files(store, cfg, comp.name, window, frequency, history)
        keys = [key for _start, key in named]
        # the files the window itself needs (named in [start − F, end + F]); the others are history only
        in_range = {key for start, key in named if start >= window.start - frequency}
        if not in_range:
            raise InferenceFailed(missing_file_reason(cfg, comp.name, window, frequency, store))
        frames, read, problems = [], [], []
        for key in keys:
            try:
                frames.append(_PARSED.parse(store.get(key), comp))
                read.append(key)
            except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as exc:
                log.info("skipping unreadable input %s: %s", location(store, cfg.bucket, key), exc)
                if key in in_range:
                    problems.append(f"{location(store, cfg.bucket, key)}: {exc}")
        if not frames:
            # local wording (the real service's text for this case is not documented)
            raise InferenceFailed(f"Could not read any data file for sensor {comp.name} within expected range of "
                                  f"({_z(window.start)}, {_z(window.end)}]: {'; '.join(problems)}")
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["timestamp"])
        secs = rows["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9 if len(rows) else np.array([])
        in_window = rows[(secs > window.start) & (secs <= window.end)]
        if in_window.empty:
            near = secs[np.concatenate([np.full(len(f), k in in_range) for k, f in zip(read, frames, strict=True)])]
            seen = (float(near.min()), float(near.max())) if len(near) else None
            raise InferenceFailed(no_rows_reason(comp.name, window, seen))
        sensors = list(comp.sensors)
        in_window = in_window.sort_values("timestamp", kind="stable").drop_duplicates("timestamp", keep="last")
        # modeling.resample + join + reindex + ffill/bfill, in numpy (agent.lookout_local.window_grid)
        ts_ns = in_window["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        parts.append(fill_both_ways(grid_means(ts_ns, in_window[sensors].to_numpy(dtype=np.float64), grid_s, rate)))
        if context_rows:
            past = rows[(secs > window.start - context_rows * rate) & (secs <= window.start)]
            past = past.sort_values("timestamp", kind="stable").drop_duplicates("timestamp", keep="last")
            past_ns = past["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
            past_parts.append(fill_forward(grid_means(past_ns, past[sensors].to_numpy(dtype=np.float64),
                                                      history_s, rate)))
        columns += [f"{comp.name}\\{sensor}" for sensor in comp.sensors]
    values = np.hstack(parts)
    if context_rows:
        values = np.vstack([np.hstack(past_parts), values])
    grid = pd.DatetimeIndex(pd.to_datetime(np.concatenate([history_s, grid_s]), unit="s"))
    return pd.DataFrame(values, index=grid, columns=columns), context_rows


def run_window(store, out_store, cfg: InputConfig, out_prefix: str, components: list[Component],
               model: TrainedModel, window: Window, frequency: int) -> tuple[str, bool]:
    """Infer one window and write its results; returns (results key, any anomalous line).
    Raises InferenceFailed for data problems (the execution FAILS with that reason)."""
    frame, context = window_frame(store, cfg, components, window, frequency, model.rate,
                                  model.detector.context_rows)
    body, anomalous = model.results_jsonl(frame, context)
    key = results_key(out_prefix, window)
    out_store.put(key, body)
    return key, anomalous
