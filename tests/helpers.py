"""Helpers shared by integration and fault tests: history generation and an independent reference resampler."""

from __future__ import annotations

import csv
import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

T0 = pd.Timestamp("2026-01-01T00:00:00Z")
# CSV cells carry 12 significant digits (agent.pipeline.csvfile): a cell is within half a unit of the 12th
# digit of the float64 it stands for
CSV_REL_TOL = 1e-11


def write_history(path: Path, minutes: int, step_secs: int = 10, seed: int = 3,
                  sensors: tuple[str, ...] = ("flow", "pressure", "temp")) -> pd.DataFrame:
    """A historian CSV (timestamp + one column per sensor) starting at T0 + step; returns it as a frame."""
    rng = np.random.default_rng(seed)
    n = minutes * 60 // step_secs
    index = T0 + pd.to_timedelta(np.arange(1, n + 1) * step_secs, unit="s")
    data = {s: np.round(rng.normal(10 * (i + 1), 1.0, n), 3) for i, s in enumerate(sensors)}
    frame = pd.DataFrame(data, index=index)
    frame.index.name = "Timestamp"
    out = frame.copy()
    out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path)
    return frame


def asset_file(folder: Path, input_url: str, *, sensors=("flow", "pressure", "temp"), extra: str = "",
               frequency: str = "PT5M", rate: str = "PT1M", grace: float = 5, fill_limit: int = 0,
               components: str | None = None) -> Path:
    comps = components or f'pump = {list(sensors)!r}'.replace("'", '"')
    text = textwrap.dedent(f"""\
        asset = "pump-07"
        [lookout]
        upload_frequency = "{frequency}"
        delay_offset_minutes = 2
        sampling_rate = "{rate}"
        input = "{input_url}"
        [components]
        {comps}
        [window]
        fill_limit = {fill_limit}
        grace_secs = {grace}
        [upload]
        backoff_initial_secs = 0.2
        backoff_max_secs = 1.0
        [[sources]]
        name = "history"
        kind = "replay"
        path = "history.csv"
        """) + extra
    path = folder / "asset.toml"
    path.write_text(text)
    return path


def reference_windows(frame: pd.DataFrame, rate_secs: int, freq_secs: int) -> dict[pd.Timestamp, pd.DataFrame]:
    """Rule 2 computed independently with pandas: mean over (t − rate, t], label right; split by window."""
    grid = frame.resample(f"{rate_secs}s", label="right", closed="right").mean()
    out = {}
    for end, part in grid.groupby(grid.index.ceil(f"{freq_secs}s")):
        out[end - pd.Timedelta(seconds=freq_secs)] = part
    return out


def parse_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(data.decode())))
    return rows[0], rows[1:]


LOGFMT = re.compile(r'^ts=\S+ level=(debug|info|warning|error|critical) logger=\S+ msg=("(\\.|[^"\\])*"|\S*)( |$)')


def logfmt_events(stderr: str) -> list[str]:
    """The stderr lines, each checked to be one logfmt event; returns the msg fields in order."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert LOGFMT.match(line), f"not one logfmt event: {line!r}\n{stderr}"
    return [LOGFMT.match(line).group(2).strip('"') for line in lines]


def assert_once(events: list[str], *texts: str) -> None:
    """Each text is in exactly one event: an event printed by two handlers would appear twice."""
    for text in texts:
        hits = [e for e in events if text in e]
        assert len(hits) == 1, (text, events)
