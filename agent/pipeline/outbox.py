"""The outbox: window CSVs that are durable locally and not yet confirmed by the store.

Layout: ``<dir>/<window end>/<object name>`` (object name = ``<component><delim><timestamp>.csv``). A file
appears there only complete (written to ``<dir>/.tmp``, fsynced, renamed, folder fsynced). It is removed only
after the store confirmed the upload. Window folders are named by their end in Unix seconds, so listing them
in numeric order gives oldest first.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.atomic import write_atomic
from agent.core.errors import StateError

EMPTY_TRUSTED_AFTER_NS = 1_000_000_000  # see Outbox.certainly_empty
EMPTY_TRUSTED_FOR_SECS = 60.0


@dataclass(frozen=True)
class OutboxEntry:
    window_end: int
    name: str
    path: Path


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.tmp = self.dir / ".tmp"
        self.bytes_written = 0  # window file bytes put through this object (never decreases; the budget's estimate)
        self._empty_as_of: int | None = None  # the folder's mtime (ns) when a listing found it empty (certainly_empty)
        self._listed_at = 0.0  # time.monotonic() of that listing
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"outbox folder {self.dir} is not writable: {exc}") from exc

    def put(self, window_end: int, name: str, data: bytes) -> OutboxEntry:
        """Durably add (or replace with the same bytes) one window file. Raises OSError on disk errors."""
        folder = self.dir / str(window_end)
        folder.mkdir(exist_ok=True)
        final = folder / name
        # a full disk: the partial copy goes (a file already in the outbox is untouched until the rename)
        write_atomic(final, data, tmp_dir=self.tmp)
        self.bytes_written += len(data)
        return OutboxEntry(window_end, name, final)

    def certainly_empty(self) -> bool:
        """True when the last ``entries()`` found no window folder and the outbox folder has not changed since:
        one stat instead of a listing (the upload job asks twice a second). A file only arrives in a window
        folder made for it (``put``), and making or removing a folder changes the outbox folder's mtime, whatever
        process or object does it (a reload's old runner writes through its own Outbox). The mtime is trusted only
        when it was over a second old at that listing (file times are kernel ticks, milliseconds apart: a change
        in the same tick as the one before the listing would leave it equal), and for at most a minute."""
        if self._empty_as_of is None or time.monotonic() - self._listed_at > EMPTY_TRUSTED_FOR_SECS:
            return False
        try:
            return os.stat(self.dir).st_mtime_ns == self._empty_as_of
        except OSError:
            return False

    def entries(self) -> list[OutboxEntry]:
        """Every pending file, oldest window first, then by name."""
        out = []
        try:
            before = os.stat(self.dir)
        except OSError:
            before = None
        folders = 0
        for folder in self.dir.iterdir():
            if not folder.is_dir() or not folder.name.isdigit():
                continue
            folders += 1
            end = int(folder.name)
            try:
                paths = list(folder.iterdir())
            except FileNotFoundError:  # its last file was uploaded meanwhile (another thread)
                continue
            for path in paths:
                out.append(OutboxEntry(end, path.name, path))
        out.sort(key=lambda e: (e.window_end, e.name))
        # no window folder at all (an empty one left behind could get a file without the outbox folder changing)
        settled = before is not None and time.time_ns() - before.st_mtime_ns > EMPTY_TRUSTED_AFTER_NS
        self._empty_as_of = before.st_mtime_ns if not folders and settled else None
        self._listed_at = time.monotonic()
        return out

    def windows(self) -> list[int]:
        return sorted(int(f.name) for f in self.dir.iterdir() if f.is_dir() and f.name.isdigit())

    def remove(self, entry: OutboxEntry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        with contextlib.suppress(OSError):  # not empty yet: other components still pending
            entry.path.parent.rmdir()

    def drop_window(self, window_end: int) -> int:
        """Delete a whole pending window (disk budget, last resort). Returns bytes freed."""
        freed = 0
        folder = self.dir / str(window_end)
        for path in folder.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        return freed

    def bytes_on_disk(self) -> int:
        total = 0
        for entry in self.entries():
            with contextlib.suppress(FileNotFoundError):
                total += entry.path.stat().st_size
        return total
