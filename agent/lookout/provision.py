"""From history to a running inference scheduler in one call (``l4e-agent provision CONFIG``).

Steps, each reported through ``progress`` as it goes:

1. export history (the asset's replay source CSVs, or a given CSV) to ``<training prefix><component>/
   <component>.csv``: the timestamp column (schema name, rule 4 format) then the component's sensors in
   schema order. The training prefix is the input prefix's sibling ``training-data/`` (``.../pump/input/``
   → ``.../pump/training-data/``; an input at the bucket root → ``training-data/``); labels go to the sibling
   ``label-data/labels.csv``; when ``[lookout] output`` is unset the scheduler writes to the sibling
   ``output/``. The layout is the one AWS's samples and SDK use (README, L4E contract §4).
2. CreateDataset with the schema built from ``[components]`` (all DOUBLE, timestamp DATETIME);
   StartDataIngestionJob (default KeyPattern ``{prefix}/{component_name}/*``) and wait;
3. CreateModel (the sampling rate, training/evaluation ranges, optional labels) and wait;
4. CreateInferenceScheduler with the agent's naming settings (delimiter, timestamp format, time-zone offset,
   input/output locations, upload frequency, delay offset): it is created started (PENDING → RUNNING).

Re-running is safe: an ACTIVE dataset is not exported or ingested again, a trained model is reused (one still
training is waited for), an existing scheduler is reported (and started if STOPPED). Nothing is deleted or
changed in place: a resource that exists with other settings is reported, not modified. ``dry_run`` prints
the plan and only reads (Describe*).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from agent.config import AssetConfig, base_dir_of
from agent.core.errors import ConfigError, LookoutError
from agent.lookout.client import bucket_prefix, bucket_store, call, location_url, store_of
from agent.pipeline.windows import CSV_TIME_FORMAT

DEFAULT_ROLE_ARN = "arn:aws:iam::123456789012:role/l4e-agent"  # placeholder: the API requires one


def default_names(asset: str, scheduler: str | None = None) -> dict[str, str]:
    """``<asset>-dataset``, ``<asset>-model``, and the configured scheduler name or ``<asset>-scheduler``."""
    return {"dataset": f"{asset}-dataset", "model": f"{asset}-model",
            "scheduler": scheduler or f"{asset}-scheduler"}


def build_schema(components: dict[str, list[str]], timestamp_column: str = "Timestamp") -> str:
    """InlineDataSchema JSON string (the L4E SDK's exact layout, README, L4E contract §4)."""
    return json.dumps({"Components": [
        {"ComponentName": comp, "Columns": [{"Name": timestamp_column, "Type": "DATETIME"}]
         + [{"Name": s, "Type": "DOUBLE"} for s in sensors]} for comp, sensors in components.items()]})


def sibling_prefix(prefix: str, leaf: str) -> str:
    """``a/b/input/`` → ``a/b/<leaf>/``; ``input/`` or ``""`` → ``<leaf>/``."""
    parts = [p for p in prefix.split("/") if p]
    return "".join(p + "/" for p in parts[:-1]) + leaf + "/"


def read_history(config: AssetConfig, config_path: Path, history: Path | None) -> pd.DataFrame:
    """Every sensor of the asset, indexed by UTC timestamp, from ``history`` (a CSV: timestamp column first)
    or else the config's replay sources (outer-joined on the timestamp). Raises ConfigError."""
    base = base_dir_of(config_path)
    if history is not None:
        files = [(Path(history), None)]
    else:
        files = [(src.resolved_path(base), src.timestamp_column) for src in config.sources if src.kind == "replay"]
    if not files:
        raise ConfigError("no history to train on: give a history CSV or add a replay source", file=str(config_path),
                          key="sources")
    frame = None
    for path, ts_col in files:
        try:
            part = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read history {path}: {exc}", file=str(config_path)) from None
        ts_col = ts_col or part.columns[0]
        part.index = pd.to_datetime(part.pop(ts_col), utc=True, format="ISO8601")
        frame = part if frame is None else frame.join(part[[c for c in part.columns if c not in frame]], how="outer")
    missing = [s for s in config.all_sensors() if s not in frame.columns]
    if missing:
        raise ConfigError(f"history has no column for sensors {missing}", file=str(config_path), key="components")
    return frame.sort_index()


def history_from_windows(config: AssetConfig, s3_client_factory=None) -> pd.DataFrame:
    """The asset's own uploaded windows (the CSVs under ``[lookout] input``) as one history frame: what a
    gateway that has streamed for months trains a model on. Rows indexed by UTC timestamp; a timestamp that
    appears in several files (it cannot for windows the agent wrote) keeps the last. Raises ConfigError when
    there is none."""
    from agent.pipeline.store import open_location
    from agent.pipeline.windows import parse_object_name

    lk = config.lookout
    store, prefix = open_location(lk.input, s3_client_factory)
    parts: dict[str, list[pd.DataFrame]] = {comp: [] for comp in config.components}
    for key in store.list(prefix):
        name = key[len(prefix):]
        for comp in config.components:
            if parse_object_name(name, comp, lk.delimiter, lk.timestamp_format, lk.offset_secs) is not None:
                part = pd.read_csv(io.BytesIO(store.get(key)))
                part.index = pd.to_datetime(part.pop(lk.timestamp_column), utc=True, format="ISO8601")
                parts[comp].append(part)
                break
    if not any(parts.values()):
        raise ConfigError(f"no window files under {lk.input}", key="lookout.input")
    frames = [pd.concat(p) for p in parts.values() if p]
    frame = pd.concat(frames, axis=1)
    return frame[~frame.index.duplicated(keep="last")].sort_index()


def export_frames(frame: pd.DataFrame, config: AssetConfig, ranges: list[tuple[float, float]]) -> dict[str, bytes]:
    """{component: CSV bytes}: rows within the union span of ``ranges`` (all rows when none)."""
    if ranges:
        lo = pd.Timestamp(min(r[0] for r in ranges), unit="s", tz="UTC")
        hi = pd.Timestamp(max(r[1] for r in ranges), unit="s", tz="UTC")
        frame = frame[(frame.index >= lo) & (frame.index <= hi)]
    ts_col = config.lookout.timestamp_column
    out = {}
    for comp, sensors in config.components.items():
        part = frame[sensors].dropna(how="all")
        part.index = part.index.tz_convert("UTC").tz_localize(None).strftime(CSV_TIME_FORMAT)
        part.index.name = ts_col
        buf = io.StringIO()
        part.to_csv(buf)
        out[comp] = buf.getvalue().encode()
    return out


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _Run:
    """One provisioning run: the plan, the client and the progress sink."""

    def __init__(self, config: AssetConfig, config_path: Path, client, s3_client_factory, dry_run: bool,
                 progress: Callable[[str], None], poll_secs: float, timeout_secs: float) -> None:
        self.config, self.config_path, self.client = config, Path(config_path), client
        self.s3_client_factory, self.dry_run, self.progress = s3_client_factory, dry_run, progress
        self.poll_secs, self.timeout_secs = poll_secs, timeout_secs
        self.actions: list[str] = []

    def say(self, text: str) -> None:
        self.actions.append(text)
        self.progress(("[dry-run] " if self.dry_run else "") + text)

    def describe(self, operation: str, **params) -> dict | None:
        """The resource's description, or None when it does not exist."""
        try:
            return call(self.client, operation, **params)
        except LookoutError as exc:
            if getattr(exc, "code", "") == "ResourceNotFoundException":
                return None
            raise

    def wait(self, what: str, operation: str, busy: str = "IN_PROGRESS", **params) -> dict:
        """Poll every poll_secs until Status is no longer ``busy`` (bounded by timeout_secs, wall)."""
        deadline = time.monotonic() + self.timeout_secs
        while True:
            doc = call(self.client, operation, **params)
            if doc.get("Status") != busy:
                return doc
            if time.monotonic() > deadline:
                raise LookoutError(f"{what}: still {busy} after {self.timeout_secs:.0f}s")
            time.sleep(self.poll_secs)


def _locations(config: AssetConfig, config_path: Path) -> dict[str, tuple[str, str]]:
    lk = config.lookout
    missing = [k for k in ("upload_frequency", "sampling_rate", "input") if getattr(lk, k) is None]
    if missing:
        raise ConfigError(f"provisioning needs {', '.join(missing)} in the file", file=str(config_path),
                          key="lookout")
    store = store_of(lk)
    try:
        bucket, prefix = bucket_prefix(lk.input, store)
        out = bucket_prefix(lk.output, store) if lk.output else (bucket, sibling_prefix(prefix, "output"))
    except ConfigError as exc:
        raise ConfigError(exc.detail, file=str(config_path), key=exc.key) from None
    return {"input": (bucket, prefix), "output": out, "training": (bucket, sibling_prefix(prefix, "training-data")),
            "labels": (bucket, sibling_prefix(prefix, "label-data"))}


def provision(config: AssetConfig, config_path: Path, client, *, s3_client_factory=None, dry_run: bool = False,
              history: Path | None = None, training_range: tuple[float, float] | None = None,
              evaluation_range: tuple[float, float] | None = None, labels: Path | None = None,
              names: dict | None = None, progress: Callable[[str], None] = print, poll_secs: float = 1.0,
              timeout_secs: float = 600, role_arn: str | None = None, from_windows: bool = False) -> dict:
    """Take the asset from history to a RUNNING inference scheduler (see the module docstring).

    training_range / evaluation_range: (start, end) in Unix seconds (UTC); unset → the service's default
    (all ingested data). labels: a two-column, headerless CSV of anomalous (start, end) ranges.
    from_windows: train on the asset's own uploaded windows (history_from_windows) instead of a CSV.
    names: overrides of {"dataset", "model", "scheduler"}. role_arn: the IAM role the service assumes
    (default: the configured one, else a placeholder that the local service accepts).
    Returns {"dataset", "model", "scheduler", "training", "output", "status", "actions"}.
    Raises ConfigError for config problems, LookoutError when the API refuses or a job fails.
    """
    lk = config.lookout
    names = {**default_names(config.asset, lk.scheduler), **(names or {})}
    locs = _locations(config, config_path)
    store = store_of(lk)
    role = role_arn or getattr(lk, "role_arn", None) or DEFAULT_ROLE_ARN
    run = _Run(config, config_path, client, s3_client_factory, dry_run, progress, poll_secs, timeout_secs)
    ranges = [r for r in (training_range, evaluation_range) if r]
    if from_windows:
        history = history_from_windows(config, s3_client_factory)
    _dataset(run, names["dataset"], locs, store, history, ranges, role)
    _model(run, names, locs, store, training_range, evaluation_range, labels, role)
    status = _scheduler(run, names, locs, role)
    return {**names, "training": location_url(*locs["training"], store),
            "output": location_url(*locs["output"], store), "status": status, "actions": run.actions}


def _dataset(run: _Run, name: str, locs, store, history, ranges, role: str) -> None:
    cfg = run.config
    existing = run.describe("describe_dataset", DatasetName=name)
    if existing is not None and existing.get("Schema"):
        _same_schema(run, name, existing["Schema"])
    if existing is not None and existing.get("Status") == "ACTIVE":
        run.say(f"dataset {name}: exists and is ACTIVE: reused (no export, no ingestion)")
        return
    bucket, prefix = locs["training"]
    frame = history if isinstance(history, pd.DataFrame) else read_history(cfg, run.config_path, history)
    frames = export_frames(frame, cfg, ranges)
    for comp, data in frames.items():
        key = f"{prefix}{comp}/{comp}.csv"
        run.say(f"export {len(data.splitlines()) - 1} rows of {comp} to {location_url(bucket, key, store)}")
        if not run.dry_run:
            bucket_store(bucket, store, run.s3_client_factory).put(key, data)
    schema = build_schema(cfg.components, cfg.lookout.timestamp_column)
    if existing is None:
        run.say(f"dataset {name}: create with {sum(map(len, cfg.components.values()))} sensors in "
                f"{len(cfg.components)} component(s)")
        if not run.dry_run:
            call(run.client, "create_dataset", DatasetName=name, DatasetSchema={"InlineDataSchema": schema})
    elif existing.get("Status") == "INGESTION_IN_PROGRESS":
        run.say(f"dataset {name}: an ingestion is already running: waiting for it")
        if run.dry_run:
            return
        done = run.wait(f"dataset {name}", "describe_dataset", busy="INGESTION_IN_PROGRESS", DatasetName=name)
        if done.get("Status") == "ACTIVE":
            run.say(f"dataset {name}: ACTIVE")
            return
    else:
        run.say(f"dataset {name}: exists ({existing.get('Status')}): reused")
    run.say(f"dataset {name}: ingest s3://{bucket}/{prefix} (KeyPattern {{prefix}}/{{component_name}}/*)")
    if run.dry_run:
        return
    job = call(run.client, "start_data_ingestion_job", DatasetName=name, RoleArn=role,
               IngestionInputConfiguration={"S3InputConfiguration": {"Bucket": bucket, "Prefix": prefix}})
    _wait_job(run, name, job["JobId"])


def _same_schema(run: _Run, name: str, schema: str) -> None:
    """An existing dataset is reused only with the config's components (else models would not match the CSVs)."""
    from agent.lookout.client import parse_schema

    try:
        ts_col, components = parse_schema(schema)
    except (ValueError, KeyError, TypeError):
        return  # unreadable: the service will say more when it trains
    mine = {c: list(s) for c, s in run.config.components.items()}
    if components != mine or ts_col != run.config.lookout.timestamp_column:
        raise ConfigError(f"dataset {name!r} exists with components {components!r} (timestamp {ts_col!r}) but "
                          f"the file says {mine!r} (timestamp {run.config.lookout.timestamp_column!r}); choose "
                          "another dataset name or make them agree", file=str(run.config_path), key="components")


def _wait_job(run: _Run, name: str, job_id: str) -> None:
    done = run.wait(f"ingestion job {job_id}", "describe_data_ingestion_job", JobId=job_id)
    if done.get("Status") != "SUCCESS":
        raise LookoutError(f"dataset {name}: ingestion {done.get('Status')}: {done.get('FailedReason', '')}")
    files = (done.get("IngestedFilesSummary") or {}).get("IngestedNumberOfFiles", "?")
    run.say(f"dataset {name}: ingestion SUCCESS ({files} files)")


def _model(run: _Run, names: dict, locs, store, training_range, evaluation_range, labels, role: str) -> None:
    name, lk = names["model"], run.config.lookout
    existing = run.describe("describe_model", ModelName=name)
    if existing is not None:
        if existing.get("Status") == "IN_PROGRESS" and not run.dry_run:
            run.say(f"model {name}: training in progress: waiting")
            existing = run.wait(f"model {name}", "describe_model", ModelName=name)
        if existing.get("Status") == "FAILED":
            raise LookoutError(f"model {name}: exists and FAILED ({existing.get('FailedReason', '')}); delete it or "
                               "choose another name")
        rate = (existing.get("DataPreProcessingConfiguration") or {}).get("TargetSamplingRate")
        note = f" (its TargetSamplingRate {rate} differs from sampling_rate {lk.sampling_rate})" \
            if rate and rate != lk.sampling_rate else ""
        run.say(f"model {name}: exists ({existing.get('Status')}): reused{note}")
        return
    params = {"ModelName": name, "DatasetName": names["dataset"], "RoleArn": role,
              "DataPreProcessingConfiguration": {"TargetSamplingRate": lk.sampling_rate}}
    if training_range:
        params.update(TrainingDataStartTime=_dt(training_range[0]), TrainingDataEndTime=_dt(training_range[1]))
    if evaluation_range:
        params.update(EvaluationDataStartTime=_dt(evaluation_range[0]),
                      EvaluationDataEndTime=_dt(evaluation_range[1]))
    if labels is not None:
        bucket, prefix = locs["labels"]
        run.say(f"labels: upload {labels} to {location_url(bucket, prefix + 'labels.csv', store)}")
        if not run.dry_run:
            bucket_store(bucket, store, run.s3_client_factory).put(prefix + "labels.csv", Path(labels).read_bytes())
        params["LabelsInputConfiguration"] = {"S3InputConfiguration": {"Bucket": bucket, "Prefix": prefix}}
    span = ""
    if training_range:
        span = f", training {_dt(training_range[0]):%Y-%m-%dT%H:%M}Z..{_dt(training_range[1]):%Y-%m-%dT%H:%M}Z"
    run.say(f"model {name}: train on dataset {names['dataset']} at {lk.sampling_rate}{span}")
    if run.dry_run:
        return
    call(run.client, "create_model", **params)
    done = run.wait(f"model {name}", "describe_model", ModelName=name)
    if done.get("Status") != "SUCCESS":
        raise LookoutError(f"model {name}: training {done.get('Status')}: {done.get('FailedReason', '')}")
    run.say(f"model {name}: training SUCCESS")


def _scheduler(run: _Run, names: dict, locs, role: str) -> str:
    name, lk = names["scheduler"], run.config.lookout
    existing = run.describe("describe_inference_scheduler", InferenceSchedulerName=name)
    if existing is not None:
        status = existing.get("Status", "UNKNOWN")
        if status == "STOPPED":
            run.say(f"scheduler {name}: exists and is STOPPED: start it")
            if not run.dry_run:
                status = call(run.client, "start_inference_scheduler", InferenceSchedulerName=name)["Status"]
        else:
            run.say(f"scheduler {name}: exists ({status}): reused")
        for line in _scheduler_diffs(existing, names["model"], lk, locs):
            run.say(f"scheduler {name}: differs from the file: {line} (not changed)")
        return status
    (in_bucket, in_prefix), (out_bucket, out_prefix) = locs["input"], locs["output"]
    run.say(f"scheduler {name}: create for model {names['model']}: every {lk.upload_frequency} + "
            f"{lk.delay_offset_minutes} min, input s3://{in_bucket}/{in_prefix}"
            f"<component>{lk.delimiter}<{lk.timestamp_format}>.csv (offset {lk.timezone_offset}), output "
            f"s3://{out_bucket}/{out_prefix}")
    if run.dry_run:
        return "NOT_CREATED"
    created = call(run.client, "create_inference_scheduler", ModelName=names["model"], InferenceSchedulerName=name,
                   DataUploadFrequency=lk.upload_frequency, DataDelayOffsetInMinutes=lk.delay_offset_minutes,
                   DataInputConfiguration={
                       "S3InputConfiguration": {"Bucket": in_bucket, "Prefix": in_prefix},
                       "InputTimeZoneOffset": lk.timezone_offset,
                       "InferenceInputNameConfiguration": {"TimestampFormat": lk.timestamp_format,
                                                           "ComponentTimestampDelimiter": lk.delimiter}},
                   DataOutputConfiguration={"S3OutputConfiguration": {"Bucket": out_bucket, "Prefix": out_prefix}},
                   RoleArn=role)
    run.say(f"scheduler {name}: created ({created['Status']}); it starts by itself")
    return created["Status"]


def _scheduler_diffs(doc: dict, model: str, lk, locs) -> list[str]:
    """'<setting>: scheduler has X, file says Y' for each setting of an existing scheduler that differs."""
    inp = doc.get("DataInputConfiguration") or {}
    s3_in = inp.get("S3InputConfiguration") or {}
    names = inp.get("InferenceInputNameConfiguration") or {}
    s3_out = (doc.get("DataOutputConfiguration") or {}).get("S3OutputConfiguration") or {}
    pairs = {
        "model": (doc.get("ModelName"), model),
        "upload_frequency": (doc.get("DataUploadFrequency"), lk.upload_frequency),
        "delay_offset_minutes": (int(doc.get("DataDelayOffsetInMinutes") or 0), lk.delay_offset_minutes),
        "input": ((s3_in.get("Bucket"), s3_in.get("Prefix", "")), locs["input"]),
        "output": ((s3_out.get("Bucket"), s3_out.get("Prefix", "")), locs["output"]),
        "timestamp_format": (names.get("TimestampFormat"), lk.timestamp_format),
        "delimiter": (names.get("ComponentTimestampDelimiter"), lk.delimiter),
        "timezone_offset": (inp.get("InputTimeZoneOffset") or "+00:00", lk.timezone_offset),
    }
    return [f"{key}: scheduler has {theirs!r}, file says {mine!r}" for key, (theirs, mine) in pairs.items()
            if theirs is not None and theirs != mine]
