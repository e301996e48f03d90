"""Blocking file work off the event loop, in order: one worker thread per state directory.

The event loop runs the connectors (OPC-UA publish responses, Modbus polls, the replay's clock) and the HTTP
listener; an fsync can take tens of milliseconds on a healthy SD card and seconds on a failing one, so no
write, fsync, rename, unlink or file read of the data path runs on it. Everything that touches one state
directory's spool, outbox and progress goes through its :class:`DiskWorker`: one thread, so those operations
keep the order they were submitted in (a window is written before its spool is acknowledged, an upload's
removal never races the write of the next component's file), exactly as when they ran on the loop.

What the worker runs must not touch objects the loop mutates at the same time; the spool's append buffer is
guarded by a lock (agent.pipeline.spool), events raised in the worker are handed to the loop
(agent.runtime.asset.AssetRunner.emit).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DiskWorker:
    """One worker thread (created at the first call). ``await run(fn, *args)`` returns what ``fn`` returns or
    raises what it raises. Calls run one at a time, in submission order."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"l4e-disk-{name}")

    async def run(self, fn: Callable[..., T], *args) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def submit(self, fn: Callable[..., T], *args) -> None:
        """Queue ``fn(*args)`` behind the calls already submitted, without waiting for it (from code that cannot
        await: ``fn`` handles its own errors). After ``close`` it runs at once in the calling thread, so nothing
        submitted is dropped."""
        try:
            self._executor.submit(fn, *args)
        except RuntimeError:  # closed: the runner is draining or gone
            fn(*args)

    def close(self) -> None:
        """No more calls (later ones raise RuntimeError); one already submitted still finishes in the thread.
        Does not wait for it: callers await their calls, so there is none unless its caller was cancelled."""
        self._executor.shutdown(wait=False)
