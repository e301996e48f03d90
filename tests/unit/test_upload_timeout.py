"""A folder store that hangs (a FIFO where the temporary file goes: open() blocks in the kernel, as on a hung
NFS mount) is timed out, retried without piling up threads, and is one WARNING plus one INFO."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time

from agent.core.clock import Backoff, ScaledClock
from agent.pipeline.outbox import Outbox
from agent.pipeline.store import FileStore
from agent.pipeline.upload import Uploader


def put_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "l4e-upload-put")


async def test_a_hung_folder_store_is_bounded_and_logged_once(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="l4e.upload")
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(300, "pump_1.csv", b"Timestamp,x\n1,2\n")
    outbox.put(600, "pump_2.csv", b"Timestamp,x\n3,4\n")
    root = tmp_path / "store"
    root.mkdir()
    fifo = root / ".pump_1.csv.tmp"
    os.mkfifo(fifo)
    uploader = Uploader(outbox, FileStore(root), "", ScaledClock(1000, 1), 60, Backoff(0.05, 0.1), timeout_secs=0.5)
    started = time.monotonic()
    assert await uploader.run_once() == 0
    assert 0.4 <= time.monotonic() - started < 2.0  # bounded by the timeout, not by the store
    for _ in range(3):  # retries while the first put still hangs: no second thread is started
        await asyncio.sleep(0.15)
        assert await uploader.run_once(force=True) == 0
    assert put_threads() == 1
    assert uploader.stats.failures == 4 and len(outbox.entries()) == 2
    # the share comes back: the blocked open() returns, that old attempt fails (nobody reads the pipe)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    with contextlib.suppress(FileNotFoundError):  # the failed put removes its temporary itself (agent.core.atomic)
        fifo.unlink()
    os.close(fd)
    deadline = time.monotonic() + 5
    while put_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert put_threads() == 0
    # the thread handed its outcome to the loop with call_soon_threadsafe before it ended: one loop turn runs it
    await asyncio.sleep(0)
    assert await uploader.run_once(force=True) == 2
    assert (root / "pump_1.csv").read_bytes() == b"Timestamp,x\n1,2\n"
    assert (root / "pump_2.csv").read_bytes() == b"Timestamp,x\n3,4\n"
    assert outbox.entries() == []
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "no answer within 0.5s" in lines[0][1]
    assert "(4 failed attempts); 2 window(s) delayed" in lines[1][1]
    assert uploader.stats.windows_late == 2  # counted, not logged one by one
