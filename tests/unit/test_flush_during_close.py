"""Readings that arrive while a long window close runs are flushed between its groups (WindowCloser.between_groups,
Spool.flush keep_upto) instead of piling up in memory, and nothing changes for the data: the window being closed
is written from what was on disk when it opened, its late readings are counted as late, a late validity-end
marker still ends the held value in the next window, and the next window's readings are on disk at once."""

from __future__ import annotations

import csv
import io
import math

from agent.core.model import Reading, validity_end
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool

FREQ, RATE = 300, 10
COMPONENTS = {"c1": ["a"], "c2": ["b"], "c3": ["c"], "c4": ["d"]}


def _column(text: str, sensor: str) -> list[str]:
    return [row[sensor] for row in csv.DictReader(io.StringIO(text))]


def test_readings_flushed_between_groups_keep_their_meaning(tmp_path, monkeypatch):
    import agent.pipeline.groups as groups

    monkeypatch.setattr(groups, "GROUP_SENSORS", 1)  # a group per component: three pauses in a close
    plan = WindowPlan("a", FREQ, RATE, COMPONENTS, {}, 2, 0, "_", "yyyyMMddHHmmss", 0, holds={"b": math.inf})
    spool = Spool(tmp_path / "spool", FREQ)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    spool.append([Reading(s, float(k), t) for t in range(5, 300, 10) for k, s in enumerate("abcd", start=1)])
    spool.flush()

    arrivals = [
        [Reading("a", 99.0, 299.0)],  # of the window being closed: late
        [Reading("a", 5.0, 400.0)],  # of the next window
        [validity_end("b", 290.0)],  # b's source was lost at 290, noticed only now: b must not hold after it
    ]
    on_disk_during_close = []

    def between(closing_end: int) -> None:
        assert closing_end == 300
        if arrivals:
            spool.append(arrivals.pop(0))
            spool.flush(keep_upto=closing_end)
            on_disk_during_close.append(spool.read(600).num_rows)

    closer.between_groups = between
    closer.close_due(320.0)
    assert arrivals == [] and on_disk_during_close == [0, 1, 1]  # the next window's reading written at once
    first = {e.name: e.path.read_text() for e in outbox.entries()}
    assert _column(first["c1_19700101000000.csv"], "a") == ["1.0"] * 30
    assert _column(first["c2_19700101000000.csv"], "b") == ["2.0"] * 30
    assert spool.buffered() == 2  # kept back in memory, as columns, until the window was acknowledged
    assert spool.late == 0

    spool.flush()  # the next flush: the window is written, so the reading of it is late; the marker moves on
    assert spool.late == 1 and spool.dropped_readings["late"] == 1
    assert spool.buffered() == 0
    closer.between_groups = None
    closer.close_due(620.0)
    second = {e.name: e.path.read_text() for e in outbox.entries() if e.window_end == 600}
    a = _column(second["c1_19700101000500.csv"], "a")
    # a: two rows filled (fill limit 2) after the previous window's last reading, empty up to 400 s (the 10th row
    # of (300, 600]), then 5.0 and two rows filled after it
    assert a == ["1.0"] * 2 + [""] * 7 + ["5.0"] * 3 + [""] * 18
    # b (held without limit) ended at 290: only the fill rule's two rows; without the marker it would hold all 30
    assert _column(second["c2_19700101000500.csv"], "b") == ["2.0"] * 2 + [""] * 28


def test_kept_back_readings_are_written_when_the_spool_closes(tmp_path):
    """A drain that stops right after a close still writes what was kept back (Spool.close flushes it)."""
    spool = Spool(tmp_path / "spool", FREQ)
    spool.append([Reading("a", 1.0, 10.0), Reading("a", 2.0, 310.0), validity_end("a", 320.0)])
    spool.flush(keep_upto=300)
    assert spool.buffered() == 1  # the reading of (0, 300]; the rest was written
    spool.close()
    again = Spool(tmp_path / "spool", FREQ)
    assert again.read(300).num_rows == 1 and again.read(600).num_rows == 2
