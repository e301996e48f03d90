"""Helpers shared by integration and fault tests: history generation, an independent reference resampler, the
TOML fragments many assets repeat, a real ``l4e-agent run`` process and bounded waits on it."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]  # the repository: ``python -m agent`` runs this checkout
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


def asset_header(asset: str, input_url: str, components: str, *, frequency: str = "PT5M", rate: str = "PT1M",
                 delay_offset_minutes: int = 2) -> str:
    """The top of an asset file: its name, the [lookout] table (PT5M windows of a PT1M grid by default) and the
    [components] table, ``components`` being its TOML lines (e.g. ``pump = ["flow"]``)."""
    return textwrap.dedent(f"""\
        asset = "{asset}"
        [lookout]
        upload_frequency = "{frequency}"
        delay_offset_minutes = {delay_offset_minutes}
        sampling_rate = "{rate}"
        input = "{input_url}"
        [components]
        """) + textwrap.dedent(components).strip() + "\n"


def asset_file(folder: Path, input_url: str, *, sensors=("flow", "pressure", "temp"), extra: str = "",
               frequency: str = "PT5M", rate: str = "PT1M", grace: float = 5, fill_limit: int = 0,
               components: str | None = None) -> Path:
    comps = components or f'pump = {list(sensors)!r}'.replace("'", '"')
    text = asset_header("pump-07", input_url, comps, frequency=frequency, rate=rate) + textwrap.dedent(f"""\
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


# --- TOML fragments ----------------------------------------------------------------------------------------
def journal_alarms(journal: Path, *rules: tuple[str, str], hook: str = "journal") -> str:
    """A file hook ``hook`` appending each alarm transition to ``journal`` (one JSON line each), and one
    ``[[alarms.rules]]`` per (name, kind) delivering to it."""
    text = f'[alarms.hooks.{hook}]\nkind = "file"\npath = "{journal}"\n'
    for name, kind in rules:
        text += f'[[alarms.rules]]\nname = "{name}"\nkind = "{kind}"\nhooks = ["{hook}"]\n'
    return text


def modbus_tcp_source(name: str, port: int, points: Iterable[str], *, poll_interval_ms: int = 200,
                      timeout_secs: float | None = None) -> str:
    """A ``[[sources]]`` entry polling device 1 of a Modbus TCP server on 127.0.0.1:``port``; ``points``: the
    inline tables of its points, e.g. ``{ sensor = "flow", table = "holding", address = 0, type = "float32" }``."""
    timeout = "" if timeout_secs is None else f"timeout_secs = {timeout_secs:g}\n"
    return (f'[[sources]]\nname = "{name}"\nkind = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
            f"port = {port}\npoll_interval_ms = {poll_interval_ms}\n[[sources.devices]]\ndevice_id = 1\n{timeout}"
            f"points = [ {', '.join(points)} ]\n")


# --- a real agent process and bounded waits ---------------------------------------------------------------
def start_agent(path: Path, state: Path, *, clock_start: str, speed: float, until: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m agent run path --state-dir state`` on a clock starting at ``clock_start`` (ISO 8601) running
    ``speed`` times faster than the wall, until ``until`` (ISO 8601; None: until stopped). Its stderr (the
    logfmt log) is a text pipe: read it to its end (``communicate``, ``kill_9``) so the pipe is closed."""
    argv = [sys.executable, "-m", "agent", "run", str(path), "--state-dir", str(state),
            "--clock-start", clock_start, "--speed", str(speed)]
    if until is not None:
        argv += ["--until", until]
    return subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ) if env is None else env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_9(proc: subprocess.Popen) -> str:
    """SIGKILL ``proc``; returns what it wrote to stderr (the pipe is read to its end and closed)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with proc.stderr:
        return proc.stderr.read()


def wait_for(predicate, timeout: float, *, every: float = 0.05) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` wall seconds (polled every ``every`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def assert_soon(predicate, timeout: float, what: str, *, every: float = 0.05) -> None:
    """``wait_for`` that fails the test, naming ``what`` it waited for."""
    assert wait_for(predicate, timeout, every=every), f"timed out waiting for {what}"


async def eventually(predicate, timeout: float, *, every: float = 0.05) -> bool:
    """``wait_for`` on the event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a GET; an error status with its body; (0, "") while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""
