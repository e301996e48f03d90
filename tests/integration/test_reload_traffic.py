"""SIGHUP while windows are open: 20 reloads during a live run; every window is written once and is right.

Each reload drains the running asset (its due windows are written) and starts fresh runners on the same state
directory; the fresh window closer must continue from the progress the drained one reached, neither writing a
window again nor reporting a window as missing. "Written once" is read from the agent's own DEBUG line per
written window; "right" is the store's content against rule 2 computed independently with pandas.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import threading
import time
from collections import Counter

import pandas as pd

from agent.pipeline.store import FileStore
from tests.helpers import (
    CSV_REL_TOL,
    T0,
    assert_soon,
    asset_file,
    parse_csv,
    reference_windows,
    start_agent,
    write_history,
)

SPEED = 300.0  # clock seconds per wall second: a PT5M window every second
GRACE = 5.0
RELOADS = 20
WRITTEN = re.compile(r"window \((\S+)Z, (\S+)Z\] written")


class StderrLines:
    """The agent's stderr, read by a thread so the pipe never fills; ``count(text)`` of lines seen so far."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        with stream:  # closed at its end (the agent exited): no pipe left for the garbage collector
            for line in stream:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def count(self, text: str) -> int:
        with self._lock:
            return sum(text in line for line in self.lines)

    def join(self) -> list[str]:
        self._thread.join(10)
        return self.lines


def test_twenty_reloads_during_a_live_run_write_every_window_once_and_right(tmp_path):
    frame = write_history(tmp_path / "history.csv", minutes=90, step_secs=10)
    store_dir = tmp_path / "store"
    path = asset_file(tmp_path, f"file://{store_dir}/", grace=GRACE, extra='[log]\nlevel = "debug"\n')
    agent = start_agent(path, tmp_path / "state", clock_start=T0.isoformat(), speed=SPEED)
    err = StderrLines(agent)
    try:
        assert_soon(lambda: err.count("agent started") == 1, 30, "the agent to start", every=0.02)
        anchor = json.loads((tmp_path / "state" / "clock.json").read_text())

        def wall_time_of(clock_ts: float) -> float:
            return anchor["anchor"] + (clock_ts - anchor["start"]) / anchor["speed"]

        # each reload waits for the previous one (SIGHUPs during a reload are coalesced into one). Every
        # third one is sent just before a window falls due (end + grace): the fresh runners are built while
        # the window is still open and the drain of the old ones writes it (the case that went wrong);
        # the others land anywhere in the window
        n = 0
        due = T0.timestamp() + 300 + GRACE
        while n < RELOADS:
            if n % 3 == 0:
                while wall_time_of(due) - time.time() < 0.05:  # too close: take the next window
                    due += 300
                time.sleep(max(0.0, wall_time_of(due) - time.time() - 0.003))
                due += 300
            agent.send_signal(signal.SIGHUP)
            n += 1
            assert_soon(lambda n=n: err.count("reloading: 1 asset(s)") == n, 20, f"reload {n}", every=0.02)
            time.sleep(0.05)
        assert agent.poll() is None, "the agent ended before the reloads were done"
    finally:
        agent.send_signal(signal.SIGTERM)  # drained: the due windows are written
        agent.wait(60)
    assert agent.returncode == 0
    lines = err.join()
    text = "\n".join(lines)
    assert err.count("reloading: 1 asset(s)") == RELOADS
    assert "window_missing" not in text and "no readings for" not in text, text[-3000:]
    # nothing went wrong; an upload "after its deadline" (end + 2 min of clock = 0.4 s at this speed) is only
    # the machine's load, not the reloads' doing
    trouble = [line for line in lines if ("level=error" in line or "level=warning" in line)
               and "after its deadline" not in line]
    assert not trouble, text[-3000:]

    # written once: one line per window, and the windows are the run's, in order, with no gap
    written = Counter(m.group(1) for m in map(WRITTEN.search, lines) if m)
    starts = [T0 + pd.Timedelta(minutes=5 * k) for k in range(len(written))]
    assert len(starts) >= 7  # every third reload sits at a window's due time
    assert written == Counter({s.strftime("%Y-%m-%dT%H:%M:%S"): 1 for s in starts}), written

    # right: each object holds rule 2 (mean over (t − rate, t], label right) of the history's rows
    store = FileStore(store_dir)
    keys = list(store.list())
    assert keys == [f"pump_{s.strftime('%Y%m%d%H%M%S')}.csv" for s in starts]
    reference = reference_windows(frame, 60, 300)
    for start, key in zip(starts, keys, strict=True):
        header, rows = parse_csv(store.get(key))
        assert header == ["Timestamp", "flow", "pressure", "temp"]
        expected = reference[start]
        assert len(rows) == len(expected) == 5
        for row, (stamp, values) in zip(rows, expected.iterrows(), strict=True):
            assert row[0] == stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")
            for cell, sensor in zip(row[1:], header[1:], strict=True):
                assert cell != "", (key, row)
                assert math.isclose(float(cell), values[sensor], rel_tol=CSV_REL_TOL), (key, row, sensor)
