"""The inference scheduler loop: on each tick, every RUNNING scheduler runs the windows that are due.

"Scheduling decides when to wake, never what to do": a tick reads the clock and the persisted
``_last_end`` (end of the last window run) of each scheduler and runs the windows (start, end] on the
DataUploadFrequency grid with ``_last_end < end`` and ``end + DataDelayOffsetInMinutes ≤ now``, oldest
first, advancing ``_last_end`` in the same transaction that records the execution. So a late tick, a
restart or an accelerated clock run the same code, and a restart catches up. Catch-up is bounded: windows
before the scheduler was (re)started are never run (``_last_end`` starts at the grid point at or before the
start), and after a long outage at most MAX_CATCH_UP windows are run, the older ones skipped with a log line.

Status moves here too: PENDING → RUNNING, STOPPING → STOPPED.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from agent.core.errors import L4EAgentError
from agent.core.model import Window
from agent.detection import ModelFormatError
from agent.lookout_local import artifacts
from agent.lookout_local.context import Context
from agent.lookout_local.errors import ApiError
from agent.lookout_local.inference import InferenceFailed, InputConfig, run_window
from agent.lookout_local.modeling import TrainedModel
from agent.lookout_local.schema import parse_schema
from agent.lookout_local.ticker import Ticker
from agent.pipeline.windows import UPLOAD_FREQUENCIES, parse_offset, windows_between

log = logging.getLogger(__name__)

MAX_CATCH_UP = 288       # windows per scheduler after an outage (a day of 5-minute windows)
MAX_PER_TICK = 24        # windows per scheduler per tick, so stop requests and other schedulers are not starved


def input_config(doc: dict) -> InputConfig:
    """The scheduler's DataInputConfiguration with the SDK's defaults (delimiter ``_``, ``yyyyMMddHHmmss``,
    ``+00:00``): the service's own defaults are unconfirmed (README, L4E contract §2)."""
    inp = doc["DataInputConfiguration"]
    s3 = inp["S3InputConfiguration"]
    names = inp.get("InferenceInputNameConfiguration") or {}
    return InputConfig(
        bucket=s3["Bucket"], prefix=s3.get("Prefix", ""),
        delimiter=names.get("ComponentTimestampDelimiter", "_"),
        timestamp_format=names.get("TimestampFormat", "yyyyMMddHHmmss"),
        offset_secs=parse_offset(inp.get("InputTimeZoneOffset") or "+00:00"),
    )


PRUNE_EVERY_SECS = 600.0  # wall seconds between two passes of the retention rule


def prune_executions(ctx: Context) -> int:
    """With ``keep_executions_days``: delete the finished executions whose window started more than that many
    days before now (service clock); their results objects stay in the customer's bucket. Returns the count."""
    if ctx.keep_executions_days is None:
        return 0
    deleted = ctx.state.prune_executions(float(ctx.clock.now()) - 86400.0 * ctx.keep_executions_days)
    if deleted:
        log.info("retention: deleted %d executions older than %g days", deleted, ctx.keep_executions_days)
    return deleted


class Scheduler(Ticker):
    """A daemon thread ticking every ``tick_secs`` wall seconds (agent.lookout_local.ticker)."""

    thread_name = "l4e-local-scheduler"

    def __init__(self, ctx: Context, tick_secs: float = 0.2) -> None:
        super().__init__(tick_secs)
        self.ctx = ctx
        self._models = ModelCache(ctx)
        self._next_prune = 0.0  # the first tick applies the retention rule

    def tick_failed(self, exc: Exception) -> None:  # a bad scheduler must not stop the others on the next tick
        log.error("scheduler tick failed", exc_info=exc)

    def tick(self) -> int:
        """One pass over all schedulers; returns the number of executions recorded."""
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECS
            prune_executions(self.ctx)
        count = 0
        for doc in self.ctx.state.all("inference-scheduler"):
            if self._stop.is_set():
                break
            count += self._tick_one(doc["InferenceSchedulerName"])
        return count

    def _tick_one(self, name: str) -> int:
        state = self.ctx.state
        with state.transaction():
            doc = state.get("inference-scheduler", name)
            if doc is None:
                return 0
            if move_status(doc, self.ctx.clock):
                self._save(doc)
        if doc["Status"] != "RUNNING":
            return 0
        count = 0
        for window in due_windows(doc, float(self.ctx.clock.now()))[:MAX_PER_TICK]:
            if self._stop.is_set() or not self._run_window(name, window):
                break
            count += 1
        return count

    def _save(self, doc: dict) -> None:
        self.ctx.state.put("inference-scheduler", doc["InferenceSchedulerName"], doc["InferenceSchedulerArn"],
                           doc["CreatedAt"], doc)

    def _run_window(self, name: str, window: Window) -> bool:
        """Run one window and record it; False when the scheduler changed meanwhile (stopped, deleted)."""
        doc = self.ctx.state.get("inference-scheduler", name)
        if doc is None or doc["Status"] != "RUNNING":
            return False
        execution = window_execution(self.ctx, doc, window)
        # visible as IN_PROGRESS while it runs; a crash leaves it so and the restart re-runs the window
        # (``_last_end`` has not moved), overwriting the same results key
        self.ctx.state.put_execution(name, float(window.start), {**execution, "Status": "IN_PROGRESS"})
        execution, anomalous = perform(self.ctx, self._models, execution, window)
        with self.ctx.state.transaction():
            doc = self.ctx.state.get("inference-scheduler", name)
            if doc is None:
                return False
            self.ctx.state.put_execution(name, float(window.start), execution)
            doc["_last_end"] = max(int(doc["_last_end"]), window.end)
            if anomalous is not None:
                doc["LatestInferenceResult"] = "ANOMALOUS" if anomalous else "NORMAL"
            self._save(doc)
        return True


class ModelCache:
    """Trained models by (name, ARN), the ``size`` most recently used: a model is loaded once per process
    while in use, a re-created model of the same name (new ARN) is loaded afresh, and a fleet worker that
    sees thousands of models keeps a bounded number in memory."""

    def __init__(self, ctx: Context, size: int = 64) -> None:
        self.ctx = ctx
        self.size = size
        self._models: OrderedDict[tuple[str, str], tuple[TrainedModel, list]] = OrderedDict()

    def get(self, name: str) -> tuple[TrainedModel, list]:
        model = self.ctx.state.get("model", name)
        if model is None:
            raise KeyError(f"model {name!r} does not exist")
        key = (name, model["ModelArn"])
        if key in self._models:
            self._models.move_to_end(key)
        else:
            folder = artifacts.fetch(self.ctx, "model", name, self.ctx.model_dir(name))
            self._models[key] = (TrainedModel.load(folder), parse_schema(model["Schema"]))
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return self._models[key]


def move_status(doc: dict, clock) -> bool:
    """PENDING → RUNNING, STOPPING → STOPPED (in place); True when the status changed."""
    if doc["Status"] not in ("PENDING", "STOPPING"):
        return False
    doc["Status"] = "RUNNING" if doc["Status"] == "PENDING" else "STOPPED"
    doc["UpdatedAt"] = float(clock.now())
    return True


def due_windows(doc: dict, now: float) -> list[Window]:
    """The windows of a RUNNING scheduler due at ``now`` (after ``_last_end``, end + delay ≤ now), oldest
    first, at most MAX_CATCH_UP (older ones are skipped with a log line)."""
    step = UPLOAD_FREQUENCIES[doc["DataUploadFrequency"]]
    delay = 60 * int(doc.get("DataDelayOffsetInMinutes") or 0)
    due = list(windows_between(int(doc["_last_end"]), int((now - delay) // step) * step, step))
    if len(due) > MAX_CATCH_UP:
        log.warning("scheduler %s: skipping %d windows older than the catch-up bound", doc["InferenceSchedulerName"],
                    len(due) - MAX_CATCH_UP)
        due = due[-MAX_CATCH_UP:]
    return due


def window_execution(ctx: Context, doc: dict, window: Window) -> dict:
    """The execution document of ``window`` for scheduler ``doc`` (no Status yet): what the scheduler's
    configuration is when the execution is created is what it runs with."""
    delay = 60 * int(doc.get("DataDelayOffsetInMinutes") or 0)
    model_doc = ctx.state.get("model", doc["ModelName"])
    return {
        "ModelName": doc["ModelName"], "ModelArn": doc["ModelArn"],
        "InferenceSchedulerName": doc["InferenceSchedulerName"],
        "InferenceSchedulerArn": doc["InferenceSchedulerArn"], "ScheduledStartTime": float(window.end + delay),
        "DataStartTime": float(window.start), "DataEndTime": float(window.end),
        "DataInputConfiguration": doc["DataInputConfiguration"],
        "DataOutputConfiguration": doc["DataOutputConfiguration"],
        "ModelVersion": (model_doc or {}).get("ActiveModelVersion", 1),
        "ModelVersionArn": (model_doc or {}).get("ActiveModelVersionArn"),
    }


def perform(ctx: Context, models: ModelCache, execution: dict, window: Window) -> tuple[dict, bool | None]:
    """Run an execution (a ``window_execution`` document): returns it completed (SUCCESS with
    CustomerResultObject, or FAILED with FailedReason) and whether any result line is anomalous (None when
    it failed). The results key and bytes depend only on the window, the input and the model, so a re-run
    writes the same object."""
    execution = {k: v for k, v in execution.items() if k not in ("Status", "FailedReason", "CustomerResultObject")}
    out = execution["DataOutputConfiguration"]["S3OutputConfiguration"]
    anomalous = None
    started = time.monotonic()
    try:
        cfg = input_config(execution)
        model, components = models.get(execution["ModelName"])
        key, anomalous = run_window(ctx.stores.bucket(cfg.bucket), ctx.stores.bucket(out["Bucket"]), cfg,
                                    out.get("Prefix", ""), components, model, window, window.end - window.start)
        execution.update(Status="SUCCESS", CustomerResultObject={"Bucket": out["Bucket"], "Key": key})
    except (InferenceFailed, ModelFormatError) as exc:  # the data's or the model's fault: its own words
        execution.update(Status="FAILED", FailedReason=str(exc)[:5000])
    except (ApiError, L4EAgentError, OSError, ValueError, KeyError) as exc:
        log.exception("scheduler %s window %s", execution["InferenceSchedulerName"], window)
        execution.update(Status="FAILED", FailedReason=f"Internal error: {type(exc).__name__}: {exc}"[:5000])
    log.debug("scheduler %s window (%s, %s] %s in %.3fs", execution["InferenceSchedulerName"], window.start,
              window.end, execution["Status"], time.monotonic() - started)
    return execution, anomalous
