"""Inference results back to the gateway: executions / results.jsonl → Result rows, with a persisted cursor.

Two ways to find results (README: L4E contract §5, Decisions rule 6):

- API: with a scheduler name and a client, ListInferenceExecutions (all pages) with DataStartTimeAfter = the
  cursor, handled oldest DataStartTime first. SUCCESS → the CustomerResultObject is fetched through the
  object store (S3, or the ``[lookout] store`` folder mapping), parsed, and handed over; FAILED → an
  ``execution_failed`` event with the FailedReason; IN_PROGRESS → this poll stops there (nothing after it
  is handled before it finishes).
- Listing: without a scheduler name or client (or while the API is unreachable) but with ``[lookout] output``,
  the output prefix is listed: ``<prefix><yyyy-MM-ddTHH:mm:ssZ>/results.jsonl``, handled in window order.
  A FAILED execution leaves no object, so it is not seen this way.

One broken entry never stalls the rest: an execution summary without a usable DataStartTime, or a key under
the output prefix whose folder name is not a real instant (``2026-02-30T00:00:00Z/``), is skipped with one
WARNING (once per entry, not per poll); the entries after it are handled in order. A results object that
cannot be read right now (a folder store that answers EIO, a directory where the object should be) stops the
poll at that execution and is retried; that outage is one WARNING when it starts and one INFO when it ends.

The cursor is the DataStartTime (Unix seconds) of the last execution handled, kept in
``<state_dir>/results_cursor.json`` (tmp, fsync, rename). Per execution: ``await on_results(rows)``, then
``await on_event(execution_succeeded)``, then the cursor is saved. So a restart handles nothing twice and skips
nothing; a crash in the gap between the callbacks and the save hands that one execution over again
(the alarm engine ignores rows at or before its last processed ts). An exception from a callback propagates
and leaves the cursor where it was: the next poll tries the same execution again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.config import LookoutConfig
from agent.core.atomic import write_json_atomic
from agent.core.clock import Clock, iso_utc, parse_instant
from agent.core.errors import ConfigError, LookoutError, StoreError, StoreUnavailable, TransitionLog
from agent.core.model import Diagnostic, Event, Result
from agent.lookout.client import LookoutUnavailable, bucket_store, call, store_of
from agent.pipeline.store import ObjectStore, open_location

log = logging.getLogger("l4e.results")

CURSOR_FILE = "results_cursor.json"
REASONS = frozenset({"ANOMALY_DETECTED", "NO_ANOMALY_DETECTED", "MACHINE_OFF"})
_RESULTS_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)/results\.jsonl$")
PAGE_SIZE = 100

OnResults = Callable[[list[Result]], Awaitable[object]]
OnEvent = Callable[[Event], Awaitable[object]]


# --------------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------------


def _number(value) -> float | None:
    """A finite JSON number (not a bool) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_line(line: str, window_start: int | None) -> Result:
    """One results.jsonl line → Result. Raises ValueError (or TypeError/KeyError) when malformed:
    not a JSON object, ``timestamp`` not an ISO instant, ``prediction`` not 0/1, ``prediction_reason`` not
    one of REASONS, ``anomaly_score`` present but not a number, ``diagnostics`` not a list of
    {"name": str, "value": number}. ``timestamp`` without a zone is UTC (rule 4)."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    ts_text = doc["timestamp"]
    if not isinstance(ts_text, str):
        raise TypeError("timestamp is not a string")
    ts = parse_instant(ts_text)
    prediction = doc["prediction"]
    if isinstance(prediction, bool) or prediction not in (0, 1):
        raise ValueError(f"prediction {prediction!r} is not 0 or 1")
    reason = doc["prediction_reason"]
    if reason not in REASONS:
        raise ValueError(f"prediction_reason {reason!r}")
    score = doc.get("anomaly_score")
    if score is not None and (score := _number(score)) is None:
        raise TypeError("anomaly_score is not a number")
    raw = doc.get("diagnostics") or []
    if not isinstance(raw, list):
        raise TypeError("diagnostics is not a list")
    diagnostics = []
    for item in raw:
        value = _number(item.get("value")) if isinstance(item, dict) else None
        if value is None or not isinstance(item.get("name"), str):
            raise TypeError(f"diagnostic {item!r} is not {{'name': str, 'value': number}}")
        diagnostics.append(Diagnostic(item["name"], value))
    return Result(ts=ts, prediction=int(prediction), reason=reason, score=score,
                  diagnostics=tuple(diagnostics), window_start=window_start)


def parse_results_jsonl(data: bytes, window_start: int) -> tuple[list[Result], int]:
    """A results.jsonl object → (rows in file order, number of malformed lines skipped).

    Blank lines (the file ends with a newline) are not counted; undecodable bytes make only their own line
    malformed. ``window_start`` (Unix s, the execution's DataStartTime) is stamped on every row."""
    rows, bad = [], 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rows.append(parse_line(raw.decode("utf-8"), window_start))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, OverflowError):
            bad += 1
    return rows, bad


# --------------------------------------------------------------------------------------------------------
# the poller
# --------------------------------------------------------------------------------------------------------


@dataclass
class PollerStats:
    """Counters since the poller was made (not persisted)."""

    results_processed: int = 0    # rows handed to on_results
    malformed_lines: int = 0
    missing_objects: int = 0      # SUCCESS executions whose results object is absent
    executions_succeeded: int = 0
    executions_failed: int = 0
    polls: int = 0
    poll_errors: int = 0          # polls cut short by an unreachable API or store


@dataclass(frozen=True)
class _Item:
    """One execution (API) or one results object (listing), normalised."""

    start: int
    end: int | None
    status: str                   # SUCCESS | FAILED | IN_PROGRESS
    bucket: str | None = None     # API: CustomerResultObject
    key: str | None = None
    reason: str = ""
    ran_at: float | None = None   # ScheduledStartTime


def _epoch(value) -> float:
    """boto3 gives datetimes; the cache/listing gives numbers."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _execution_item(e: dict) -> _Item:
    """One ListInferenceExecutions summary → _Item. Raises KeyError/TypeError/ValueError when it has no
    usable DataStartTime (or another time field is not a time)."""
    obj = e.get("CustomerResultObject") or {}
    return _Item(int(_epoch(e["DataStartTime"])), int(_epoch(e["DataEndTime"])) if e.get("DataEndTime") else None,
                 e.get("Status", "IN_PROGRESS"), obj.get("Bucket"), obj.get("Key"), e.get("FailedReason", ""),
                 _epoch(e["ScheduledStartTime"]) if e.get("ScheduledStartTime") else None)


class _AssetLog(logging.LoggerAdapter):
    """Prefix every line with the asset name."""

    def process(self, msg, kwargs):
        return f"{self.extra['asset']}: {msg}", kwargs


class ResultsPoller:
    """Polls one asset's results. ``poll_once`` is the whole job; call it periodically (e.g. every minute).

    lookout: the (discovered) scheduler settings: ``scheduler``, ``output``, ``store``, ``upload_frequency``.
    client: a boto3 lookoutequipment client (None → listing mode). s3_client_factory: makes the S3 client
    when a bucket lives in S3. initial_lookback_secs: without a saved cursor, the first poll starts this
    many clock seconds before now (so attaching to an old scheduler does not replay its whole history).
    Raises ConfigError when there is neither (scheduler name and client) nor ``lookout.output``. No I/O here.
    """

    def __init__(self, asset: str, lookout: LookoutConfig, state_dir: Path, clock: Clock, client=None,
                 s3_client_factory=None, *, initial_lookback_secs: float = 86400.0) -> None:
        self.asset = asset
        self.lookout = lookout
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.client = client
        self.s3_client_factory = s3_client_factory
        self.initial_lookback_secs = initial_lookback_secs
        self.stats = PollerStats()
        self._cursor_path = self.state_dir / CURSOR_FILE
        self._cursor: int | None = None
        self._cursor_loaded = False
        self._stores: dict[str, ObjectStore] = {}
        self._listing: tuple[ObjectStore, str] | None = None
        self._log = _AssetLog(log, {"asset": asset})  # two assets' pollers must be told apart in the log
        self._trouble = TransitionLog(self._log)
        self._skipped: set[str] = set()  # broken entries already reported (each is logged once, not per poll)
        self._lock = asyncio.Lock()  # two overlapping polls would hand the same execution over twice
        if not (lookout.scheduler and client is not None) and lookout.output is None:
            raise ConfigError("results need either a scheduler name and an API client, or an output location",
                              key="lookout.output")

    # -- cursor ----------------------------------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        """DataStartTime (Unix s) of the last execution handled; None before the first one."""
        if not self._cursor_loaded:
            self._cursor = self._load_cursor()
            self._cursor_loaded = True
        return self._cursor

    def _load_cursor(self) -> int | None:
        try:
            doc = json.loads(self._cursor_path.read_text())
            return int(doc["last_start"]) if doc.get("last_start") is not None else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A corrupt cursor must not stop results: start from the lookback (the engine de-duplicates rows).
            self._log.error("results cursor %s unreadable (%s): starting from the lookback", self._cursor_path, exc)
            return None

    def _save_cursor(self, start: int) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # on a full disk the old cursor stays as it was (the execution is handled again, rows de-duplicated)
        write_json_atomic(self._cursor_path, {"last_start": start, "last_start_iso": iso_utc(start),
                                              "scheduler": self.lookout.scheduler})
        self._cursor = start

    def _after(self) -> float:
        """Handle executions with DataStartTime strictly after this."""
        cursor = self.cursor
        return cursor if cursor is not None else self.clock.now() - self.initial_lookback_secs

    # -- polling ---------------------------------------------------------------------------------------

    async def poll_once(self, on_results: OnResults, on_event: OnEvent) -> int:
        """Handle every new execution in order; returns how many were handled (succeeded, failed or missing
        object). Stops early, without raising, at an IN_PROGRESS execution or when the API or store is
        unreachable or refuses (logged once per outage; counted in ``stats.poll_errors``); the next poll
        resumes. Exceptions from ``on_results``/``on_event`` propagate (the cursor stays before that
        execution). Overlapping calls on one instance run one after the other."""
        async with self._lock:
            return await self._poll(on_results, on_event)

    async def _poll(self, on_results: OnResults, on_event: OnEvent) -> int:
        self.stats.polls += 1
        try:
            items = await self._items()
        except (LookoutError, StoreError) as exc:
            # unreachable or refused (access denied, unknown scheduler): nothing is lost by waiting; the
            # cursor stays and the next poll tries again
            self.stats.poll_errors += 1
            self._trouble.failure("list", "results: cannot list new results (%s); retrying next poll", exc)
            return 0
        self._trouble.success("list", "results: listing works again")
        handled = 0
        for item in items:
            if item.status == "IN_PROGRESS":
                break  # never advance past a window still being scored
            try:
                await self._handle(item, on_results, on_event)
            except StoreUnavailable as exc:
                self.stats.poll_errors += 1
                self._trouble.failure("get", "results: cannot read results object %s of window %s (%s); "
                                      "retrying next poll", item.key, iso_utc(item.start), exc)
                break
            self._trouble.success("get", "results: reading results works again")
            handled += 1
        return handled

    async def _items(self) -> list[_Item]:
        after = self._after()
        if self.lookout.scheduler and self.client is not None:
            try:
                items = await asyncio.to_thread(self._list_executions, after)
                self._trouble.success("api", "results: Lookout API reachable again")
                return items
            except LookoutUnavailable:
                if self.lookout.output is None:
                    raise
                # the output prefix holds the same windows: keep alarms flowing while the API is away
                self._trouble.failure("api", "results: Lookout API unreachable: listing %s instead",
                                      self.lookout.output)
                return await asyncio.to_thread(self._list_output, after)
        return await asyncio.to_thread(self._list_output, after)

    def _list_executions(self, after: float) -> list[_Item]:
        """All executions with DataStartTime > after, oldest first (blocking)."""
        items, token = [], None
        since = datetime.fromtimestamp(after, UTC)
        while True:
            kwargs = {"InferenceSchedulerName": self.lookout.scheduler, "DataStartTimeAfter": since,
                      "MaxResults": PAGE_SIZE}
            if token:
                kwargs["NextToken"] = token
            page = call(self.client, "list_inference_executions", **kwargs)
            for e in page.get("InferenceExecutionSummaries", []):
                try:
                    item = _execution_item(e)
                except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
                    self._skip(repr(e)[:300], "results: execution summary %s is unusable (%s): skipped",
                               repr(e)[:300], exc)
                    continue
                if item.start <= after:
                    continue  # the filter may be inclusive (the local service's is): already handled
                items.append(item)
            token = page.get("NextToken")
            if not token:
                break
        items.sort(key=lambda i: i.start)
        return items

    def _skip(self, ident: str, message: str, *args) -> None:
        """Report a broken entry once (it is skipped at every poll; the entries after it are handled)."""
        if ident not in self._skipped:
            self._skipped.add(ident)
            self._log.warning(message, *args)

    def _output_store(self) -> tuple[ObjectStore, str]:
        if self._listing is None:
            self._listing = open_location(self.lookout.output, self.s3_client_factory)
        return self._listing

    def _list_output(self, after: float) -> list[_Item]:
        """Results objects under the output prefix with a window start > after, oldest first (blocking)."""
        store, prefix = self._output_store()
        frequency = self.lookout.frequency_secs if self.lookout.upload_frequency else None
        items = []
        for key in store.list(prefix):
            m = _RESULTS_NAME.match(key[len(prefix):])
            if not m:
                continue
            try:
                start = int(parse_instant(m.group(1)))
            except (ValueError, OverflowError) as exc:  # 2026-02-30T…: the name's shape, not a real instant
                self._skip(key, "results: %s%s does not name a real window start (%s): skipped",
                           store.describe(), key, exc)
                continue
            if start > after:
                items.append(_Item(start, start + frequency if frequency else None, "SUCCESS", None, key))
        items.sort(key=lambda i: i.start)
        return items

    def _store_for(self, item: _Item) -> ObjectStore:
        if item.bucket is None:
            return self._output_store()[0]
        if item.bucket not in self._stores:
            self._stores[item.bucket] = bucket_store(item.bucket, store_of(self.lookout), self.s3_client_factory)
        return self._stores[item.bucket]

    async def _handle(self, item: _Item, on_results: OnResults, on_event: OnEvent) -> None:
        details = {"window_start": item.start, "window_end": item.end}
        when = item.ran_at if item.ran_at is not None else self.clock.now()
        if item.status == "FAILED":
            self.stats.executions_failed += 1
            await on_event(Event("execution_failed", self.asset, item.reason or "execution failed", when, details))
        elif item.status == "SUCCESS":
            await self._succeeded(item, details, when, on_results, on_event)
        else:
            self._log.warning("results: execution for window %s has unknown status %r: skipped", iso_utc(item.start),
                        item.status)
        await asyncio.to_thread(self._save_cursor, item.start)

    async def _succeeded(self, item: _Item, details: dict, when: float, on_results: OnResults,
                         on_event: OnEvent) -> None:
        if item.key is None:
            self.stats.missing_objects += 1
            self._log.warning("results: execution for window %s succeeded without a results object: skipped",
                        iso_utc(item.start))
            return
        store = self._store_for(item)
        try:
            data = await asyncio.to_thread(store.get, item.key)
        except KeyError:
            self.stats.missing_objects += 1
            self._log.warning("results: %s%s is missing (window %s): skipped", store.describe(), item.key,
                        iso_utc(item.start))
            return
        except StoreUnavailable:
            raise
        except StoreError as exc:  # access denied and the like: retrying will not help
            self.stats.missing_objects += 1
            self._log.error("results: cannot read %s%s (%s): skipped", store.describe(), item.key, exc)
            return
        rows, bad = parse_results_jsonl(data, item.start)
        if bad:
            self.stats.malformed_lines += bad
            self._log.warning("results: %s: %d malformed line(s) skipped, %d kept", item.key, bad, len(rows))
        if rows:
            await on_results(rows)
        self.stats.results_processed += len(rows)
        self.stats.executions_succeeded += 1
        scores = [r.score for r in rows if r.score is not None]
        details.update(rows=len(rows), max_score=max(scores) if scores else None,
                       anomalous=sum(r.prediction for r in rows))
        await on_event(Event("execution_succeeded", self.asset,
                             f"{len(rows)} result rows for window {iso_utc(item.start)}", when, details))
