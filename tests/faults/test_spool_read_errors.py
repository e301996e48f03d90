"""A spool segment that cannot be read is not a torn tail: the window waits, nothing is written or deleted.

EIO and EACCES cannot be produced on demand on a healthy disk (and root ignores file modes), so they are
injected at the narrowest point: the ``open`` that ``agent.pipeline.columns.read_file`` reads a segment
through, for one segment file only. A directory where a segment should be is real.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os

import pytest

import agent.pipeline.columns as columns
from agent.core.model import Reading
from agent.pipeline.closer import WindowCloser, WindowPlan
from agent.pipeline.outbox import Outbox
from agent.pipeline.spool import Spool
from tests.helpers import parse_csv

END = 600  # the window (300, 600]
NOW = END + 60.0  # well past end + grace


def plan() -> WindowPlan:
    return WindowPlan("a", 300, 60, {"c": ["x"]}, {}, 0, 0, "_", "EPOCH", 0)


def two_runs(spool_dir) -> tuple[Spool, os.PathLike]:
    """Window (300, 600] with readings in two segments (two runs of the agent); returns the second run's
    spool and the first run's segment."""
    first = Spool(spool_dir, 300)
    first.append([Reading("x", 1.0, 330.0), Reading("x", 3.0, 350.0)])
    first.flush()
    first.close()
    (old,) = spool_dir.glob("600-*.l4es")
    second = Spool(spool_dir, 300)
    second.append([Reading("x", 5.0, 450.0)])
    second.flush()
    return second, old


class FailingReads:
    """Inject ``OSError(code)`` into reads of one file: at open, or at the first read after open."""

    def __init__(self, target, code: int, at: str) -> None:
        self.target, self.code, self.at = os.fspath(target), code, at
        self.active = True
        self.calls = 0

    def open(self, path, *args, **kwargs):
        if not (self.active and os.fspath(path) == self.target):
            return builtins.open(path, *args, **kwargs)
        self.calls += 1
        if self.at == "open":
            raise OSError(self.code, os.strerror(self.code), os.fspath(path))
        return _FailingFile(builtins.open(path, *args, **kwargs), self.code)


class _FailingFile(io.RawIOBase):
    def __init__(self, fh, code: int) -> None:
        self.fh, self.code = fh, code

    def seek(self, *args):
        return self.fh.seek(*args)

    def read(self, *args):
        raise OSError(self.code, os.strerror(self.code))

    def close(self):
        self.fh.close()
        super().close()


def window_values(outbox: Outbox) -> dict[str, str]:
    (entry,) = outbox.entries()
    header, rows = parse_csv(entry.path.read_bytes())
    assert header == ["Timestamp", "x"]
    return {row[0]: row[1] for row in rows}


@pytest.mark.parametrize(("code", "at"), [(errno.EIO, "read"), (errno.EIO, "open"), (errno.EACCES, "open")])
def test_a_segment_that_cannot_be_read_keeps_its_window_waiting(tmp_path, monkeypatch, caplog, code, at):
    spool, old = two_runs(tmp_path / "spool")
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan(), spool, outbox, tmp_path / "progress.json")
    fault = FailingReads(old, code, at)
    monkeypatch.setattr(columns, "open", fault.open, raising=False)
    caplog.set_level(logging.DEBUG, logger="l4e")

    assert closer.close_due(NOW) == []
    # nothing written, nothing acknowledged, nothing deleted: both segments and the progress are as they were
    assert outbox.entries() == [] and closer.last_written is None
    assert not (tmp_path / "progress.json").exists()
    assert len(list((tmp_path / "spool").glob("600-*.l4es"))) == 2
    assert spool.read_errors == {errno.errorcode[code]: 1}
    assert spool.torn_segments == 0

    # retried with backoff: not before the delay has passed, then again (counted, not logged again)
    assert closer.close_due(NOW) == [] and fault.calls == 1
    closer._read_retry_at = 0.0  # the backoff's delay has passed
    assert closer.close_due(NOW) == [] and fault.calls == 2
    assert spool.read_errors == {errno.errorcode[code]: 2}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and old.name in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert closer.read_backoff.attempt == 2

    # the disk answers again: the window is written with the readings of BOTH segments, then acknowledged
    fault.active = False
    closer._read_retry_at = 0.0
    events = closer.close_due(NOW)
    assert [e.kind for e in events] == ["window_written"]
    values = window_values(outbox)
    assert values["1970-01-01T00:06:00.000000"] == "2.0"  # mean of 1.0 and 3.0 (the first run's segment)
    assert values["1970-01-01T00:08:00.000000"] == "5.0"
    assert not list((tmp_path / "spool").glob("600-*.l4es"))
    assert closer.last_written == END and closer.read_backoff.attempt == 0
    assert any("can be read again" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_a_directory_where_a_segment_should_be_is_kept_and_not_taken_for_a_torn_tail(tmp_path, caplog):
    spool_dir = tmp_path / "spool"
    spool, _ = two_runs(spool_dir)
    blocker = spool_dir / "600-0-000001.l4es"  # sorts first among the window's segments
    blocker.mkdir()
    (blocker / "inside").write_text("x")
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan(), spool, outbox, tmp_path / "progress.json")

    assert closer.close_due(NOW) == []
    assert outbox.entries() == [] and closer.last_written is None
    assert blocker.is_dir() and (blocker / "inside").exists()
    assert len(list(spool_dir.glob("600-*.l4es"))) == 3
    assert spool.read_errors == {"EISDIR": 1} and spool.torn_segments == 0
    assert any(r.levelno == logging.WARNING and blocker.name in r.getMessage() for r in caplog.records)

    # the operator moves it away: the window is written with every reading of the two real segments
    blocker.rename(tmp_path / "moved-away")
    closer._read_retry_at = 0.0
    assert [e.kind for e in closer.close_due(NOW)] == ["window_written"]
    values = window_values(outbox)
    assert values["1970-01-01T00:06:00.000000"] == "2.0" and values["1970-01-01T00:08:00.000000"] == "5.0"
    assert (tmp_path / "moved-away" / "inside").exists()


def test_latest_ts_and_budget_counts_skip_an_unreadable_segment(tmp_path, monkeypatch):
    spool, old = two_runs(tmp_path / "spool")
    monkeypatch.setattr(columns, "open", FailingReads(old, errno.EIO, "open").open, raising=False)
    # what can be read still counts; the unreadable segment is reported, not taken for empty-and-deletable
    assert spool.readings_in(END) == 1
    assert spool.latest_ts({"x"}) == 450.0
    assert spool.read_errors["EIO"] >= 1
    assert len(list((tmp_path / "spool").glob("600-*.l4es"))) == 2


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_a_spool_folder_that_cannot_be_listed_is_not_taken_for_an_empty_one(tmp_path, monkeypatch, caplog, code):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, 300)
    spool.append([Reading("x", 1.0, 330.0), Reading("x", 2.0, 630.0)])  # windows (300, 600] and (600, 900]
    spool.flush()
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan(), spool, outbox, tmp_path / "progress.json")
    assert [e.kind for e in closer.close_due(NOW)] == ["window_written"] and closer.last_written == END

    real_scandir = os.scandir
    listing_fails = True

    def scandir(path="."):
        if listing_fails and os.fspath(path) == os.fspath(spool_dir):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # (600, 900] is due: the folder cannot be listed, so nothing is known about it; it is neither missing
    # nor written, and the progress stays where it was
    assert closer.close_due(900 + 60.0) == []
    assert closer.last_written == END and len(outbox.entries()) == 1
    assert spool.read_errors == {errno.errorcode[code]: 1}
    assert any(r.levelno == logging.WARNING and "cannot be read" in r.getMessage() for r in caplog.records)

    listing_fails = False
    closer._read_retry_at = 0.0
    assert [e.kind for e in closer.close_due(900 + 60.0)] == ["window_written"]
    assert closer.last_written == 900 and not list(spool_dir.glob("900-*.l4es"))
