"""The outbox: window CSVs that are durable locally and not yet confirmed by the store.

Layout: ``<dir>/<window end>/<object name>`` (object name = ``<component><delim><timestamp>.csv``). A file
appears there only complete (written to ``<dir>/.tmp``, fsynced, renamed, folder fsynced). It is removed only
after the store confirmed the upload. Window folders are named by their end in Unix seconds, so listing them
in numeric order gives oldest first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from agent.core.atomic import write_atomic
from agent.core.errors import StateError


@dataclass(frozen=True)
class OutboxEntry:
    window_end: int
    name: str
    path: Path


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.tmp = self.dir / ".tmp"
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
        return OutboxEntry(window_end, name, final)

    def entries(self) -> list[OutboxEntry]:
        """Every pending file, oldest window first, then by name."""
        out = []
        for folder in self.dir.iterdir():
            if not folder.is_dir() or not folder.name.isdigit():
                continue
            end = int(folder.name)
            try:
                paths = list(folder.iterdir())
            except FileNotFoundError:  # its last file was uploaded meanwhile (another thread)
                continue
            for path in paths:
                out.append(OutboxEntry(end, path.name, path))
        out.sort(key=lambda e: (e.window_end, e.name))
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
