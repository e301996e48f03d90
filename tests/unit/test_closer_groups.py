"""A window closed group by group (agent.pipeline.groups, agent.pipeline.windowread) writes exactly what the
whole-window close wrote before it: the same file bytes, progress (carry, last_ts), kept-window digests, events
and log figures.

``closer_groups_golden.json`` holds what the whole-window close (the version before group-by-group closing)
wrote for ``scenario``: readings of several components (a sensor in two of them, markers, held and filled
values, min/max/last/mean, a sensor in no component) spread over a segment of the previous format (Arrow), an
earlier run's segment of one record per flush ending torn, and the current run's flushes; then a backfilled
reading re-renders a kept window. Regenerate it only for an intended change of output:
``PYTHONPATH=. python tests/unit/test_closer_groups.py > tests/unit/closer_groups_golden.json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agent.core.model import Reading, validity_end
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.columns import Columns
from agent.pipeline.outbox import Outbox
from agent.pipeline.reclose import Keeper
from agent.pipeline.spool import Spool

GOLDEN = Path(__file__).with_name("closer_groups_golden.json")
FREQ, RATE = 300, 10
COMPONENTS = {"c1": ["a", "b"], "c2": ["b", "c", "d"], "c3": ["e"], "c4": ["f", "g"]}
SENSORS = ["a", "b", "c", "d", "e", "f", "g", "zz"]  # zz: in no component


def _readings(rng: np.random.Generator, lo: float, hi: float, n: int) -> list[Reading]:
    ts = np.sort(rng.uniform(lo, hi, n)).round(3)
    names = rng.choice(SENSORS, n)
    values = rng.normal(50.0, 10.0, n) * 1.000000001
    out = [Reading(str(s), float(v), float(t)) for s, v, t in zip(names, values, ts, strict=True)]
    out[n // 3] = Reading(out[n // 3].sensor, out[n // 3].value, out[n // 3 - 1].ts)  # a timestamp tie
    return out


def scenario(tmp: Path, writer_groups: dict[str, int] | None = None) -> dict:
    """Write the readings, close every window due at 1,300 s, backfill one reading; return what was written.
    ``writer_groups``: groups the current run's spool writes with (another configuration than the closer's)."""
    rng = np.random.default_rng(25)
    spool_dir = tmp / "spool"
    spool_dir.mkdir(parents=True)
    import pyarrow as pa

    legacy = _readings(rng, 0.5, 120.0, 40)
    table = pa.table({"sensor": [r.sensor for r in legacy], "ts": [r.ts for r in legacy],
                      "value": [r.value for r in legacy]})
    with pa.OSFile(str(spool_dir / "300-0000legacy.arrows"), "wb") as fh, \
            pa.ipc.new_stream(fh, table.schema) as writer:
        writer.write_table(table)
    earlier = Spool(spool_dir, FREQ)  # an earlier run: one record per flush and window, as before groups
    for k in range(3):
        earlier.append(_readings(rng, 100.0 + 60 * k, 160.0 + 60 * k, 30))
        earlier.flush()
    earlier.close()
    (segment,) = [p for p in spool_dir.glob("300-*.l4es")]
    segment.write_bytes(segment.read_bytes()[:-7])  # torn: the last flush was being written at the crash
    segment.rename(spool_dir / f"300-{'0' * 12}-000001.l4es")  # sorts before the current run's segments

    plan = WindowPlan("a", FREQ, RATE, COMPONENTS, {"c": "max", "d": "last", "f": "min"}, 2, 0, "_",
                      "yyyyMMddHHmmss", 0, holds={"a": math.inf, "e": 30.0, "b": 45.0})
    spool = Spool(spool_dir, FREQ)
    outbox = Outbox(tmp / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp / "progress.json")
    keeper = Keeper(tmp / "kept", closer, lambda window: True, 1e9, lambda: 1300.0)
    if writer_groups is not None:
        spool.set_groups(writer_groups)
    for k in range(10):
        batch = _readings(rng, 150.0 + 45 * k, 195.0 + 45 * k, 25)
        if k == 4:
            batch.append(validity_end("a", 340.0))
            batch.append(validity_end("zz", 341.0))
        if k == 6:
            batch.append(validity_end("b", 455.5))
        spool.append(batch)
        spool.flush()
    spool.append([Reading("a", 7.25, 590.0)])  # held without limit into the windows with no reading after it
    spool.flush()

    records: list[str] = []
    handler = _Collect(records)
    logger = logging.getLogger("l4e.pipeline")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        events = closer.close_due(1300.0)
        files = {e.name: e.path.read_text() for e in outbox.entries()}
        # a backfilled reading for the written window (300, 600]: the kept window is rendered again
        keeper.reclose({600: Columns.from_readings([Reading("c", 99.5, 455.0), Reading("e", 1.5, 470.0)])})
        keeper.render_dirty(idle=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return {
        "files": files,
        "rewritten": {e.name: e.path.read_text() for e in outbox.entries() if files.get(e.name) != e.path.read_text()},
        "progress": json.loads((tmp / "progress.json").read_text()),
        "kept": {str(end): json.loads((tmp / "kept" / str(end) / "meta.json").read_text())
                 for end in keeper.windows()},
        "events": [[e.kind, e.subject, e.message, e.details] for e in events],
        "stats": [closer.stats.windows_written, closer.stats.files_written, closer.stats.windows_missing],
        "log": records,
        "torn_segments": spool.torn_segments,
    }


class _Collect(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(f"{record.levelname} {record.getMessage()}")


def _jsonable(data: dict) -> dict:
    return json.loads(json.dumps(data))


@pytest.mark.parametrize(("limit", "whole_when_mixed"), [(1, 2.0), (3, 2.0), (500, 2.0), (1, 0.0), (3, 0.25)])
def test_group_by_group_close_writes_what_the_whole_window_close_wrote(tmp_path, monkeypatch, limit,
                                                                        whole_when_mixed):
    """limit 1: a group per component (the shared sensor b counts in c2, another group than c1); 3: c1 | c2 |
    c3+c4; 500: one group. The earlier run's records and the Arrow segment mix every group; they are filtered
    by name group by group (whole_when_mixed 2.0: never read whole), or the window is read whole once (0.0)."""
    import agent.pipeline.closer as closer
    import agent.pipeline.groups as groups

    monkeypatch.setattr(groups, "GROUP_SENSORS", limit)
    monkeypatch.setattr(closer, "WHOLE_WHEN_MIXED", whole_when_mixed)
    got = _jsonable(scenario(tmp_path))
    expected = json.loads(GOLDEN.read_text())
    assert got["files"] == expected["files"]  # every byte of every CSV
    assert got == expected
    assert len(got["files"]) >= 12 and got["rewritten"]  # the scenario writes files and rewrites one


def test_records_written_with_other_groups_are_read_by_name(tmp_path, monkeypatch):
    """A configuration changed between writing and closing: the current run's records are cut another way
    (one group holds a, e and zz; another b and f) and still give the same window."""
    import agent.pipeline.closer as closer

    monkeypatch.setattr(closer, "WHOLE_WHEN_MIXED", 2.0)  # filtered by name, not read whole
    got = _jsonable(scenario(tmp_path, writer_groups={"a": 0, "e": 0, "zz": 0, "b": 1, "f": 1}))
    assert got == json.loads(GOLDEN.read_text())


def test_a_flush_writes_one_record_per_group(tmp_path):
    """The spool cuts each flush of a window into records per group (sensors in no group: one more record),
    each naming only its own sensors, and reads them back in append order."""
    spool = Spool(tmp_path, FREQ)
    spool.set_groups({"a": 0, "b": 1, "c": 1})
    batch = [Reading("c", 1.0, 10.0), Reading("zz", 2.0, 11.0), Reading("a", 3.0, 12.0), Reading("c", 4.0, 13.0),
             Reading("b", 5.0, 14.0)]
    spool.append(batch)
    spool.flush()
    from agent.pipeline.columns import open_segment, scan_records

    (path,) = tmp_path.glob("300-*.l4es")
    with open_segment(path) as fh:
        scan = scan_records(fh)
    assert scan.good == 3 and not scan.torn
    assert [[scan.names[i] for i in scan.tables[t].tolist()] for t in scan.records[2::3]] == [["zz"], ["a"],
                                                                                               ["b", "c"]]
    assert spool.read(300).to_pydict() == {"sensor": ["zz", "a", "c", "c", "b"], "ts": [11.0, 12.0, 10.0, 13.0, 14.0],
                                           "value": [2.0, 3.0, 1.0, 4.0, 5.0]}
    with spool.open_window(300) as window:
        part = window.select(["c", "a"])
        assert part.to_pydict() == {"sensor": ["a", "c", "c"], "ts": [12.0, 10.0, 13.0], "value": [3.0, 1.0, 4.0]}
        assert window.select_others({"a", "b", "c"}).to_pydict() == {"sensor": ["zz"], "ts": [11.0],
                                                                      "value": [2.0]}


def test_the_cached_cut_writes_the_records_split_writes():
    """GroupCut (a names table cut once, used while flushes repeat it) gives byte for byte the records of
    Columns.split + encode: for a flush of every sensor (sorted, as the spool makes it) and for a window's part
    of a flush in which some sensors have no reading."""
    from agent.pipeline.columns import GroupCut, encode

    rng = np.random.default_rng(3)
    names = sorted(f"s{i:03d}" for i in range(40))
    readings = [Reading(str(s), float(v), float(t)) for s, v, t in
                zip([*names, *rng.choice(names, 200)], rng.normal(size=240), rng.uniform(0, 600, 240), strict=True)]
    cols = Columns.from_readings(readings)
    key = np.array([-1 if i % 9 == 0 else i % 4 for i in range(len(cols.names))], dtype=np.int64)
    cut = GroupCut(cols.names, key)
    assert cut.records(cols) == [encode(p) for _, p in cols.split(key)]
    assert len(cut.records(cols)) == 5
    part = cols.filter(cols.ts <= 300)
    assert 0 < len(set(part.code.tolist())) < len(names)
    assert cut.records(part) == [encode(p) for _, p in part.split(key)]


def test_a_segment_failing_after_the_first_pass_stops_the_window(tmp_path, monkeypatch):
    """The first pass read the segment; a read of a group's records then fails (EIO): nothing is acknowledged,
    the progress does not move, and the window is written whole when the disk answers again."""
    import errno

    import agent.pipeline.windowread as windowread

    plan = WindowPlan("a", FREQ, 60, {"c1": ["a"], "c2": ["b"]}, {}, 0, 0, "_", "EPOCH", 0)
    spool = Spool(tmp_path / "spool", FREQ)
    outbox = Outbox(tmp_path / "outbox")
    import agent.pipeline.groups as groups

    monkeypatch.setattr(groups, "GROUP_SENSORS", 1)
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    spool.append([Reading("a", 1.0, 30.0), Reading("b", 2.0, 40.0)])
    spool.flush()
    real = windowread.read_codes
    calls = []

    def failing(fh, offset, n):
        calls.append(offset)
        if len(calls) == 2:  # the second group's record
            raise OSError(errno.EIO, "Input/output error")
        return real(fh, offset, n)

    monkeypatch.setattr(windowread, "read_codes", failing)
    assert closer.close_due(400.0) == []
    assert closer.last_written is None and spool.windows() == [300] and not (tmp_path / "progress.json").exists()
    assert spool.read_errors == {"EIO": 1} and spool.torn_segments == 0
    # the first group's file may be in the outbox already; the retry writes it again with the same bytes
    assert [e.name for e in outbox.entries()] == ["c1_0.csv"]
    first = outbox.entries()[0].path.read_bytes()
    monkeypatch.setattr(windowread, "read_codes", real)
    closer._read_retry_at = 0.0
    assert [e.kind for e in closer.close_due(400.0)] == ["window_written", "window_written"]
    assert closer.last_written == 300 and spool.windows() == []
    assert [e.name for e in outbox.entries()] == ["c1_0.csv", "c2_0.csv"]
    assert outbox.entries()[0].path.read_bytes() == first


def test_a_close_holds_one_group_of_readings_not_the_window(tmp_path):
    """3,000 sensors in components of 100, 60 rows, two readings per cell: the close's peak allocation
    (tracemalloc; what it keeps besides the window's readings: its index, one group, one component's grid, the
    progress file) stays well below the window's readings as one Columns (what the close read before it went
    group by group: about twice that at its peak)."""
    import tracemalloc

    sensors = [f"tag{i:05d}" for i in range(3000)]
    components = {f"c{k:02d}": sensors[k:k + 100] for k in range(0, len(sensors), 100)}
    plan = WindowPlan("a", FREQ, 5, components, {}, 2, 0, "_", "EPOCH", 0)
    spool = Spool(tmp_path / "spool", FREQ)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    for k in range(120):
        spool.append([Reading(s, float(i % 7) + k, 2.5 * k + 1.0) for i, s in enumerate(sensors)])
        spool.flush()
    whole = spool.read(FREQ).nbytes
    assert whole > 7_000_000
    tracemalloc.start()
    try:
        events = closer.close_due(FREQ + 1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.kind for e in events] == ["window_written"] * 30
    assert peak < whole / 2, (peak, whole)


if __name__ == "__main__":  # print the golden data (run with the version whose output is the reference)
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(_jsonable(scenario(Path(tmp))), sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
