"""History backfill for one OPC-UA source: the gaps per node, read from the server's own history.

Gaps
    On every session (the first after a start, and every reconnect) the gap of a node runs from the last
    reading the agent holds for it to the first live reading of the new session, both excluded: the open
    interval (last held, first live). "Last held" is, at the first session, what the agent holds durably (the
    spool and the progress file, through :class:`BackfillPort`, so it survives kill -9), and afterwards the last
    live reading of the previous session. Only the sensors' good readings count; a node that never had one has
    no gap. The part of a gap older than ``max_age`` (before now − max_age, agent clock) is cut: counted as out
    of reach and logged once per session.

Reading
    connectors.opcua.history_read, on the live session's client, beside the subscription (a task of its own):
    live data never waits for it, and ``values_per_second`` bounds the load it adds. A node whose attributes say
    it keeps no history (AccessLevel without HistoryRead and Historizing false), or whose HistoryRead answers
    BadHistoryOperationUnsupported, BadNotReadable, ..., is noted once (one WARNING per node for the life of
    the process) and its gap stays empty: a gap is never invented.

Readings
    Stamped as the source's ``timestamp`` setting says (``source``: SourceTimestamp, else ServerTimestamp;
    ``server``: ServerTimestamp, else SourceTimestamp). The clock-skew guard for live readings (a timestamp too
    far from the received time is replaced by it) has no meaning for history; its counterpart here is the gap:
    a value whose timestamp is not inside the gap's open interval is dropped, never retimed, so nothing the
    agent already holds is written twice. A Bad/Uncertain value in the history ends the previous value's
    validity (a validity-end marker), as it does live. Readings go to the agent through ``BackfillPort.write``,
    which returns once they are durable (the spool, or the re-close of a window already written).

Progress
    ``<state-dir>/backfill/<source>.json`` (agent.core.atomic): per sensor its pending gaps as
    [start, end, done] (done: every history value at or before it is durable). It is written after each
    response's readings are durable, and before them the position they reach is recorded as ``writing``: a
    kill -9 between the two is settled at the next start by asking the port what it holds in (done, writing],
    so a resumed backfill never writes a value twice. Pending gaps of an earlier run are resumed at the next
    session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from asyncua import Client, ua

from agent.core.atomic import write_json_atomic
from agent.core.model import Reading, validity_end
from connectors.opcua.config import OpcUaSourceConfig
from connectors.opcua.history_read import Done, Failed, NoHistory, Page, RateLimit, Span, history_ts, read_raw
from connectors.opcua.session import _SEVERITY_MASK, _as_float, _describe, _status_name, _unix

_logger = logging.getLogger("connectors.opcua")

_HISTORY_READ_BIT = 0x04  # AccessLevel bit 2: HistoryRead


class BackfillPort(Protocol):
    """What the agent gives a backfill (agent.pipeline.backfill_port implements it)."""

    def last_held(self, sensors: list[str]) -> dict[str, float]:
        """Per sensor, the timestamp of the latest good reading the agent holds durably (absent: none)."""

    def latest_between(self, sensor: str, lo: float, hi: float) -> float | None:
        """The latest timestamp of a good reading of ``sensor`` in (lo, hi] the agent holds, or None."""

    def write(self, readings: list[Reading]) -> None:
        """Make ``readings`` durable (the spool, or a window already written re-closed); raises OSError."""


@dataclass
class BackfillStats:
    """Counters for status and /metrics (per source)."""

    values: int = 0                  # readings backfilled (written durably)
    gaps_filled: int = 0             # gaps read to their end
    out_of_reach_secs: float = 0.0   # gap time cut by max_age or without history on the server
    out_of_reach_gaps: int = 0       # gaps (or parts) that could not be filled
    no_history: set = field(default_factory=set)  # sensors whose node keeps no history
    last_error: str | None = None


class GapBook:
    """The durable per-sensor gaps (see the module docstring's Progress)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gaps: dict[str, list[list[float]]] = {}   # sensor → [[start, end, done], ...], oldest first
        self.writing: dict[str, float] = {}            # sensor → position being written (see Progress)
        self.totals: dict = {}                         # BackfillStats as last saved (cumulative over runs)
        try:
            data = json.loads(path.read_text())
            self.gaps = {s: [[float(x) for x in g] for g in gs] for s, gs in data.get("gaps", {}).items() if gs}
            self.writing = {s: float(t) for s, t in data.get("writing", {}).items()}
            self.totals = dict(data.get("totals") or {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            _logger.error("backfill progress %s unreadable (%s): earlier gaps are forgotten", path, exc)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"gaps": self.gaps, "writing": self.writing, "totals": self.totals})

    def add(self, sensor: str, start: float, end: float) -> None:
        self.gaps.setdefault(sensor, []).append([start, end, start])

    def pending(self) -> int:
        return sum(len(g) for g in self.gaps.values())

    def pending_secs(self) -> float:
        return sum(end - done for gs in self.gaps.values() for _, end, done in gs)

    def settle(self, port: BackfillPort) -> None:
        """After a kill -9 between a write and its progress: move ``done`` to what the agent holds."""
        for sensor, upto in self.writing.items():
            gaps = self.gaps.get(sensor)
            if gaps and upto > gaps[0][2]:  # only the first gap of a sensor is ever being written
                held = port.latest_between(sensor, gaps[0][2], min(upto, gaps[0][1]))
                if held is not None and held > gaps[0][2]:
                    gaps[0][2] = held
        self.writing = {}


class Backfill:
    """The gaps of one source and the task that fills them (owned by the OpcUaConnector)."""

    def __init__(self, config: OpcUaSourceConfig, clock, state_dir: Path | None) -> None:
        assert config.backfill is not None
        self.config = config
        self.settings = config.backfill
        self.clock = clock
        self.stats = BackfillStats()
        self.port: BackfillPort | None = None
        self.book: GapBook | None = None
        self._state_dir = state_dir
        self._last_live: dict[str, float] = {}     # sensor → last good live reading (this process)
        self._awaiting: set[str] = set()            # sensors whose first live reading of the session is due
        self._previous: dict[str, float] = {}       # gap starts for this session
        self._noted: set[str] = set()               # sensors already logged as without history
        self._checked: set[str] = set()             # sensors whose history attributes were read
        self._failed: set[str] = set()              # sensors whose read failed in this session (retried later)
        self._cut = [0, 0.0]                        # gaps cut by max_age since the last report, their seconds
        self._wake = asyncio.Event()
        # one durable write (spool + progress) per this many values, not per page: fsyncs cost more than reads
        self.commit_every = 20_000
        self._enabled = clock.speed == 1.0
        if not self._enabled:
            _logger.warning("OPC-UA source %s: backfill is off: the clock is scaled (--speed), so the server's "
                            "history is not on the agent's timeline", config.name)

    # ---- wiring

    def attach(self, port: BackfillPort, state_dir: Path) -> None:
        """Connect to the agent (agent.runtime.asset): where to write and where the progress lives."""
        self.port = port
        self._state_dir = Path(state_dir)
        self.book = GapBook(self._state_dir / "backfill" / f"{self.config.name}.json")
        self.book.settle(port)
        st, totals = self.stats, self.book.totals  # counters continue over restarts (`l4e-agent status`)
        st.values = int(totals.get("values", 0))
        st.gaps_filled = int(totals.get("gaps_filled", 0))
        st.out_of_reach_gaps = int(totals.get("out_of_reach_gaps", 0))
        st.out_of_reach_secs = float(totals.get("out_of_reach_secs", 0.0))
        self.book.totals = self._totals  # (nodes without history are checked again by every run)

    @property
    def active(self) -> bool:
        return self._enabled and self.port is not None and self.book is not None

    def pending(self) -> int:
        return self.book.pending() if self.book is not None else 0

    def busy(self) -> bool:
        """Whether readings are still coming: gaps pending that this session has not given up on."""
        return self.active and self.book is not None and any(s not in self._failed for s in self.book.gaps)

    def may_reach(self, connected: bool) -> bool:
        """Whether this backfill may still bring readings of a window written now: the session is down (its
        gap is still opening), a live reading that closes a gap is due, or gaps are pending."""
        return self.active and (not connected or bool(self._awaiting) or self.pending() > 0)

    def pending_secs(self) -> float:
        return self.book.pending_secs() if self.book is not None else 0.0

    # ---- live side (called from the connector's readings loop)

    def session_up(self, sensors: list[str], first: bool) -> None:
        """A session came up: the next good live reading of each sensor closes its gap."""
        if not self.active:
            return
        if first:
            held = self.port.last_held(sensors)
            self._previous = {s: max(held.get(s, -math.inf), self._last_live.get(s, -math.inf)) for s in sensors}
        else:
            self._previous = {s: self._last_live[s] for s in sensors if s in self._last_live}
        self._previous = {s: t for s, t in self._previous.items() if math.isfinite(t)}
        self._awaiting = set(self._previous)
        self._failed = set()
        if self.book.pending():
            self._wake.set()  # gaps of an earlier run: resume them now

    def observe(self, batch: list[Reading]) -> None:
        """Track the last good live reading per sensor; the first one of a session ends the sensor's gap."""
        if not self.active:
            return
        last = self._last_live
        awaiting = self._awaiting
        opened = False
        for r in batch:
            if r.value == r.value:
                if awaiting and r.sensor in awaiting:
                    awaiting.discard(r.sensor)
                    opened |= self._open_gap(r.sensor, self._previous.get(r.sensor), r.ts)
                last[r.sensor] = r.ts
        if opened:
            self._wake.set()

    def _open_gap(self, sensor: str, start: float | None, end: float) -> bool:
        if start is None or end <= start:
            return False
        cutoff = self.clock.now() - self.settings.max_age_secs
        if start < cutoff:
            cut = min(end, cutoff) - start
            self._out_of_reach(cut)
            self._cut[0] += 1
            self._cut[1] += cut
            start = cutoff
            if end <= start:
                return False
        if sensor in self.stats.no_history:
            self._out_of_reach(end - start)
            return False
        self.book.add(sensor, start, end)
        return True

    def _save(self) -> None:
        self.book.totals = self._totals
        self.book.save()

    @property
    def _totals(self) -> dict:
        st = self.stats
        return {"values": st.values, "gaps_filled": st.gaps_filled, "out_of_reach_gaps": st.out_of_reach_gaps,
                "out_of_reach_secs": round(st.out_of_reach_secs, 3), "no_history": sorted(st.no_history)}

    def _out_of_reach(self, secs: float) -> None:
        self.stats.out_of_reach_secs += secs
        self.stats.out_of_reach_gaps += 1

    # ---- the backfill task (one per session)

    async def run(self, client: Client, node_ids: dict[str, ua.NodeId]) -> None:
        """Fill pending gaps with this session's client until cancelled (at the session's end)."""
        if not self.active:
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.2)  # let the session's first notifications open the other gaps first
            try:
                await self._fill(client, node_ids)
                self.stats.last_error = None
            except (OSError, TimeoutError, ua.UaError) as exc:
                # the session is probably going down: the readings loop reconnects and the next session resumes
                self.stats.last_error = _describe(exc)
                _logger.info("OPC-UA source %s: backfill interrupted (%s); it resumes at the next session",
                             self.config.name, _describe(exc))
                return
            except Exception as exc:  # a bug: say so once; live data is not affected, the next session retries
                self.stats.last_error = _describe(exc)
                _logger.exception("OPC-UA source %s: backfill failed; it resumes at the next session",
                                  self.config.name)
                return

    async def _fill(self, client: Client, node_ids: dict[str, ua.NodeId]) -> None:
        book = self.book
        if self._cut[0]:  # one line per session, not one per node
            _logger.warning("OPC-UA source %s: %d gap(s) reach back further than max_age %s: %.0f s in total will "
                            "not be filled", self.config.name, self._cut[0], self.settings.max_age, self._cut[1])
            self._cut = [0, 0.0]
        self._save()  # the gaps just opened are durable before any reading is written for them
        sensors = [s for s in book.gaps if s in node_ids and s not in self._failed]
        await self._check_history(client, {s: node_ids[s] for s in sensors})
        spans = [Span(s, node_ids[s], book.gaps[s][0][2], book.gaps[s][0][1]) for s in sensors if s in book.gaps]
        if not spans:
            return
        use_server = self.config.timestamp == "server"
        pending: list[tuple[str, list[Reading], float]] = []
        finished: list[str] = []
        count = 0
        commit_every = max(self.commit_every, self.settings.values_per_request)
        limit = RateLimit(self.settings.values_per_second)
        pages = read_raw(client, spans, self.settings.values_per_request, self.settings.nodes_per_request, limit)
        async with aclosing(pages):  # an error writing the readings closes the read: its points are released
            async for item in pages:
                if isinstance(item, Page):
                    readings = self._readings(item, use_server)
                    pending.append((item.key, readings, item.last_ts))
                    count += len(readings)
                elif isinstance(item, Done):
                    finished.append(item.key)
                elif isinstance(item, NoHistory):
                    self._no_history(item.key, item.status)
                elif isinstance(item, Failed):
                    self._failed.add(item.key)
                    self.stats.last_error = f"{item.key}: {item.status}"
                    _logger.info("OPC-UA source %s: sensor %s: history read answered %s; retried at the next "
                                 "session", self.config.name, item.key, item.status)
                if count >= commit_every:
                    self._commit(pending, finished)
                    pending, finished, count = [], [], 0
        self._commit(pending, finished)
        if any(s in node_ids and s not in self._failed for s in book.gaps):
            self._wake.set()  # the next gap of a sensor that had several

    def _readings(self, page: Page, use_server: bool) -> list[Reading]:
        gap = self.book.gaps[page.key][0]
        start, end = gap[2], gap[1]
        out = []
        for dv in page.values:
            stamp = dv.ServerTimestamp if use_server and dv.ServerTimestamp is not None else None
            ts = _unix(stamp) if stamp is not None else history_ts(dv)
            if ts is None or not start < ts < end:
                continue  # outside the gap: the agent holds that time already
            status = dv.StatusCode
            if status is not None and status.value & _SEVERITY_MASK:
                out.append(validity_end(page.key, ts))
                continue
            number = _as_float(dv.Value.Value if dv.Value is not None else None)
            if number is not None:
                out.append(Reading(page.key, number, ts))
        return out

    def _commit(self, pending: list[tuple[str, list[Reading], float]], finished: list[str]) -> None:
        """Write the pages durably, then advance the progress, close the finished gaps and save (see the module
        docstring)."""
        if not pending and not finished:
            return
        book = self.book
        readings = [r for _, rs, _ in pending for r in rs]
        if readings:
            for key, _, upto in pending:
                book.writing[key] = max(upto, book.writing.get(key, upto))
            self._save()
            self.port.write(readings)
        for key, _, upto in pending:
            gap = book.gaps[key][0]
            gap[2] = max(gap[2], min(upto, gap[1]))
        for key in finished:
            gaps = book.gaps.get(key)
            if gaps:
                gaps.pop(0)
                if not gaps:
                    del book.gaps[key]
                self.stats.gaps_filled += 1
        self.stats.values += sum(1 for r in readings if r.value == r.value)
        book.writing = {}
        self._save()

    def _no_history(self, sensor: str, status: str) -> None:
        """The node keeps no history: its gaps stay empty (noted once per node)."""
        gaps = self.book.gaps.pop(sensor, [])
        for _, end, done in gaps:
            self._out_of_reach(end - done)
        self._save()
        self.stats.no_history.add(sensor)
        if sensor not in self._noted:
            self._noted.add(sensor)
            _logger.warning("OPC-UA source %s: sensor %s: the server keeps no history for this node (%s); its "
                            "gaps stay empty", self.config.name, sensor, status)

    async def _check_history(self, client: Client, node_ids: dict[str, ua.NodeId]) -> None:
        """Read AccessLevel and Historizing of nodes not checked yet; a node with neither keeps no history."""
        todo = [s for s in node_ids if s not in self.stats.no_history and s not in self._checked]
        if not todo:
            return
        ids = [node_ids[s] for s in todo]
        access = await client.uaclient.read_attributes(ids, ua.AttributeIds.AccessLevel)
        historizing = await client.uaclient.read_attributes(ids, ua.AttributeIds.Historizing)
        for sensor, acc, hist in zip(todo, access, historizing, strict=True):
            self._checked.add(sensor)
            readable = acc.Value is not None and isinstance(acc.Value.Value, int) \
                and bool(acc.Value.Value & _HISTORY_READ_BIT)
            keeps = hist.Value is not None and hist.Value.Value is True
            if not readable and not keeps:
                self._no_history(sensor, f"AccessLevel without HistoryRead, Historizing "
                                         f"{'false' if hist.Value is not None else _status_name(hist.StatusCode)}")
