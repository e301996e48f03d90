"""The once-a-second checks of an idle agent cost a stat, not a listing, and still never miss a file or a full
disk: the upload job skips its outbox listing only while the outbox folder is unchanged since an empty listing
(Outbox.certainly_empty), and the disk budget is measured on disk only every BUDGET_MEASURE_SECS or as soon as
the bytes written since the last measure could cross it (WindowCloser.over_budget)."""

from __future__ import annotations

import os
import time

import agent.pipeline.closer as closer_module
from agent.core.clock import ScaledClock
from agent.core.model import Reading
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore
from agent.pipeline.upload import Uploader


def _age(path, secs: float = 10.0) -> None:
    """Make the folder's mtime ``secs`` old (as a folder untouched for that long)."""
    old = time.time_ns() - int(secs * 1e9)
    os.utime(path, ns=(old, old))


def test_an_empty_outbox_is_known_empty_until_its_folder_changes(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    assert not outbox.certainly_empty()  # nothing listed yet
    _age(outbox.dir)
    assert outbox.entries() == []
    assert outbox.certainly_empty()
    # a reload's old runner writes through its own Outbox object: the folder it makes changes the mtime
    other = Outbox(tmp_path / "outbox")
    other.put(600, "c_1.csv", b"Timestamp,x\n")
    assert not outbox.certainly_empty()
    assert [e.name for e in outbox.entries()] == ["c_1.csv"]
    assert not outbox.certainly_empty()  # a listing with files never says empty
    outbox.remove(outbox.entries()[0])
    assert outbox.entries() == [] and not outbox.certainly_empty()  # the folder just changed: not trusted yet
    _age(outbox.dir)
    outbox.entries()
    assert outbox.certainly_empty()


def test_an_empty_window_folder_left_behind_keeps_the_outbox_listed(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    (outbox.dir / "900").mkdir()  # a file put into it would not change the outbox folder's mtime
    _age(outbox.dir)
    assert outbox.entries() == []
    assert not outbox.certainly_empty()
    Outbox(tmp_path / "outbox").put(900, "c_2.csv", b"Timestamp,x\n")
    assert [e.name for e in outbox.entries()] == ["c_2.csv"]


def test_a_known_empty_outbox_is_listed_again_after_a_minute(tmp_path, monkeypatch):
    import agent.pipeline.outbox as outbox_module

    outbox = Outbox(tmp_path / "outbox")
    _age(outbox.dir)
    outbox.entries()
    assert outbox.certainly_empty()
    monkeypatch.setattr(outbox_module, "EMPTY_TRUSTED_FOR_SECS", 0.0)
    assert not outbox.certainly_empty()


async def test_the_upload_job_skips_the_listing_of_an_empty_outbox_and_uploads_what_comes(tmp_path, monkeypatch):
    outbox = Outbox(tmp_path / "outbox")
    store = FileStore(tmp_path / "store")
    uploader = Uploader(outbox, store, "", ScaledClock(1000, 1), 60)
    listings = []
    entries = outbox.entries
    monkeypatch.setattr(outbox, "entries", lambda: listings.append(1) or entries())
    _age(outbox.dir)
    assert await uploader.run_once() == 0 and len(listings) == 1
    for _ in range(5):
        assert await uploader.run_once() == 0
    assert len(listings) == 1  # known empty: no listing
    Outbox(tmp_path / "outbox").put(600, "c_19700101000500.csv", b"Timestamp,x\n1,2\n")  # another runner's
    assert await uploader.run_once() == 1
    assert (tmp_path / "store" / "c_19700101000500.csv").read_bytes() == b"Timestamp,x\n1,2\n"
    assert await uploader.run_once(force=True) == 0 and len(listings) == 3  # a forced round always lists


def _plan(budget: int) -> WindowPlan:
    return WindowPlan("a", 300, 60, {"c": ["x"]}, {}, 0, 0, "_", "yyyyMMddHHmmss", 0, budget_bytes=budget)


def test_the_budget_is_not_measured_every_second_yet_never_missed(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", 300)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(_plan(budget=200_000), spool, outbox, tmp_path / "p.json")
    measures = []
    on_disk = spool.bytes_on_disk
    monkeypatch.setattr(spool, "bytes_on_disk", lambda: measures.append(1) or on_disk())
    assert not closer.over_budget() and len(measures) == 1
    spool.append([Reading("x", float(i), 300.0 + i % 290) for i in range(1000)])
    spool.flush()
    assert not closer.over_budget() and len(measures) == 1  # the bound (measure + written since) is within
    # the bytes written through this spool and outbox cross it: measured at once, and over
    spool.append([Reading("x", float(i), 600.0 + i % 290) for i in range(10_000)])
    spool.flush()
    outbox.put(300, "c_1.csv", b"x" * 50_000)
    assert closer.over_budget() and len(measures) == 2
    assert closer.over_budget() and len(measures) == 3  # "over" is always a measure
    spool.drop_window(600)
    outbox.drop_window(300)
    assert not closer.over_budget() and len(measures) == 4
    # what another writer adds (a reload's old runner) is seen at the next periodic measure
    Outbox(tmp_path / "outbox").put(900, "c_2.csv", b"x" * 300_000)
    assert not closer.over_budget() and len(measures) == 4
    monkeypatch.setattr(closer_module, "BUDGET_MEASURE_SECS", 0.0)
    closer._measure_due = 0.0
    assert closer.over_budget() and len(measures) == 5
