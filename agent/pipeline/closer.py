"""Window closing: spool → resample → CSV per component → outbox → spool ack (the data path's middle).

``WindowCloser.close_due(now)`` writes every window whose end + grace has passed and that is not written
yet, oldest first, and returns the data-health events it produced. Order of effects for one window, chosen
so a crash at any point neither loses nor duplicates anything:

1. the component CSVs are written to the outbox (atomic per file; a rewrite gives the same bytes), each as soon
   as it is rendered: the window is read from the spool one group of components at a time (agent.pipeline.groups,
   ``render``), so a close holds the readings of one group and the file of one component, never the window's,
2. the window's events (written, missing) go to the ``journal`` (the alarm engine's durable inbox,
   agent.alarms.inbox), so they are on disk before the window counts as closed,
3. the progress file (last written window + the carry for the fill rule) is replaced atomically,
4. the window's spool segments are deleted.

A crash before 3 rewrites the window with the same inputs on restart (same bytes, same keys; its events are
journaled again, which changes no alarm); a crash after 3 only deletes the leftover segments. A spool segment
that cannot be read (agent.pipeline.spool.SegmentUnreadable: EIO, EACCES, ...) stops the run before step 1:
nothing is written or acknowledged, and the window is tried again after a backoff (``READ_BACKOFF_*``), so a
failing read never turns into a window written without its readings. (Every segment is validated before the
first file is written; should one that was just read fail later in the same close, the files already written
stay, as after a crash in step 1, and the retry writes them again with the same bytes.) The job derives all its
work from the clock and this state, so a late wake, a restart or an accelerated clock are handled by the same code.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.core.atomic import write_json_atomic
from agent.core.clock import Backoff
from agent.core.errors import TransitionLog
from agent.core.model import Event, Window
from agent.pipeline.columns import Columns
from agent.pipeline.csvfile import component_csv, time_column
from agent.pipeline.diskhealth import disk_error
from agent.pipeline.groups import last_component, owners, sensor_groups
from agent.pipeline.outbox import Outbox
from agent.pipeline.resample import Carry, resample
from agent.pipeline.spool import SegmentUnreadable, Spool
from agent.pipeline.windowread import WindowReadings
from agent.pipeline.windows import iso_window, object_name, window_ending, windows_between

log = logging.getLogger("l4e.pipeline")
# a window whose readings are more than this share in records of several groups is read whole once (render)
WHOLE_WHEN_MIXED = 0.25
# retry of a window whose spool segment could not be read (wall seconds; the usual capped exponential backoff)
READ_BACKOFF_INITIAL_SECS = 1.0
READ_BACKOFF_MAX_SECS = 60.0


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_TRIM = _malloc_trim()


def digest(data: bytes) -> str:
    """The SHA-256 of a component file (hex): how a kept window remembers what was written (reclose)."""
    return hashlib.sha256(data).hexdigest()


def release_freed_memory() -> None:
    """Give the heap pages a window close freed back to the OS (glibc's malloc_trim; a few ms, once per
    window). Without it the resident size stays at the close's high-water mark for the life of the process."""
    if _TRIM is not None:
        _TRIM(0)


BUDGET_MEASURE_SECS = 10.0  # the disk use is measured at least this often (wall seconds), see over_budget


@dataclass(frozen=True)
class WindowPlan:
    """What the closer needs from the asset config (kept small so tests can build one directly)."""

    asset: str
    frequency: int
    rate: int
    components: dict[str, list[str]]
    aggs: dict[str, str]
    fill_limit: int
    grace_secs: float
    delimiter: str
    timestamp_format: str
    offset_secs: int
    timestamp_column: str = "Timestamp"
    budget_bytes: int = 1 << 30
    when_full: str = "drop_oldest"
    # sensor → seconds a reading holds (rule 2a; math.inf = until the next reading or a validity end);
    # sensors not listed do not hold (sampled sources: the fill rule alone carries them)
    holds: dict[str, float] = field(default_factory=dict)

    @property
    def sensors(self) -> list[str]:
        seen: dict[str, None] = {}
        for names in self.components.values():
            for s in names:
                seen.setdefault(s, None)
        return list(seen)

    def due_up_to(self, now: float) -> int:
        """End of the latest window whose end + grace is at or before ``now``."""
        return int((now - self.grace_secs) // self.frequency) * self.frequency

    def name(self, component: str, window: Window) -> str:
        return object_name(component, self.delimiter, window.start, self.timestamp_format, self.offset_secs)


@dataclass
class CloserStats:
    windows_written: int = 0
    files_written: int = 0
    windows_missing: dict[str, int] = field(default_factory=dict)  # component → count
    bytes_dropped: int = 0


class WindowCloser:
    def __init__(self, plan: WindowPlan, spool: Spool, outbox: Outbox, state_file: Path,
                 journal: Callable[[list[Event]], None] | None = None) -> None:
        """``journal(events)``: makes a window's events durable before its progress is saved (raises OSError
        when it cannot: the window is retried like any failed write). None: events are only returned."""
        self.plan = plan
        self.journal = journal
        self.spool = spool
        self.outbox = outbox
        self.state_file = Path(state_file)
        self.stats = CloserStats()
        self.disk = spool.disk  # one DiskHealth per state directory
        self._errors = TransitionLog(log)
        self.read_backoff = Backoff(READ_BACKOFF_INITIAL_SECS, READ_BACKOFF_MAX_SECS)
        self._read_retry_at = 0.0  # monotonic wall time before which a window is not read again
        self.last_written: int | None = None
        # clock time the agent started (set by the runner): before any window is written, the windows after it
        # are closed (and reported missing) even when no reading at all ever arrived
        self.anchor: float | None = None
        self.carry = Carry({})
        self.last_ts: dict[str, float] = {}  # sensor → latest good reading of the windows written (progress)
        self.keeper = None  # set by the history backfill (agent.pipeline.reclose.Keeper)
        self._measured: tuple[int, int] | None = None  # (bytes on disk, bytes written then): see over_budget
        self._measure_due = 0.0  # time.monotonic() of the next disk measure
        # called with the window's end between two groups of a close (in the closer's thread): the runner flushes
        # the readings that arrived meanwhile (Spool.flush keep_upto), so a long close (seconds at 20,000 sensors)
        # does not pile them up in memory
        self.between_groups: Callable[[int], None] | None = None
        # the window is written to the spool and read back in these groups of components (agent.pipeline.groups)
        self.groups = sensor_groups(plan.components)
        self._counts_in = last_component(plan.components)  # sensor → the component its readings count in
        self._known = set(self._counts_in)
        self._owner = owners(self.groups)
        spool.set_groups(self._owner)
        self.resume()

    def resume(self) -> None:
        """Take the progress as the state directory holds it now, and finish an interrupted ack.

        Called at construction and again when the runner starts: on a reload (SIGHUP) the fresh runners are
        built while the old ones still run, and the old ones' drain may write windows after that; the fresh
        closer must continue from there, neither writing such a window again nor reporting it missing."""
        self._load_state()
        if self.last_written is not None:
            self.spool.closed_upto = self.last_written
            for end in self.spool.windows():  # crash between progress and ack: finish the ack
                if end <= self.last_written:
                    self.spool.ack(end)

    # --- persisted progress ---------------------------------------------------------------------------
    def _load_state(self) -> None:
        self.last_written, self.carry = None, Carry({})
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("progress file %s unreadable (%s): starting from the spool as found", self.state_file, exc)
            return
        self.last_written = data.get("last_written")
        self.carry = Carry.from_json(data.get("carry"))
        self.last_ts = {str(k): float(v) for k, v in (data.get("last_ts") or {}).items()}

    def _save_state(self, last_written: int, carry: Carry) -> None:
        """Persist (last_written, carry), then adopt them: on a failed write neither the file (agent.core.atomic)
        nor the in-memory progress changes, so the same window is simply written again later."""
        state = {"last_written": last_written, "carry": carry.to_json()}
        if self.last_ts:
            state["last_ts"] = self.last_ts
        write_json_atomic(self.state_file, state)
        self.last_written = last_written
        self.carry = carry

    # --- the job --------------------------------------------------------------------------------------
    def has_due(self, now: float) -> bool:
        """Whether ``close_due(now)`` can have a window to write: False while the last written window is still the
        latest one due (the window job ticks several times a grid step; most ticks have nothing to do, and then
        neither the spool's flush nor its folder listing is worth paying for)."""
        return self.last_written is None or self.plan.due_up_to(now) > self.last_written

    def close_due(self, now: float) -> list[Event]:
        """Write every due window (see module docstring). Disk errors are reported to the spool's
        DiskHealth (logged once per episode) and the window is retried at the next call; a window whose
        readings the spool still holds in memory (its writes failed) is not written before they are on disk."""
        if time.monotonic() < self._read_retry_at:
            return []  # a spool segment could not be read: wait for the backoff before trying again
        up_to = self.plan.due_up_to(now)
        held = self.spool.held_windows()
        if held:
            up_to = min(up_to, held[0] - self.plan.frequency)
        events: list[Event] = []
        window: Window | None = None
        try:
            # strict: a spool folder that cannot be listed is not an empty one (that would skip its windows)
            with_data = [end for end in self.spool.windows(strict=True) if end <= up_to]
            first_after = self._first_after(with_data)
            if first_after is None:
                return []
            data_set = set(with_data)
            empty_run: list[Window] = []
            for window in windows_between(first_after, up_to, self.plan.frequency):
                # a window with no reading is still written when a carried value holds into it:
                # a steady plant reports nothing new, and that is a value, not a gap (rule 2a)
                if window.end not in data_set and not self.carry.holds_into(window):
                    empty_run.append(window)
                    continue
                missing = self._missing_events(empty_run, now)
                if self.keeper is not None:  # history backfill: a window with no reading yet may still get some
                    for empty in empty_run:
                        self.keeper.keep(empty, self.carry, {})
                written = self._close(window, now, missing)  # also records the empty run before it as written
                events.extend(self._commit_missing(empty_run, missing) + written)
                empty_run = []
            if empty_run:
                missing = self._missing_events(empty_run, now)
                if self.keeper is not None:  # history backfill: a window with no reading yet may still get some
                    for empty in empty_run:
                        self.keeper.keep(empty, self.carry, {})
                self._journal(missing)
                self._save_state(empty_run[-1].end, self.carry)
                self.spool.closed_upto = self.last_written
                events.extend(self._commit_missing(empty_run, missing))
        except SegmentUnreadable as exc:
            # not a torn tail: the window is neither written nor acknowledged; the spool logged it once
            delay = self.read_backoff.next()
            self._read_retry_at = time.monotonic() + delay
            log.debug("window %s waits: %s (retrying in %.1fs)", iso_window(window) if window else "-", exc, delay)
            return events
        except OSError as exc:
            if disk_error(exc) is not None:
                self.disk.failure("windows", exc)
            else:
                where = iso_window(window) if window is not None else "progress"
                self._errors.failure("write", "cannot write window %s to the outbox: %s (will retry)", where, exc)
            return events
        self.disk.success("windows")
        self.read_backoff.reset()
        self._errors.success("write", "writing windows to the outbox again")
        if any(e.kind == "window_written" for e in events):
            release_freed_memory()
        return events

    def _first_after(self, with_data: list[int]) -> int | None:
        """Where closing resumes: after the last written window; on a first start, before the first window
        with data or the first whole window after the start anchor, whichever comes first (a source that never
        answers still gets its windows reported missing). None: nothing to close yet."""
        if self.last_written is not None:
            return self.last_written
        starts = []
        if with_data:
            starts.append(with_data[0] - self.plan.frequency)
        if self.anchor is not None:
            f = self.plan.frequency
            starts.append(-(-int(self.anchor) // f) * f)  # the first window boundary at or after the start
        return min(starts) if starts else None

    def _missing_events(self, windows: list[Window], now: float) -> list[Event]:
        """Windows with no reading at all: one event per component for a run of consecutive windows (not
        one per window). Nothing is logged or counted until ``_commit_missing`` (after the progress is saved)."""
        if not windows:
            return []
        first, last = windows[0], windows[-1]
        msg = (f"no readings for {len(windows)} window(s) {iso_window(first)} … {iso_window(last)}: "
               f"no file written for any component")
        return [Event("window_missing", comp, msg, now, {"window_start": first.start, "window_end": last.end,
                                                           "count": len(windows)})
                for comp in self.plan.components]

    def _commit_missing(self, windows: list[Window], events: list[Event]) -> list[Event]:
        if not windows:
            return []
        for comp in self.plan.components:
            self.stats.windows_missing[comp] = self.stats.windows_missing.get(comp, 0) + len(windows)
        log.warning("%s", events[0].message)
        return events

    def _journal(self, events: list[Event]) -> None:
        if self.journal is not None and events:
            self.journal(events)

    def render(self, window: Window, readings: Columns | WindowReadings, carry: Carry,
               emit: Callable[[str, bytes | None], None],
               between: Callable[[], None] | None = None) -> tuple[Carry, tuple[int, int, int]]:
        """Render the window from its readings and the carry at its start: ``emit(component, csv bytes or None)``
        for each component in order as soon as its file is rendered (None: no reading, no file); ``between()``
        after each group but the last. Returns the carry after the window and (unknown readings, cells, empty
        cells) of the files. Pure but for ``emit`` and ``between``: the same inputs give the same bytes (a
        re-close relies on it).

        One group of components at a time (agent.pipeline.groups): only that group's readings are read from the
        spool (``WindowReadings.select``), resampled one component at a time and rendered, so neither the whole
        window's readings nor its files are ever in memory at once. Components keep their order, so the carry is
        chained from one to the next exactly as when the window was taken whole; each sensor's rows depend on its
        own readings only, so the bytes are the same however the window is cut."""
        plan = self.plan
        source = readings if isinstance(readings, WindowReadings) else WindowReadings.of(readings)
        if source.mixed_rows(self._owner) > WHOLE_WHEN_MIXED * source.num_rows:
            # most readings are in records of several groups (written before groups, an upgrade, or with other
            # groups): reading them once per group would cost the window's bytes per group, so read them once
            source.load_whole()
        times_text = time_column(np.arange(window.start + plan.rate, window.end + 1, plan.rate))
        cells = empty = 0
        for number, group in enumerate(self.groups):
            if number and between is not None:
                between()
            part = source.select(group.sensors)
            position = {s: i for i, s in enumerate(part.names)}
            for comp in group.components:
                sensors = plan.components[comp]
                member = np.zeros(len(part.names), dtype=bool)
                member[[position[s] for s in sensors if s in position and self._counts_in[s] == comp]] = True
                # the common case: the component is all the group has readings of (else: in append order)
                rows = part if member.all() else part.filter(member[part.code])
                grid, carry = resample(rows, window, plan.rate, sensors, plan.aggs, plan.fill_limit, carry,
                                       plan.holds)
                data = component_csv(grid, sensors, plan.timestamp_column, times_text)
                if data is not None:
                    cells += grid.values.size
                    empty += int(np.count_nonzero(np.isnan(grid.values)))
                emit(comp, data)
                del grid, data
            del part
        unknown = source.select_others(self._known).num_rows  # also counts them in source.latest()
        return carry, (unknown, cells, empty)

    def _close(self, window: Window, now: float, before: list[Event] = ()) -> list[Event]:
        """Write one window; ``before``: the missing-window events of the empty run just before it, journaled
        with this window's own events. Each component file goes to the outbox as soon as it is rendered (a
        failure part way leaves files that the retry writes again with the same bytes, as a crash would)."""
        plan = self.plan
        start_carry = self.carry
        rendered: list[tuple[str, str | None]] = []  # (component, SHA-256 of its file, or None: no file)
        keeping = self.keeper is not None

        def put(comp: str, data: bytes | None) -> None:
            if data is not None:
                self.outbox.put(window.end, plan.name(comp, window), data)
            rendered.append((comp, None if data is None else (digest(data) if keeping else "")))

        with self.spool.open_window(window.end) as readings:
            readings.track_latest = keeping
            hook = self.between_groups
            carry, (unknown, cells, empty) = self.render(window, readings, start_carry, put,
                                                         None if hook is None else lambda: hook(window.end))
            latest = readings.latest() if keeping else {}
        events = []
        files = 0
        for comp, sha in rendered:
            if sha is None:
                self.stats.windows_missing[comp] = self.stats.windows_missing.get(comp, 0) + 1
                msg = (f"component {comp}: no reading in window {iso_window(window)}; no file written "
                       f"(the scheduler will fail this run)")
                log.warning("%s", msg)
                events.append(Event("window_missing", comp, msg, now, {"window_start": window.start}))
                continue
            self.stats.files_written += 1
            files += 1
            events.append(Event("window_written", comp, f"component {comp}: window {iso_window(window)} written",
                                now, {"window_start": window.start, "window_end": window.end}))
        if self.keeper is not None:  # history backfill: keep what a late reading needs to re-close it
            self.keeper.keep(window, start_carry, dict(rendered))
            self._note_last_ts(latest)
        self._journal([*before, *events])
        self._save_state(window.end, carry)
        self.spool.ack(window.end)
        self.stats.windows_written += 1
        if files:  # one line per window, whatever the number of components and sensors
            log.info("window %s written: %d file(s), %d row(s), %d of %d cell(s) empty", iso_window(window), files,
                     len(range(window.start + plan.rate, window.end + 1, plan.rate)), empty, cells)
        if unknown:
            log.debug("window %s: %d readings of sensors in no component ignored", iso_window(window), unknown)
        return events

    def _note_last_ts(self, latest: dict[str, float]) -> None:
        """Per sensor, the latest good reading of the window (``latest``, WindowReadings.latest): kept in the
        progress file, so the agent knows the last reading it held of every sensor after the window's raw
        readings are gone (history backfill)."""
        for name, ts in latest.items():
            if ts > self.last_ts.get(name, -np.inf):
                self.last_ts[name] = ts

    # --- disk budget ----------------------------------------------------------------------------------
    def enforce_budget(self, now: float) -> list[Event]:
        """Keep spool + outbox within the budget. drop_oldest: oldest raw windows first, then (only when
        nothing else is left) the oldest written-but-not-uploaded windows. drop_newest: refuse new readings
        (the service stops appending) — this only reports. Every drop is an event; nothing is dropped silently."""
        budget = self.plan.budget_bytes
        used = self._used()
        if used <= budget:
            return []
        events: list[Event] = []
        if self.plan.when_full == "drop_oldest":
            # raw readings first; written-but-not-uploaded windows only when nothing else is left
            stages = ((self.spool, "spool", "the raw readings of window"),
                      (self.outbox, "outbox", "the written, not yet uploaded window"))
            for holder, stage, what in stages:
                for end in holder.windows():
                    if used <= budget:
                        break
                    details = {"window_end": end, "stage": stage}
                    if holder is self.spool:
                        details["readings"] = self.spool.readings_in(end)
                    freed = holder.drop_window(end)
                    used -= freed
                    self.stats.bytes_dropped += freed
                    details["bytes"] = freed
                    window = iso_window(window_ending(end, self.plan.frequency))
                    events.append(Event("spool_dropped", stage, f"disk budget {budget} B reached: dropped {what} "
                                        f"{window} ({freed} B)", now, details))
        for ev in events:
            log.error("%s", ev.message)
        return events

    def _used(self) -> int:
        """Bytes counted against the budget: spool and outbox on disk plus readings held in memory after
        failed spool writes (so a disk that refuses writes cannot grow memory without bound)."""
        return self.spool.bytes_on_disk() + self.spool.held_bytes() + self.outbox.bytes_on_disk()

    def over_budget(self) -> bool:
        """Whether spool + outbox (+ held readings) exceed the budget. Called after every flush, so the folders
        are not listed and every file stat'ed each second: between two measures (``BUDGET_MEASURE_SECS``) the
        use is bounded from above by the last measure plus every byte this spool and outbox wrote since
        (deletions only lower it). Only when that bound crosses the budget is the disk measured again, so an
        answer "over" is always a measure, and an answer "within" is never wrong by more than what other
        writers (a reload's old runner draining) added within the last interval."""
        budget = self.plan.budget_bytes
        written = self.spool.bytes_written + self.outbox.bytes_written
        held = self.spool.held_bytes()
        if self._measured is not None and time.monotonic() < self._measure_due:
            on_disk, written_then = self._measured
            if on_disk + (written - written_then) + held <= budget:
                return False
        on_disk = self.spool.bytes_on_disk() + self.outbox.bytes_on_disk()
        self._measured = (on_disk, written)
        self._measure_due = time.monotonic() + BUDGET_MEASURE_SECS
        return on_disk + held > budget
