"""The Lookout for Equipment API as the agent uses it: a boto3 client, discovery, locations, scheduler status.

Discovery (``discover``): when ``[lookout] scheduler`` names an inference scheduler, DescribeInferenceScheduler
and DescribeModel (DescribeDataset when the model carries no Schema) supply what the scheduler already knows:
upload frequency, delay offset, input and output locations, file-name format, delimiter, time-zone offset,
the model's sampling rate and the schema's components and sensors. A value written in the asset file must
agree (ConfigError naming both values); a schema sensor that no source provides is a ConfigError. The answer
is cached in ``<state_dir>/discovery.json`` so the agent keeps running, with a WARNING, while the API is
unreachable.

Buckets and stores: the API speaks of (bucket, prefix) pairs. ``[lookout] store`` says where those buckets
live: unset → S3 (``s3://bucket/prefix``); ``file:///root/`` → a local folder with one sub-folder per bucket
(the local service's ``--store``), so bucket ``b``, prefix ``p/`` is ``file:///root/b/p/``.

Every function here blocks (HTTP); async callers run them in a thread.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from agent.config import AssetConfig, LookoutConfig, base_dir_of
from agent.core.atomic import write_json_atomic
from agent.core.errors import ConfigError, LookoutError
from agent.pipeline.store import BUCKET_PATTERN, FileStore, ObjectStore, S3Store, parse_location, s3_client

log = logging.getLogger("l4e.lookout")

DISCOVERY_FILE = "discovery.json"
DISCOVERY_VERSION = 1
DEFAULT_REGION = "us-east-1"
# The SDK's defaults (README, L4E contract §2); the service's own defaults are unconfirmed.
DEFAULT_NAMING = {"delimiter": "_", "timestamp_format": "yyyyMMddHHmmss", "timezone_offset": "+00:00"}


class LookoutUnavailable(LookoutError):
    """The API could not be reached (connection refused, timeout, DNS, 5xx/throttling after retries)."""


# --------------------------------------------------------------------------------------------------------
# client and error mapping
# --------------------------------------------------------------------------------------------------------


def make_client(endpoint_url: str | None, region: str | None = None, ca_bundle: str | Path | None = None):
    """A boto3 ``lookoutequipment`` client. ``endpoint_url`` None → AWS's endpoint for the region; region
    defaults to AWS_REGION / AWS_DEFAULT_REGION, else us-east-1. ``ca_bundle``: PEM file of the CAs an https
    endpoint's certificate is checked against (default: botocore's, or AWS_CA_BUNDLE). Standard retry mode with
    3 attempts and short timeouts (connect 5 s, read 20 s): a caller polling every few minutes must not hang on a
    dead link. Credentials come from the standard chain, never from the asset file.

    With an ``endpoint_url`` (the local service) and no credentials in the chain, requests go unsigned: a
    local service started without access keys checks none, and one started with keys refuses an unsigned
    request (AccessDeniedException: Missing Authentication Token), so keys stay required where they are.
    Against AWS (no endpoint_url) missing credentials are an error as before."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20)
    session = boto3.session.Session()
    if endpoint_url is not None and session.get_credentials() is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.client("lookoutequipment", endpoint_url=endpoint_url, region_name=region, config=config,
                          verify=str(ca_bundle) if ca_bundle is not None else None)


def call(client, operation: str, **params) -> dict:
    """``client.<operation>(**params)`` with errors mapped: unreachable/5xx/throttled → LookoutUnavailable;
    any other API error → LookoutError whose ``code`` attribute is the AWS error code."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        return getattr(client, operation)(**params)
    except (NoCredentialsError, PartialCredentialsError) as exc:  # a setup problem: retrying will not help
        error = LookoutError(f"{operation}: {exc}")
        error.code = "NoCredentials"
        raise error from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        cls = LookoutUnavailable if status >= 500 or "Throttl" in code else LookoutError
        error = cls(f"{operation}: {code}: {err.get('Message', exc)}")
        error.code = code
        raise error from None
    except BotoCoreError as exc:
        error = LookoutUnavailable(f"{operation}: {exc}")
        error.code = ""
        raise error from None


def paginate(client, operation: str, key: str, **params) -> list[dict]:
    """Every item of a NextToken-paginated List* operation (``key`` names the list in the response)."""
    items, token = [], None
    while True:
        page = call(client, operation, **params, **({"NextToken": token} if token else {}))
        items += page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return items


# --------------------------------------------------------------------------------------------------------
# buckets ⇄ location URLs
# --------------------------------------------------------------------------------------------------------


def store_of(lookout: LookoutConfig) -> str | None:
    """``[lookout] store`` (None = S3). Read with getattr while the field is being added to LookoutConfig."""
    return getattr(lookout, "store", None)


def _store_root(store: str) -> Path:
    parsed = urlparse(store)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise ConfigError(f"store {store!r}: allowed: unset (S3) or file:///absolute/folder/", key="lookout.store")
    return Path(unquote(parsed.path))


def location_url(bucket: str, prefix: str, store: str | None) -> str:
    """The agent's location URL for an API (bucket, prefix): ``s3://b/p`` or ``file:///root/b/p``."""
    if store is None:
        return f"s3://{bucket}/{prefix}"
    return (_store_root(store) / bucket).as_uri() + "/" + prefix


def bucket_prefix(url: str, store: str | None) -> tuple[str, str]:
    """Inverse of location_url: the API's (bucket, prefix) for an agent location URL. A ``file://`` URL
    must lie below the store folder (its first level is the bucket). Raises ConfigError."""
    scheme, where, prefix = parse_location(url)
    if scheme == "s3":
        return where, prefix
    if store is None:
        raise ConfigError(f"{url!r} is a folder, but lookout.store is unset (S3): set lookout.store to the "
                          "folder that holds one sub-folder per bucket (the local service's --store)",
                          key="lookout.store")
    root = _store_root(store)
    try:
        rel = Path(where).relative_to(root)
    except ValueError:
        raise ConfigError(f"{url!r} is not below the store folder {root}", key="lookout.store") from None
    parts = rel.parts
    if not parts or not BUCKET_PATTERN.match(parts[0]):
        raise ConfigError(f"{url!r}: the first folder below {root} must be a bucket name matching "
                          f"{BUCKET_PATTERN.pattern}", key="lookout.store")
    return parts[0], "".join(p + "/" for p in parts[1:])


def bucket_store(bucket: str, store: str | None, s3_client_factory=None) -> ObjectStore:
    """The ObjectStore for an API bucket (FileStore below the store folder, or S3Store)."""
    if store is not None:
        return FileStore(_store_root(store) / bucket)
    if s3_client_factory is None:
        s3_client_factory = s3_client  # bounded connect and read timeouts

    return S3Store(s3_client_factory(), bucket)


def same_location(a: str, b: str) -> bool:
    """Two location URLs name the same place (trailing slashes and percent-encoding aside)."""
    try:
        return parse_location(a) == parse_location(b)
    except ConfigError:
        return a == b


# --------------------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------------------


def parse_schema(text: str) -> tuple[str, dict[str, list[str]]]:
    """InlineDataSchema JSON → (timestamp column name, {component: [sensors in order]}). The timestamp
    column is the DATETIME one (first by convention); every other column is a sensor. Raises ValueError."""
    doc = json.loads(text) if isinstance(text, str) else text
    ts_col, components = None, {}
    for comp in doc["Components"]:
        sensors = []
        for col in comp["Columns"]:
            if col.get("Type") == "DATETIME":
                if ts_col not in (None, col["Name"]):
                    raise ValueError(f"timestamp columns differ: {ts_col!r} and {col['Name']!r}")
                ts_col = col["Name"]
            else:
                sensors.append(col["Name"])
        components[comp["ComponentName"]] = sensors
    return ts_col or "Timestamp", components


def fetch_discovery(client, scheduler: str) -> dict:
    """What the API says about ``scheduler`` and its model, as plain JSON (the cache format). Raises
    LookoutUnavailable, or LookoutError (``code`` ResourceNotFoundException for an unknown name)."""
    sched = call(client, "describe_inference_scheduler", InferenceSchedulerName=scheduler)
    model = call(client, "describe_model", ModelName=sched["ModelName"])
    schema = model.get("Schema")
    if not schema:
        schema = call(client, "describe_dataset", DatasetName=model["DatasetName"]).get("Schema")
    if not schema:
        raise LookoutError(f"model {sched['ModelName']!r} and its dataset carry no schema")
    inp = sched.get("DataInputConfiguration") or {}
    s3_in = inp.get("S3InputConfiguration") or {}
    names = inp.get("InferenceInputNameConfiguration") or {}
    s3_out = (sched.get("DataOutputConfiguration") or {}).get("S3OutputConfiguration") or {}
    try:
        ts_col, components = parse_schema(schema)
    except (ValueError, KeyError, TypeError) as exc:
        raise LookoutError(f"model {sched['ModelName']!r}: unreadable schema: {exc}") from None
    return {
        "version": DISCOVERY_VERSION,
        "scheduler": scheduler,
        "status": sched.get("Status"),
        "model": sched["ModelName"],
        "upload_frequency": sched.get("DataUploadFrequency"),
        "delay_offset_minutes": int(sched.get("DataDelayOffsetInMinutes") or 0),
        "input": {"bucket": s3_in.get("Bucket"), "prefix": s3_in.get("Prefix", "")} if s3_in else None,
        "output": {"bucket": s3_out.get("Bucket"), "prefix": s3_out.get("Prefix", "")} if s3_out else None,
        "timestamp_format": names.get("TimestampFormat") or DEFAULT_NAMING["timestamp_format"],
        "delimiter": names.get("ComponentTimestampDelimiter", DEFAULT_NAMING["delimiter"]),
        "timezone_offset": inp.get("InputTimeZoneOffset") or DEFAULT_NAMING["timezone_offset"],
        "sampling_rate": (model.get("DataPreProcessingConfiguration") or {}).get("TargetSamplingRate"),
        "timestamp_column": ts_col,
        "components": components,
    }


def _write_json(path: Path, doc: dict) -> None:
    """Atomic replace (agent.core.atomic): a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc, indent=1, sort_keys=True)


def load_cached_discovery(state_dir: Path, scheduler: str) -> dict | None:
    """The cached discovery for ``scheduler``, or None (absent, unreadable, or for another scheduler)."""
    try:
        doc = json.loads((Path(state_dir) / DISCOVERY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != DISCOVERY_VERSION or doc.get("scheduler") != scheduler:
        return None
    return doc


def discover(config: AssetConfig, config_path: Path, state_dir: Path, client) -> AssetConfig:
    """The asset config completed from the scheduler named in ``[lookout] scheduler`` (unchanged when none).

    Raises ConfigError (exit 78) when a file value disagrees with the scheduler, a schema sensor has no
    source, the scheduler does not exist, or the result is not a valid config; LookoutError when the API
    fails and no cached discovery exists. API unreachable with a cache → the cache, logged at WARNING.
    """
    name = config.lookout.scheduler
    if not name:
        return config
    try:
        facts = fetch_discovery(client, name)
    except LookoutUnavailable as exc:
        facts = load_cached_discovery(state_dir, name)
        if facts is None:
            raise LookoutError(f"inference scheduler {name!r}: API unreachable ({exc}) and no cached "
                               f"discovery in {Path(state_dir) / DISCOVERY_FILE}") from None
        log.warning("Lookout API unreachable (%s): using the discovery cached in %s", exc,
                    Path(state_dir) / DISCOVERY_FILE)
    except LookoutError as exc:
        if getattr(exc, "code", "") == "ResourceNotFoundException":
            raise ConfigError(f"no inference scheduler named {name!r} (or its model is gone): {exc}",
                              file=str(config_path), key="lookout.scheduler") from None
        raise
    else:
        _write_json(Path(state_dir) / DISCOVERY_FILE, facts)
    return apply_discovery(config, config_path, facts)


def _check(config_path: Path, lookout: LookoutConfig, key: str, api_value, scheduler: str, same=None) -> None:
    """A value the file sets explicitly must equal the API's; otherwise ConfigError naming both."""
    if key not in lookout.model_fields_set or api_value is None:
        return
    file_value = getattr(lookout, key)
    if not (same(file_value, api_value) if same else file_value == api_value):
        hint = ""
        if same and urlparse(str(file_value)).scheme != urlparse(str(api_value)).scheme:
            hint = " (lookout.store says where the scheduler's buckets are: unset = S3, or a local folder)"
        raise ConfigError(f"the file says {file_value!r} but inference scheduler {scheduler!r} has "
                          f"{api_value!r}; remove the key or make it agree{hint}", file=str(config_path),
                          key=f"lookout.{key}")


def apply_discovery(config: AssetConfig, config_path: Path, facts: dict) -> AssetConfig:
    """Merge discovery ``facts`` (fetch_discovery's format) into ``config``. Pure except that it reads the
    replay sources' CSV headers (to check sensor coverage). Raises ConfigError."""
    lookout, scheduler = config.lookout, facts["scheduler"]
    store = store_of(lookout)
    api = {
        "upload_frequency": facts.get("upload_frequency"),
        "delay_offset_minutes": facts.get("delay_offset_minutes"),
        "sampling_rate": facts.get("sampling_rate"),
        "timestamp_format": facts.get("timestamp_format"),
        "delimiter": facts.get("delimiter"),
        "timezone_offset": facts.get("timezone_offset"),
        "timestamp_column": facts.get("timestamp_column"),
        "input": location_url(facts["input"]["bucket"], facts["input"]["prefix"], store)
        if facts.get("input") else None,
        "output": location_url(facts["output"]["bucket"], facts["output"]["prefix"], store)
        if facts.get("output") else None,
    }
    for key, value in api.items():
        _check(config_path, lookout, key, value, scheduler,
               same_location if key in ("input", "output") else None)
    merged = lookout.model_dump()
    merged.update({k: v for k, v in api.items() if v is not None and k not in lookout.model_fields_set})
    try:
        new_lookout = LookoutConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(f"settings discovered from inference scheduler {scheduler!r} are not usable: "
                          f"{exc.errors(include_url=False)[0]['msg']}", file=str(config_path),
                          key="lookout") from None
    components = facts["components"]
    check_schema_coverage(config, config_path, components)
    check_components(config, config_path, components, scheduler)
    return config.model_copy(update={"lookout": new_lookout, "components": dict(components)})


def check_schema_coverage(config: AssetConfig, config_path: Path, components: dict[str, list[str]]) -> None:
    """Every sensor of the model's schema must come from some source (reads replay headers: file I/O)."""
    base = base_dir_of(config_path)
    provided: set[str] = set()
    for i, source in enumerate(config.sources):
        try:
            provided.update(source.sensors(base))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc), file=str(config_path), key=f"sources[{i}]") from None
    for comp, sensors in components.items():
        for sensor in sensors:
            if sensor not in provided:
                raise ConfigError(f"sensor {sensor!r} of component {comp!r} in the model's schema is provided "
                                  f"by no source (sources provide: {sorted(provided) or 'nothing'})",
                                  file=str(config_path), key="components")


def check_components(config: AssetConfig, config_path: Path, components: dict[str, list[str]],
                     scheduler: str) -> None:
    """The file's [components] must equal the schema's: same names, same sensors in the same order (the
    CSV column order). An empty [components] (when the config allows it) takes the schema's."""
    mine = dict(config.components or {})
    if not mine:
        return
    if mine != components:
        raise ConfigError(f"the file says {mine!r} but the model of inference scheduler {scheduler!r} has the "
                          f"schema {components!r} (same components, same sensors in the same order)",
                          file=str(config_path), key="components")


# --------------------------------------------------------------------------------------------------------
# scheduler status (for `check` and `status`)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerStatus:
    """status: PENDING | RUNNING | STOPPING | STOPPED, or UNREACHABLE / NOT_FOUND / ERROR.
    warning: why `check` should warn (None when RUNNING). latest: LatestInferenceResult (ANOMALOUS|NORMAL)."""

    name: str
    status: str
    warning: str | None = None
    latest: str | None = None
    model: str | None = None


def scheduler_status(client, name: str) -> SchedulerStatus:
    """DescribeInferenceScheduler summarised; never raises for API failures (they become the status)."""
    try:
        doc = call(client, "describe_inference_scheduler", InferenceSchedulerName=name)
    except LookoutUnavailable as exc:
        return SchedulerStatus(name, "UNREACHABLE", f"Lookout API unreachable: {exc}")
    except LookoutError as exc:
        if getattr(exc, "code", "") == "ResourceNotFoundException":
            return SchedulerStatus(name, "NOT_FOUND", f"no inference scheduler named {name!r}")
        return SchedulerStatus(name, "ERROR", str(exc))
    status = doc.get("Status", "UNKNOWN")
    warning = None if status == "RUNNING" else (
        f"inference scheduler {name!r} is {status}, not RUNNING: windows uploaded now are not scored")
    return SchedulerStatus(name, status, warning, doc.get("LatestInferenceResult"), doc.get("ModelName"))
