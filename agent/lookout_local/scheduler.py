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
import threading
import time

from agent.errors import L4EAgentError
from agent.lookout_local.context import Context
from agent.lookout_local.errors import ApiError
from agent.lookout_local.inference import InferenceFailed, InputConfig, run_window
from agent.lookout_local.modeling import TrainedModel
from agent.lookout_local.schema import parse_schema
from agent.model import Window
from agent.windows import UPLOAD_FREQUENCIES, parse_offset, windows_between

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


class Scheduler:
    """A daemon thread ticking every ``tick_secs`` wall seconds."""

    def __init__(self, ctx: Context, tick_secs: float = 0.2) -> None:
        self.ctx = ctx
        self.tick_secs = tick_secs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._models: dict[tuple[str, str], tuple[TrainedModel, object]] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="l4e-local-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad scheduler must not stop the others on the next tick
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick_secs)

    def tick(self) -> int:
        """One pass over all schedulers; returns the number of executions recorded."""
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
            if doc["Status"] in ("PENDING", "STOPPING"):
                doc["Status"] = "RUNNING" if doc["Status"] == "PENDING" else "STOPPED"
                doc["UpdatedAt"] = float(self.ctx.clock.now())
                self._save(doc)
        if doc["Status"] != "RUNNING":
            return 0
        step = UPLOAD_FREQUENCIES[doc["DataUploadFrequency"]]
        delay = 60 * int(doc.get("DataDelayOffsetInMinutes") or 0)
        now = float(self.ctx.clock.now())
        due = list(windows_between(int(doc["_last_end"]), int((now - delay) // step) * step, step))
        if len(due) > MAX_CATCH_UP:
            log.warning("scheduler %s: skipping %d windows older than the catch-up bound", name,
                        len(due) - MAX_CATCH_UP)
            due = due[-MAX_CATCH_UP:]
        count = 0
        for window in due[:MAX_PER_TICK]:
            if self._stop.is_set() or not self._run_window(name, window):
                break
            count += 1
        return count

    def _save(self, doc: dict) -> None:
        self.ctx.state.put("inference-scheduler", doc["InferenceSchedulerName"], doc["InferenceSchedulerArn"],
                           doc["CreatedAt"], doc)

    def _model(self, name: str) -> TrainedModel:
        model = self.ctx.state.get("model", name)
        key = (name, model["ModelArn"])
        if key not in self._models:
            self._models[key] = (TrainedModel.load(self.ctx.model_dir(name)), parse_schema(model["Schema"]))
        return self._models[key]

    def _run_window(self, name: str, window: Window) -> bool:
        """Run one window and record it; False when the scheduler changed meanwhile (stopped, deleted)."""
        doc = self.ctx.state.get("inference-scheduler", name)
        if doc is None or doc["Status"] != "RUNNING":
            return False
        step = UPLOAD_FREQUENCIES[doc["DataUploadFrequency"]]
        delay = 60 * int(doc.get("DataDelayOffsetInMinutes") or 0)
        out = doc["DataOutputConfiguration"]["S3OutputConfiguration"]
        model_doc = self.ctx.state.get("model", doc["ModelName"])
        execution = {
            "ModelName": doc["ModelName"], "ModelArn": doc["ModelArn"], "InferenceSchedulerName": name,
            "InferenceSchedulerArn": doc["InferenceSchedulerArn"], "ScheduledStartTime": float(window.end + delay),
            "DataStartTime": float(window.start), "DataEndTime": float(window.end),
            "DataInputConfiguration": doc["DataInputConfiguration"],
            "DataOutputConfiguration": doc["DataOutputConfiguration"],
            "ModelVersion": (model_doc or {}).get("ActiveModelVersion", 1),
            "ModelVersionArn": (model_doc or {}).get("ActiveModelVersionArn"),
        }
        # visible as IN_PROGRESS while it runs; a crash leaves it so and the restart re-runs the window
        # (``_last_end`` has not moved), overwriting the same results key
        self.ctx.state.put_execution(name, float(window.start), {**execution, "Status": "IN_PROGRESS"})
        anomalous = None
        started = time.monotonic()
        try:
            cfg = input_config(doc)
            model, components = self._model(doc["ModelName"])
            key, anomalous = run_window(self.ctx.stores.bucket(cfg.bucket), self.ctx.stores.bucket(out["Bucket"]),
                                        cfg, out.get("Prefix", ""), components, model, window, step)
            execution.update(Status="SUCCESS", CustomerResultObject={"Bucket": out["Bucket"], "Key": key})
        except InferenceFailed as exc:
            execution.update(Status="FAILED", FailedReason=str(exc)[:5000])
        except (ApiError, L4EAgentError, OSError, ValueError, KeyError) as exc:
            log.exception("scheduler %s window %s", name, window)
            execution.update(Status="FAILED", FailedReason=f"Internal error: {type(exc).__name__}: {exc}"[:5000])
        log.debug("scheduler %s window (%s, %s] %s in %.3fs", name, window.start, window.end,
                  execution["Status"], time.monotonic() - started)
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
