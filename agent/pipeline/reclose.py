"""Late readings for windows already written: the history backfill's way into the data path.

Without it a reading whose window is written is late and dropped (agent.pipeline.spool). A backfill
(connectors.opcua.backfill) fills gaps that windows may already cover: the agent restarted after their end, or the
link was down while they were written. Two parts:

:class:`Keeper`
    While a backfill could still reach a window (a backfill source is not connected, has pending gaps, or waits
    for the first live reading of a session), the closer hands each window it writes to ``keep``: the window's
    raw spool segments are hard-linked into ``<state-dir>/kept/<window end>/`` (no copy; the spool's ack then
    removes only its own names), with ``meta.json``: the carry at the window's start and the SHA-256 of every
    component file written. When nothing can reach a window any more, nothing is kept and what was kept is
    deleted; a kept window older than the longest ``max_age`` is deleted too.

:meth:`Keeper.reclose`
    Backfilled readings of a kept window are written durably beside its raw segments (agent.core.atomic) and the
    window is marked ``dirty``; the windows job (``render_dirty``) renders dirty windows again once the backfills
    are idle, or every RENDER_EVERY_SECS while one runs long, so a window is rendered once per burst and not once
    per write. It is rendered exactly as the closer renders it (``WindowCloser.render``: same readings plus the
    new ones, same carry at its start). A component file whose bytes changed is put in the outbox again under
    the same key (the uploader overwrites the object), logged once per window and counted in ``rewritten``; the
    carry after the window feeds the next kept window the same way, and the progress file's carry when the window
    is the last one written. A reading of a window written and not kept (nothing could reach it when it was
    written) cannot be merged exactly: it is counted in ``unreachable`` and dropped, as a late reading always was.

:class:`SpoolBackfillPort` is what a connector's backfill sees (connectors.opcua.backfill.BackfillPort):
readings of open windows go through the spool (append + flush: durable on return), readings of written windows
through ``reclose``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.core.atomic import fsync_dir, write_atomic, write_json_atomic
from agent.core.model import Reading, Window
from agent.pipeline.columns import Columns, encode, read_file
from agent.pipeline.resample import Carry
from agent.pipeline.spool import SUFFIX
from agent.pipeline.windowread import WindowReadings
from agent.pipeline.windows import iso_window

log = logging.getLogger("l4e.pipeline")

META = "meta.json"
DIRTY = "dirty"  # marker: backfilled readings arrived, the window is to be rendered again
# While a backfill keeps bringing readings, dirty windows are rendered again at most this often (wall seconds);
# when every backfill is idle, at once. A window is rendered once per burst, not once per write.
RENDER_EVERY_SECS = 30.0


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


class Keeper:
    """See the module docstring. ``closer``: the asset's WindowCloser (its ``keeper`` is set to this)."""

    def __init__(self, directory: Path, closer, need: Callable[[Window], bool], max_age_secs: float,
                 clock_now: Callable[[], float]) -> None:
        self.dir = Path(directory)
        self.closer = closer
        self.need = need
        self.max_age_secs = max_age_secs
        self.now = clock_now
        self.rewritten = 0          # windows rewritten because backfilled readings changed them
        self.unreachable = 0        # backfilled readings of written windows that were not kept (dropped)
        self._logged: set[int] = set()
        self._seq = 0
        self._dirty_since: float | None = None  # monotonic time the oldest unrendered write arrived
        self.dir.mkdir(parents=True, exist_ok=True)
        closer.keeper = self

    # --- keeping --------------------------------------------------------------------------------------
    def windows(self) -> list[int]:
        """Ends of the kept windows, oldest first."""
        out = []
        for path in self.dir.iterdir():
            if path.name.isdigit() and (path / META).exists():
                out.append(int(path.name))
        return sorted(out)

    def keep(self, window: Window, start_carry: Carry, digests: dict[str, str | None]) -> None:
        """Called by the closer before its progress moves past ``window``, also for a window it writes no file
        for (no reading: a backfill may bring some). ``digests``: component → SHA-256 of the file written (None:
        no file). See the module docstring."""
        if not self.need(window):
            self.prune(None)
            return
        self.prune(self.now() - self.max_age_secs)
        folder = self.dir / str(window.end)
        folder.mkdir(exist_ok=True)
        for path in self.closer.spool.dir.glob(f"{window.end}-*{SUFFIX}"):
            target = folder / path.name
            with contextlib.suppress(FileExistsError):  # a window closed again after a crash: same segments
                os.link(path, target)
        fsync_dir(folder)
        write_json_atomic(folder / META, {"carry": start_carry.to_json(), "digests": dict(digests)})

    def prune(self, before: float | None) -> None:
        """Delete kept windows (all of them, or those ending before ``before``), but none waiting to be
        rendered again."""
        for end in self.windows():
            if (before is None or end < before) and not (self.dir / str(end) / DIRTY).exists():
                shutil.rmtree(self.dir / str(end), ignore_errors=True)

    # --- re-closing -----------------------------------------------------------------------------------
    def reclose(self, parts: dict[int, Columns]) -> None:
        """Merge backfilled readings into written windows (see the module docstring): durable on return (the
        window is marked to be rendered again first, then the readings are written beside its raw segments).
        Raises OSError when they could not be made durable (the backfill does not advance then)."""
        kept = set(self.windows())
        for end, cols in sorted(parts.items()):
            if end not in kept:
                n = int(np.count_nonzero(~np.isnan(cols.value)))
                self.unreachable += n
                log.warning("%d backfilled readings of window %s dropped: it was written while no gap was open, "
                            "so its raw readings were not kept", n,
                            iso_window(Window(end - self.closer.plan.frequency, end)))
                continue
            folder = self.dir / str(end)
            if not (folder / DIRTY).exists():
                write_atomic(folder / DIRTY, b"")
            self._seq += 1
            write_atomic(folder / f"{end}-bf{time.time_ns():x}-{self._seq:06d}{SUFFIX}", encode(cols))
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()

    def render_dirty(self, idle: bool) -> None:
        """Render the windows that got backfilled readings again (see the module docstring): at once when
        ``idle`` (no backfill is bringing more), else at most every RENDER_EVERY_SECS."""
        dirty = [end for end in self.windows() if (self.dir / str(end) / DIRTY).exists()]
        if not dirty:
            self._dirty_since = None
            return
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()  # marked by an earlier run
        if not idle and time.monotonic() - self._dirty_since < RENDER_EVERY_SECS:
            return
        self._render_from(dirty[0], set(dirty), self.windows())
        for end in dirty:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / str(end) / DIRTY).unlink()
        self._dirty_since = None

    def _render_from(self, first: int, affected: set[int], kept: list[int]) -> None:
        closer = self.closer
        freq = closer.plan.frequency
        carry: Carry | None = None
        previous: int | None = None
        for end in (e for e in kept if e >= first):
            folder = self.dir / str(end)
            meta = json.loads((folder / META).read_text())
            stored = Carry.from_json(meta.get("carry"))
            chained = carry is not None and previous == end - freq
            start_carry = carry if chained else stored
            if end not in affected and (not chained or carry.to_json() == stored.to_json()):
                if chained:
                    break  # nothing new reaches this window, and its start is unchanged: neither the rest
                previous, carry = None, None
                continue
            window = Window(end - freq, end)
            digests = meta.get("digests", {})
            rendered: dict[str, str | None] = {}
            changed = []

            def put(comp: str, data: bytes | None, window=window, end=end, digests=digests, rendered=rendered,
                    changed=changed) -> None:
                rendered[comp] = _digest(data)
                if data is not None and rendered[comp] != digests.get(comp):
                    closer.outbox.put(end, closer.plan.name(comp, window), data)
                    changed.append(comp)

            # read group by group as the closer does: a re-render needs no more memory than the close did
            with WindowReadings.from_files(sorted(folder.glob(f"*{SUFFIX}"))) as readings:
                carry, _ = closer.render(window, readings, start_carry, put)
            write_json_atomic(folder / META, {"carry": start_carry.to_json(), "digests": rendered})
            if changed:
                self.rewritten += 1
                if end not in self._logged:
                    self._logged.add(end)
                    log.info("window %s rewritten with backfilled readings (components %s): complete data under "
                             "the same key", iso_window(window), ", ".join(changed))
            if end == closer.last_written and carry.to_json() != closer.carry.to_json():
                closer._save_state(end, carry)  # the next window starts from the completed one
            previous = end


class SpoolBackfillPort:
    """connectors.opcua.backfill.BackfillPort on the asset's spool, closer and keeper."""

    def __init__(self, spool, closer, keeper: Keeper) -> None:
        self.spool = spool
        self.closer = closer
        self.keeper = keeper

    def last_held(self, sensors: list[str]) -> dict[str, float]:
        wanted = set(sensors)
        out = {s: t for s, t in self.closer.last_ts.items() if s in wanted}
        for cols in self._held_columns():
            self._merge_latest(cols, wanted, out, -np.inf, np.inf)
        for r in self.spool._buffer:
            if r.sensor in wanted and r.value == r.value and r.ts > out.get(r.sensor, -np.inf):
                out[r.sensor] = r.ts
        return out

    def latest_between(self, sensor: str, lo: float, hi: float) -> float | None:
        out: dict[str, float] = {}
        for cols in self._held_columns(lo, hi):
            self._merge_latest(cols, {sensor}, out, lo, hi)
        return out.get(sensor)

    def write(self, readings: list[Reading]) -> None:
        if not readings:
            return
        cols = Columns.from_readings(readings)
        freq = self.spool.frequency
        ends = (np.ceil(cols.ts / freq) * freq).astype(np.int64)
        closed = self.spool.closed_upto
        late = ends <= closed if closed is not None else np.zeros(len(ends), bool)
        if (~late).any():
            self.spool.append([r for r, is_late in zip(readings, late.tolist(), strict=True) if not is_late])
            self.spool.flush()
            if self.spool.held_windows():
                raise OSError("the spool could not write the backfilled readings (see the disk warning)")
        if late.any():  # windows already written: rendered again by the windows job (Keeper.render_dirty)
            self.keeper.reclose({int(e): cols.filter(late & (ends == e)) for e in np.unique(ends[late])})

    # --- helpers
    def _held_columns(self, lo: float = -np.inf, hi: float = np.inf):
        freq = self.spool.frequency
        for end in self.spool.windows():
            if end > lo and end - freq < hi:
                yield self.spool.read(end)
        for end in self.keeper.windows():
            if end > lo and end - freq < hi:
                for path in sorted((self.keeper.dir / str(end)).glob(f"*{SUFFIX}")):
                    yield read_file(path)[0]

    @staticmethod
    def _merge_latest(cols: Columns, wanted: set[str], out: dict[str, float], lo: float, hi: float) -> None:
        if not cols.num_rows:
            return
        mask = ~np.isnan(cols.value) & (cols.ts > lo) & (cols.ts <= hi)
        latest = np.full(len(cols.names), -np.inf)
        np.maximum.at(latest, cols.code[mask], cols.ts[mask])
        for name, ts in zip(cols.names, latest.tolist(), strict=True):
            if name in wanted and ts > out.get(name, -np.inf):
                out[name] = ts
