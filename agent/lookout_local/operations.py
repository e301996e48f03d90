"""The 22 operations of the 2021 L4E API over the durable state.

Each handler takes validated params (timestamps already epoch seconds) and returns the response document;
the protocol layer drops fields the output shape does not declare (internal ``_`` fields among them).
Semantics follow the botocore documentation:

- unknown resource → ResourceNotFoundException; a name in use, or a resource in use by another
  (deleting a model a scheduler uses; a dataset being ingested or trained on or scored by a running
  scheduler; a scheduler that is not stopped) → ConflictException;
- ``ClientToken``: a repeated (operation, token) with the same parameters returns the first response;
  with different parameters it is a ConflictException;
- lifecycles: dataset CREATED → INGESTION_IN_PROGRESS → ACTIVE; ingestion job and model IN_PROGRESS →
  SUCCESS | FAILED (run by the worker); scheduler PENDING → RUNNING, STOPPING → STOPPED (moved by the
  scheduler's next tick). CreateInferenceScheduler creates and starts.
- ListInferenceExecutions is newest DataStartTime first (the API documents no order: clients sort, as
  agent.lookout.results does); inclusive filters: DataStartTime ≥ DataStartTimeAfter, DataEndTime ≤ DataEndTimeBefore;
  an unknown scheduler gives an empty list. Other lists: by name; ingestion jobs newest first.
- local rules where AWS's are unpublished: at most 50 tags per resource (ServiceQuotaExceededException on
  TagResource, ValidationException on Create*); CreateModel needs an ACTIVE dataset, CreateInferenceScheduler a
  SUCCESS model (ValidationException otherwise); LabelGroupName is ResourceNotFoundException (no Label API: labels
  come from S3); a scheduler starts only when STOPPED, stops unless STOPPED/STOPPING, is deleted only when STOPPED.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from agent.lookout_local import artifacts
from agent.lookout_local.context import Context
from agent.lookout_local.errors import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from agent.lookout_local.modeling import OffCondition
from agent.lookout_local.pagination import next_token, page_window, paginate
from agent.lookout_local.schema import dump_schema, parse_schema, subset
from agent.pipeline.windows import UPLOAD_FREQUENCIES, parse_offset

MAX_TAGS = 50
DATASET, MODEL, SCHEDULER = "dataset", "model", "inference-scheduler"
IDEMPOTENT = ("CreateDataset", "StartDataIngestionJob", "CreateModel", "CreateInferenceScheduler")


def _not_found(kind: str, name: str) -> ResourceNotFoundException:
    return ResourceNotFoundException(f"{kind} {name!r} does not exist")


def _merge_tags(current: list[dict], new: list[dict], error=ValidationException) -> list[dict]:
    merged = {t["Key"]: t["Value"] for t in current}
    for tag in new:
        merged[tag["Key"]] = tag["Value"]
    if len(merged) > MAX_TAGS:
        raise error(f"a resource can have at most {MAX_TAGS} tags; this request would leave {len(merged)}")
    return [{"Key": k, "Value": v} for k, v in merged.items()]


class Operations:
    """Handlers by operation name. ``submit(kind, id)`` hands ingestion/training to the worker."""

    def __init__(self, ctx: Context, submit: Callable[[str, str], None]) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self.submit = submit

    names = frozenset((
        "CreateDataset", "DescribeDataset", "ListDatasets", "DeleteDataset",
        "StartDataIngestionJob", "DescribeDataIngestionJob", "ListDataIngestionJobs",
        "CreateModel", "DescribeModel", "ListModels", "DeleteModel",
        "CreateInferenceScheduler", "DescribeInferenceScheduler", "ListInferenceSchedulers",
        "UpdateInferenceScheduler", "StartInferenceScheduler", "StopInferenceScheduler",
        "DeleteInferenceScheduler", "ListInferenceExecutions",
        "TagResource", "UntagResource", "ListTagsForResource",
    ))

    def call(self, op: str, params: dict) -> dict:
        """Run ``op``; the whole call is one transaction (a failure changes nothing)."""
        handler = getattr(self, "op_" + op)
        with self.state.transaction():
            if op not in IDEMPOTENT:
                return handler(params)
            token = params["ClientToken"]
            fingerprint = json.dumps({k: v for k, v in params.items() if k != "ClientToken"}, sort_keys=True)
            seen = self.state.token(op, token)
            if seen is not None:
                if seen[0] != fingerprint:
                    raise ConflictException(f"ClientToken {token!r} was already used for a different {op} request")
                return seen[1]
            response = handler(params)
            self.state.put_token(op, token, fingerprint, response)
            return response

    # helpers ------------------------------------------------------------------------------------------
    def _now(self) -> float:
        return float(self.ctx.clock.now())

    def _get(self, kind: str, name: str) -> dict:
        doc = self.state.get(kind, name)
        if doc is None:
            raise _not_found(kind, name)
        return doc

    def _save(self, kind: str, name: str, doc: dict) -> None:
        arn = doc.get("DatasetArn") if kind == DATASET else doc.get(
            "ModelArn" if kind == MODEL else "InferenceSchedulerArn")
        self.state.put(kind, name, arn, doc["CreatedAt"], doc)

    # datasets -----------------------------------------------------------------------------------------
    def op_CreateDataset(self, p: dict) -> dict:
        name = p["DatasetName"]
        if self.state.get(DATASET, name) is not None:
            raise ConflictException(f"dataset {name!r} already exists")
        schema = (p.get("DatasetSchema") or {}).get("InlineDataSchema")
        if schema is not None:
            parse_schema(schema)  # refuse an unusable schema now; DescribeDataset returns the string as given
        now = self._now()
        doc = {"DatasetName": name, "DatasetArn": self.ctx.arn(DATASET, name), "CreatedAt": now,
               "LastUpdatedAt": now, "Status": "CREATED", "Schema": schema,
               "ServerSideKmsKeyId": p.get("ServerSideKmsKeyId"), "_tags": _merge_tags([], p.get("Tags", []))}
        self._save(DATASET, name, doc)
        return {"DatasetName": name, "DatasetArn": doc["DatasetArn"], "Status": "CREATED"}

    def op_DescribeDataset(self, p: dict) -> dict:
        return self._get(DATASET, p["DatasetName"])

    def op_ListDatasets(self, p: dict) -> dict:
        begins = p.get("DatasetNameBeginsWith", "")
        items = [d for d in self.state.all(DATASET) if d["DatasetName"].startswith(begins)]
        page, token = paginate(items, p, "ListDatasets")
        return {"DatasetSummaries": page, "NextToken": token}

    def op_DeleteDataset(self, p: dict) -> dict:
        name = p["DatasetName"]
        doc = self._get(DATASET, name)
        if doc["Status"] == "INGESTION_IN_PROGRESS":
            raise ConflictException(f"dataset {name!r} is being ingested")
        for model in self.state.all(MODEL):
            if model["DatasetName"] != name:
                continue
            if model["Status"] == "IN_PROGRESS":
                raise ConflictException(f"model {model['ModelName']!r} is training on dataset {name!r}")
            for sched in self.state.all(SCHEDULER):
                if sched["ModelName"] == model["ModelName"] and sched["Status"] != "STOPPED":
                    raise ConflictException(f"inference scheduler {sched['InferenceSchedulerName']!r} uses "
                                            f"dataset {name!r} through model {model['ModelName']!r}")
        self.state.delete(DATASET, name)
        self.state.delete_jobs(name)
        artifacts.forget(self.ctx, "dataset", name, self.ctx.dataset_dir(name))
        return {}

    # ingestion ----------------------------------------------------------------------------------------
    def op_StartDataIngestionJob(self, p: dict) -> dict:
        name = p["DatasetName"]
        dataset = self._get(DATASET, name)
        if dataset["Status"] == "INGESTION_IN_PROGRESS":
            raise ConflictException(f"dataset {name!r} already has an ingestion job in progress")
        s3 = p["IngestionInputConfiguration"]["S3InputConfiguration"]
        if s3.get("KeyPattern"):
            from agent.lookout_local.ingest import IngestionFailed, component_prefix

            try:
                component_prefix(s3.get("Prefix", ""), "c", s3["KeyPattern"])
            except IngestionFailed as exc:
                raise ValidationException(str(exc)) from None
        job_id = uuid.uuid4().hex
        now = self._now()
        job = {"JobId": job_id, "DatasetArn": dataset["DatasetArn"], "DatasetName": name,
               "IngestionInputConfiguration": p["IngestionInputConfiguration"], "RoleArn": p["RoleArn"],
               "CreatedAt": now, "Status": "IN_PROGRESS"}
        self.state.put_job(job_id, name, now, job)
        dataset.update(Status="INGESTION_IN_PROGRESS", LastUpdatedAt=now, _job=job_id)
        self._save(DATASET, name, dataset)
        self.submit("ingest", job_id)
        return {"JobId": job_id, "Status": "IN_PROGRESS"}

    def op_DescribeDataIngestionJob(self, p: dict) -> dict:
        job = self.state.get_job(p["JobId"])
        if job is None:
            raise ResourceNotFoundException(f"ingestion job {p['JobId']!r} does not exist")
        return job

    def op_ListDataIngestionJobs(self, p: dict) -> dict:
        items = [j for j in self.state.jobs(p.get("DatasetName"))
                 if not p.get("Status") or j["Status"] == p["Status"]]
        page, token = paginate(items, p, "ListDataIngestionJobs")
        return {"DataIngestionJobSummaries": page, "NextToken": token}

    # models -------------------------------------------------------------------------------------------
    def op_CreateModel(self, p: dict) -> dict:
        name = p["ModelName"]
        if self.state.get(MODEL, name) is not None:
            raise ConflictException(f"model {name!r} already exists")
        dataset = self._get(DATASET, p["DatasetName"])
        label_group = (p.get("LabelsInputConfiguration") or {}).get("LabelGroupName")
        if label_group:  # the Label API is not among the 2021 operations served here
            raise ResourceNotFoundException(f"label group {label_group!r} does not exist; give labels as "
                                            "LabelsInputConfiguration.S3InputConfiguration instead")
        if dataset["Status"] != "ACTIVE" or not dataset.get("Schema"):
            raise ValidationException(f"dataset {p['DatasetName']!r} has no ingested data (status "
                                      f"{dataset['Status']}); run a data ingestion job first")
        full = parse_schema(dataset["Schema"])
        inline = (p.get("DatasetSchema") or {}).get("InlineDataSchema")
        schema = dump_schema(subset(full, parse_schema(inline))) if inline else dataset["Schema"]
        for start, end in (("TrainingDataStartTime", "TrainingDataEndTime"),
                           ("EvaluationDataStartTime", "EvaluationDataEndTime")):
            if p.get(start) is not None and p.get(end) is not None and p[start] >= p[end]:
                raise ValidationException(f"{start} must be before {end}")
        try:
            OffCondition.parse(p.get("OffCondition"))
        except ValueError as exc:
            raise ValidationException(str(exc)) from None
        now = self._now()
        doc = {key: p.get(key) for key in (
            "DatasetName", "LabelsInputConfiguration", "TrainingDataStartTime", "TrainingDataEndTime",
            "EvaluationDataStartTime", "EvaluationDataEndTime", "RoleArn", "DataPreProcessingConfiguration",
            "ServerSideKmsKeyId", "OffCondition", "ModelDiagnosticsOutputConfiguration")}
        doc.update(ModelName=name, ModelArn=self.ctx.arn(MODEL, name), DatasetArn=dataset["DatasetArn"],
                   Schema=schema, Status="IN_PROGRESS", CreatedAt=now, LastUpdatedTime=now,
                   _tags=_merge_tags([], p.get("Tags", [])))
        self._save(MODEL, name, doc)
        self.submit("train", name)
        return {"ModelArn": doc["ModelArn"], "Status": "IN_PROGRESS"}

    def op_DescribeModel(self, p: dict) -> dict:
        return self._get(MODEL, p["ModelName"])

    def op_ListModels(self, p: dict) -> dict:
        items = [m for m in self.state.all(MODEL)
                 if m["ModelName"].startswith(p.get("ModelNameBeginsWith", ""))
                 and m["DatasetName"].startswith(p.get("DatasetNameBeginsWith", ""))
                 and (not p.get("Status") or m["Status"] == p["Status"])]
        page, token = paginate(items, p, "ListModels")
        return {"ModelSummaries": page, "NextToken": token}

    def op_DeleteModel(self, p: dict) -> dict:
        name = p["ModelName"]
        doc = self._get(MODEL, name)
        if doc["Status"] == "IN_PROGRESS":
            raise ConflictException(f"model {name!r} is still training")
        users = [s["InferenceSchedulerName"] for s in self.state.all(SCHEDULER) if s["ModelName"] == name]
        if users:
            raise ConflictException(f"model {name!r} is used by inference scheduler(s) {users}; delete them first")
        self.state.delete(MODEL, name)
        artifacts.forget(self.ctx, "model", name, self.ctx.model_dir(name))
        return {}

    # inference schedulers ------------------------------------------------------------------------------
    def _check_io(self, inp: dict | None) -> None:
        """What the model's patterns cannot say (prefix shapes and enums are checked by validation)."""
        if inp is None:
            return
        if not inp.get("S3InputConfiguration"):
            raise ValidationException("DataInputConfiguration.S3InputConfiguration is required by this service")
        if inp.get("InputTimeZoneOffset"):
            try:
                parse_offset(inp["InputTimeZoneOffset"])
            except ValueError as exc:
                raise ValidationException(str(exc)) from None

    def _grid_start(self, frequency: str, now: float) -> int:
        step = UPLOAD_FREQUENCIES[frequency]
        return int(now // step) * step

    def op_CreateInferenceScheduler(self, p: dict) -> dict:
        name = p["InferenceSchedulerName"]
        if self.state.get(SCHEDULER, name) is not None:
            raise ConflictException(f"inference scheduler {name!r} already exists")
        model = self._get(MODEL, p["ModelName"])
        if model["Status"] != "SUCCESS":
            raise ValidationException(f"model {p['ModelName']!r} is not trained (status {model['Status']})")
        if p.get("DataDelayOffsetInMinutes") is not None and not 0 <= p["DataDelayOffsetInMinutes"] <= 60:
            raise ValidationException("DataDelayOffsetInMinutes must be between 0 and 60")
        self._check_io(p["DataInputConfiguration"])
        self._check_rate(model, p["DataUploadFrequency"])
        now = self._now()
        doc = {key: p.get(key) for key in ("ModelName", "DataUploadFrequency", "DataInputConfiguration",
                                           "DataOutputConfiguration", "RoleArn", "ServerSideKmsKeyId")}
        doc.update(InferenceSchedulerName=name, InferenceSchedulerArn=self.ctx.arn(SCHEDULER, name),
                   ModelArn=model["ModelArn"], DataDelayOffsetInMinutes=p.get("DataDelayOffsetInMinutes", 0),
                   Status="PENDING", CreatedAt=now, UpdatedAt=now, _tags=_merge_tags([], p.get("Tags", [])),
                   _last_end=self._grid_start(p["DataUploadFrequency"], now))
        self._save(SCHEDULER, name, doc)
        return {"InferenceSchedulerArn": doc["InferenceSchedulerArn"], "InferenceSchedulerName": name,
                "Status": "PENDING", "ModelQuality": model.get("ModelQuality")}

    def _check_rate(self, model: dict, frequency: str) -> None:
        from agent.pipeline.windows import SAMPLING_RATES

        rate = (model.get("DataPreProcessingConfiguration") or {}).get("TargetSamplingRate") or model.get("_rate")
        if rate and UPLOAD_FREQUENCIES[frequency] % SAMPLING_RATES[rate]:
            raise ValidationException(f"DataUploadFrequency {frequency} is not a multiple of the model's "
                                      f"TargetSamplingRate {rate}")

    def op_DescribeInferenceScheduler(self, p: dict) -> dict:
        return self._get(SCHEDULER, p["InferenceSchedulerName"])

    def op_ListInferenceSchedulers(self, p: dict) -> dict:
        items = [s for s in self.state.all(SCHEDULER)
                 if s["InferenceSchedulerName"].startswith(p.get("InferenceSchedulerNameBeginsWith", ""))
                 and (not p.get("ModelName") or s["ModelName"] == p["ModelName"])
                 and (not p.get("Status") or s["Status"] == p["Status"])]
        page, token = paginate(items, p, "ListInferenceSchedulers")
        return {"InferenceSchedulerSummaries": page, "NextToken": token}

    def op_UpdateInferenceScheduler(self, p: dict) -> dict:
        name = p["InferenceSchedulerName"]
        doc = self._get(SCHEDULER, name)
        if doc["Status"] == "STOPPING":
            raise ConflictException(f"inference scheduler {name!r} is stopping")
        self._check_io(p.get("DataInputConfiguration"))
        if p.get("DataDelayOffsetInMinutes") is not None and not 0 <= p["DataDelayOffsetInMinutes"] <= 60:
            raise ValidationException("DataDelayOffsetInMinutes must be between 0 and 60")
        if p.get("DataUploadFrequency") and p["DataUploadFrequency"] != doc["DataUploadFrequency"]:
            self._check_rate(self._get(MODEL, doc["ModelName"]), p["DataUploadFrequency"])
            # windows restart on the new grid from now: no window of the old grid is run twice or half
            doc["_last_end"] = self._grid_start(p["DataUploadFrequency"], self._now())
        for key in ("DataDelayOffsetInMinutes", "DataUploadFrequency", "DataInputConfiguration",
                    "DataOutputConfiguration", "RoleArn"):
            if p.get(key) is not None:
                doc[key] = p[key]
        doc["UpdatedAt"] = self._now()
        self._save(SCHEDULER, name, doc)
        return {}

    def _summary(self, doc: dict) -> dict:
        return {k: doc[k] for k in ("ModelArn", "ModelName", "InferenceSchedulerName", "InferenceSchedulerArn",
                                    "Status")}

    def op_StartInferenceScheduler(self, p: dict) -> dict:
        name = p["InferenceSchedulerName"]
        doc = self._get(SCHEDULER, name)
        if doc["Status"] != "STOPPED":
            raise ConflictException(f"inference scheduler {name!r} is {doc['Status']}; only a STOPPED one starts")
        # windows that ended while stopped are not run: the first is the one in progress now
        doc.update(Status="PENDING", UpdatedAt=self._now(),
                   _last_end=max(doc.get("_last_end", 0), self._grid_start(doc["DataUploadFrequency"], self._now())))
        self._save(SCHEDULER, name, doc)
        return self._summary(doc)

    def op_StopInferenceScheduler(self, p: dict) -> dict:
        name = p["InferenceSchedulerName"]
        doc = self._get(SCHEDULER, name)
        if doc["Status"] in ("STOPPED", "STOPPING"):
            raise ConflictException(f"inference scheduler {name!r} is already {doc['Status']}")
        doc.update(Status="STOPPING", UpdatedAt=self._now())
        self._save(SCHEDULER, name, doc)
        return self._summary(doc)

    def op_DeleteInferenceScheduler(self, p: dict) -> dict:
        name = p["InferenceSchedulerName"]
        doc = self._get(SCHEDULER, name)
        if doc["Status"] != "STOPPED":
            raise ConflictException(f"inference scheduler {name!r} is {doc['Status']}; stop it before deleting")
        self.state.delete(SCHEDULER, name)
        self.state.delete_executions(name)
        return {}

    def op_ListInferenceExecutions(self, p: dict) -> dict:
        # filters and paging in the database (a year of PT5M windows: 105,120 executions per scheduler)
        op, name, before = "ListInferenceExecutions", p["InferenceSchedulerName"], p.get("DataEndTimeBefore")
        query = {"start_after": p.get("DataStartTimeAfter"), "status": p.get("Status") or None}
        if before is not None:  # a window ends after it starts: "start < before" narrows, the end is checked here
            items = [e for e in self.state.executions(name, start_before=before, **query) if e["DataEndTime"] <= before]
            page, token = paginate(items, p, op)
        else:
            offset, size = page_window(p, op)
            rows = self.state.executions(name, offset=offset, limit=size + 1, **query)  # one more: a next page?
            page, token = rows[:size], next_token(op, offset + size) if len(rows) > size else None
        return {"InferenceExecutionSummaries": page, "NextToken": token}

    # tags ---------------------------------------------------------------------------------------------
    def _by_arn(self, arn: str) -> tuple[str, dict]:
        found = self.state.by_arn(arn)
        if found is None:
            raise ResourceNotFoundException(f"resource {arn!r} does not exist")
        return found

    def op_TagResource(self, p: dict) -> dict:
        kind, doc = self._by_arn(p["ResourceArn"])
        doc["_tags"] = _merge_tags(doc.get("_tags", []), p["Tags"], ServiceQuotaExceededException)
        self._save(kind, self._name(kind, doc), doc)
        return {}

    def op_UntagResource(self, p: dict) -> dict:
        kind, doc = self._by_arn(p["ResourceArn"])
        doc["_tags"] = [t for t in doc.get("_tags", []) if t["Key"] not in set(p["TagKeys"])]
        self._save(kind, self._name(kind, doc), doc)
        return {}

    def op_ListTagsForResource(self, p: dict) -> dict:
        _kind, doc = self._by_arn(p["ResourceArn"])
        return {"Tags": doc.get("_tags", [])}

    @staticmethod
    def _name(kind: str, doc: dict) -> str:
        return doc["DatasetName"] if kind == DATASET else doc["ModelName"] if kind == MODEL \
            else doc["InferenceSchedulerName"]
