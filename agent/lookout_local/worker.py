"""The background worker: data ingestion jobs and model training, one at a time, in submission order.

Jobs are durable: the API records them IN_PROGRESS before submitting, and ``Worker.start`` re-queues every
job still IN_PROGRESS (a restart in the middle of a job runs it again from the start; both jobs only
replace their own output folder, so a re-run is harmless). Data problems end the job FAILED with a
FailedReason; an unexpected exception does too (logged with its traceback), so a job never stays
IN_PROGRESS forever.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.lookout_local import artifacts
from agent.lookout_local.context import Context
from agent.lookout_local.ingest import IngestionFailed, ingest
from agent.lookout_local.modeling import OffCondition, TrainingFailed, infer_rate, read_labels, train
from agent.lookout_local.schema import Component, dump_schema, parse_schema
from agent.pipeline.windows import SAMPLING_RATES

log = logging.getLogger(__name__)


class Worker:
    """A daemon thread draining a queue of ("ingest", job id) / ("train", model name)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()
        self._gate = threading.Lock()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker between jobs (waits for a running job to finish): jobs submitted meanwhile stay
        IN_PROGRESS until the block exits. For maintenance and for tests of the in-progress states."""
        with self._gate:
            yield

    def submit(self, kind: str, ident: str) -> None:
        self.idle.clear()
        self._queue.put((kind, ident))

    def start(self) -> None:
        for job in self.ctx.state.jobs():
            if job["Status"] == "IN_PROGRESS":
                self.submit("ingest", job["JobId"])
        for model in self.ctx.state.all("model"):
            if model["Status"] == "IN_PROGRESS":
                self.submit("train", model["ModelName"])
        self._thread = threading.Thread(target=self._run, name="l4e-local-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, ident = item
            with self._gate:
                self._run_job(kind, ident)
            if self._queue.empty():
                self.idle.set()

    def _run_job(self, kind: str, ident: str) -> None:
        try:
            if kind == "ingest":
                self.run_ingestion(ident)
            else:
                self.run_training(ident)
        except Exception:  # the job methods mark data failures themselves; this keeps the thread alive
            log.exception("%s %s failed unexpectedly", kind, ident)

    # ingestion ----------------------------------------------------------------------------------------
    def run_ingestion(self, job_id: str) -> None:
        state = self.ctx.state
        job = state.get_job(job_id)
        if job is None or job["Status"] != "IN_PROGRESS":
            return
        dataset = state.get("dataset", job["DatasetName"])
        if dataset is None:
            return
        s3 = job["IngestionInputConfiguration"]["S3InputConfiguration"]
        error, result, schema = None, None, dataset.get("Schema")
        try:
            store = self.ctx.stores.bucket(s3["Bucket"])
            if schema:
                components = parse_schema(schema)
            else:
                components = _infer_schema(store, s3.get("Prefix", ""))
                schema = dump_schema(components)
            result = ingest(store, s3["Bucket"], s3.get("Prefix", ""), s3.get("KeyPattern"), components,
                            self.ctx.dataset_dir(dataset["DatasetName"]))
        except IngestionFailed as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("ingestion job %s", job_id)
            error = f"ingestion failed: {type(exc).__name__}: {exc}"
        now = float(self.ctx.clock.now())
        with state.transaction():
            dataset = state.get("dataset", job["DatasetName"])
            if dataset is None:
                return
            if error is None:
                quality, start, end = result
                summary = {"DataQualitySummary": quality.data_quality_summary(),
                           "IngestedFilesSummary": quality.files_summary(), "DataStartTime": start,
                           "DataEndTime": end}
                job.update(Status="SUCCESS", IngestedDataSize=quality.size_bytes, **summary)
                dataset.update(Status="ACTIVE", Schema=schema, RoleArn=job["RoleArn"],
                               IngestionInputConfiguration=job["IngestionInputConfiguration"], **summary)
                artifacts.publish(self.ctx, "dataset", dataset["DatasetName"],
                                  self.ctx.dataset_dir(dataset["DatasetName"]))
            else:
                job.update(Status="FAILED", FailedReason=error[:5000])
                # a failed re-ingestion keeps the data of the last good one
                dataset["Status"] = "ACTIVE" if dataset.get("DataEndTime") is not None else "CREATED"
            dataset["LastUpdatedAt"] = now
            state.put_job(job_id, job["DatasetName"], job["CreatedAt"], job)
            state.put("dataset", dataset["DatasetName"], dataset["DatasetArn"], dataset["CreatedAt"], dataset)

    # training -----------------------------------------------------------------------------------------
    def run_training(self, name: str) -> None:
        state = self.ctx.state
        model = state.get("model", name)
        if model is None or model["Status"] != "IN_PROGRESS":
            return
        started = float(self.ctx.clock.now())
        error, metrics, rate_name = None, None, None
        try:
            components = parse_schema(model["Schema"])
            data_dir = artifacts.fetch(self.ctx, "dataset", model["DatasetName"],
                                       self.ctx.dataset_dir(model["DatasetName"]))
            rate_name = (model.get("DataPreProcessingConfiguration") or {}).get("TargetSamplingRate") \
                or infer_rate(data_dir, components, SAMPLING_RATES)
            labels = []
            s3 = (model.get("LabelsInputConfiguration") or {}).get("S3InputConfiguration")
            if s3:
                labels = read_labels(self.ctx.stores.bucket(s3["Bucket"]), s3.get("Prefix", ""))
            metrics = train(data_dir, components, SAMPLING_RATES[rate_name],
                            (model.get("TrainingDataStartTime"), model.get("TrainingDataEndTime")),
                            (model.get("EvaluationDataStartTime"), model.get("EvaluationDataEndTime")),
                            labels, OffCondition.parse(model.get("OffCondition")), self.ctx.model_dir(name))
        except TrainingFailed as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("training model %s", name)
            error = f"training failed: {type(exc).__name__}: {exc}"
        now = float(self.ctx.clock.now())
        with state.transaction():
            model = state.get("model", name)
            if model is None:
                return
            model.update(TrainingExecutionStartTime=started, TrainingExecutionEndTime=now, LastUpdatedTime=now)
            if error is None:
                version_arn = f"{model['ModelArn']}/model-version/1"
                # the effective rate is reported even when it was inferred: clients size their windows by it
                model["DataPreProcessingConfiguration"] = {"TargetSamplingRate": rate_name}
                artifacts.publish(self.ctx, "model", name, self.ctx.model_dir(name))
                model.update(Status="SUCCESS", ModelMetrics=json.dumps(metrics), _rate=rate_name,
                             ModelQuality=_quality(metrics),
                             ActiveModelVersion=1, ActiveModelVersionArn=version_arn, ModelVersionActivatedAt=now)
            else:
                model.update(Status="FAILED", FailedReason=error[:5000])
            state.put("model", name, model["ModelArn"], model["CreatedAt"], model)


def _quality(metrics: dict) -> str:
    """ModelQuality from the evaluation: without labels it cannot be judged; with labels, the model meets
    the bar when it detects at least half of the labelled events (a local rule; AWS's is not published)."""
    labeled = metrics["labeled_event_metrics"]
    if not labeled["num_labeled"]:
        return "CANNOT_DETERMINE_QUALITY"
    if 2 * labeled["num_labeled_detected"] >= labeled["num_labeled"]:
        return "QUALITY_THRESHOLD_MET"
    return "POOR_QUALITY_DETECTED"


def _infer_schema(store, prefix: str) -> list[Component]:
    """A schema from the default layout when the dataset has none: each folder directly under ``prefix`` is a
    component; its first CSV's header gives the columns, the first being the timestamp."""
    import io

    import pandas as pd

    if prefix and not prefix.endswith("/"):
        prefix += "/"
    first: dict[str, str] = {}
    for key in store.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) >= 2 and parts[0] not in first:
            first[parts[0]] = key
    if not first:
        raise IngestionFailed(f"the dataset has no schema and no component folders were found under {prefix!r}")
    components = []
    for comp, key in sorted(first.items()):
        header = list(pd.read_csv(io.BytesIO(store.get(key)), nrows=0).columns)
        if len(header) < 2:
            raise IngestionFailed(f"{key}: a data file needs a timestamp column and at least one sensor column")
        components.append(Component(comp, str(header[0]), tuple(str(h) for h in header[1:])))
    return components
