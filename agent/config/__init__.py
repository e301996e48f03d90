"""Asset configuration: one TOML file per asset, validated at load, environment overrides on top.

``load(path)`` returns a frozen AssetConfig or raises ConfigError whose text names the file, the key path and
the allowed values; the CLI turns that into exit code 78 (EX_CONFIG) so systemd stops restarting. Nothing is
started before the whole file validated: an agent never runs half-configured.

Types are strict, as TOML spells them: a boolean is not an integer (``fill_limit = true``), a float is not an
integer (``fill_limit = 2.0``), a string is not a number. Every file the configuration names is read as UTF-8
text; a missing, binary, unreadable or directory path is a ConfigError naming it (agent.config.files). Side
files (certificates, password and secret files, an exec hook's program) must be readable at load time
(agent.config.side_files).

Environment overrides: ``L4E_AGENT_<KEY>``, nested keys joined by ``__``, e.g.
``L4E_AGENT_LOOKOUT__INPUT=s3://bucket/prefix/`` or ``L4E_AGENT_WINDOW__GRACE_SECS=30``. They win over the file;
an error in one names the variable (``L4E_AGENT_LOOKOUT__UPLOAD_FREQUENCY=PT7M: lookout.upload_frequency: ...``)
and a variable that names no key is refused. The file and the environment are pydantic-settings sources
(agent.config.env); the asset models validate what they give, strictly, with the messages above.

The models are the documentation: every field has a description, and ``config/example.toml`` is generated from
them (``l4e-agent config-example``); a test fails when it drifts.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.alarms.config import AlarmsConfig
from agent.config import env as config_env
from agent.config.errors import format_problems, format_validation
from agent.config.files import check_text_file, describe_read_error, read_text, toml_problems
from agent.config.schema import literal_problems, pattern_in_words
from agent.config.side_files import check_side_files
from agent.core.errors import ConfigError
from agent.core.log_config import LogConfig
from agent.core.metrics_config import MetricsConfig
from agent.pipeline.store import parse_location
from agent.pipeline.windows import SAMPLING_RATES, UPLOAD_FREQUENCIES, parse_offset
from connectors.registry import SourceEntry  # the [[sources]] kinds: no protocol library is imported

NAME_PATTERN = re.compile(r"^[0-9a-zA-Z._\-]{1,200}$")  # botocore ComponentName; also L4E column names
Agg = Literal["mean", "last", "min", "max"]
ENV_PREFIX = config_env.ENV_PREFIX


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LookoutConfig(_Section):
    """Where and how the inference scheduler expects its input (the scheduler's own settings)."""

    scheduler: str | None = Field(default=None, description="Inference scheduler name. When set, the agent "
                                  "reads the settings below from the Lookout API (values given here must agree).")
    endpoint_url: str | None = Field(default=None, description="Lookout for Equipment API endpoint (default: "
                                     "AWS; e.g. http://127.0.0.1:8765 for the local service).")
    ca_bundle: Path | None = Field(default=None, description="PEM file of the certificate authorities that "
                                   "signed the endpoint's TLS certificate (e.g. the local service's --tls-cert); "
                                   "default: botocore's bundle, or AWS_CA_BUNDLE. Relative to the asset file's "
                                   "folder; must exist at load.")
    upload_frequency: Literal["PT5M", "PT10M", "PT15M", "PT30M", "PT1H"] | None = Field(
        default=None, description="DataUploadFrequency of the scheduler: the window length.")
    delay_offset_minutes: int = Field(default=0, ge=0, le=60, description="DataDelayOffsetInMinutes: the "
                                      "scheduler runs a window at end + this; files must be there before.")
    sampling_rate: Literal["PT1S", "PT5S", "PT10S", "PT15S", "PT30S", "PT1M", "PT5M", "PT10M", "PT15M",
                           "PT30M", "PT1H"] | None = Field(
        default=None, description="The model's TargetSamplingRate: the row grid inside files. Must divide "
                                  "upload_frequency.")
    input: str | None = Field(default=None, description="Scheduler input location: s3://bucket/prefix/ or "
                              "file:///absolute/folder/ (prefix ends with '/').")
    output: str | None = Field(default=None, description="Scheduler output location (results.jsonl), same "
                               "forms as input; used to read results without API access.")
    timestamp_format: Literal["EPOCH", "yyyy-MM-dd-HH-mm-ss", "yyyyMMddHHmmss"] = Field(
        default="yyyyMMddHHmmss", description="TimestampFormat of input file names.")
    delimiter: Literal["-", "_", " ", ""] = Field(default="_", description="ComponentTimestampDelimiter "
                                                  "between the component name and the timestamp.")
    timezone_offset: str = Field(default="+00:00", description="InputTimeZoneOffset: shifts the timestamp "
                                 "in calendar-format file names (rows inside stay UTC).")
    timestamp_column: str = Field(default="Timestamp", description="Name of the timestamp column (first in "
                                  "every file, as in the dataset schema).")
    store: str | None = Field(default=None, description="Where the scheduler's buckets live when its locations "
                              "come from the API: unset = S3; file:///root/ = a local folder with one sub-folder "
                              "per bucket (the local service's --store).")
    region: str | None = Field(default=None, description="AWS region of the Lookout API (default: the AWS "
                               "settings, else us-east-1).")

    @field_validator("timezone_offset")
    @classmethod
    def _offset(cls, value: str) -> str:
        parse_offset(value)
        return value

    @field_validator("input", "output")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_location(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("timestamp_column")
    @classmethod
    def _ts_column(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"must be {pattern_in_words(NAME_PATTERN.pattern)}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> LookoutConfig:
        if self.scheduler is None:
            missing = [k for k in ("upload_frequency", "sampling_rate", "input") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{', '.join(missing)} required unless 'scheduler' names an inference "
                                 "scheduler to read them from")
        if self.upload_frequency and self.sampling_rate:
            f, r = UPLOAD_FREQUENCIES[self.upload_frequency], SAMPLING_RATES[self.sampling_rate]
            if f % r:
                raise ValueError(f"sampling_rate {self.sampling_rate} does not divide upload_frequency "
                                 f"{self.upload_frequency}")
        return self

    @property
    def frequency_secs(self) -> int:
        return UPLOAD_FREQUENCIES[self.upload_frequency]

    @property
    def rate_secs(self) -> int:
        return SAMPLING_RATES[self.sampling_rate]

    @property
    def offset_secs(self) -> int:
        return parse_offset(self.timezone_offset)


class SensorConfig(_Section):
    """Per-sensor settings."""

    agg: Agg | None = Field(default=None, description="How readings within one grid step are combined "
                            "(default: [window] agg).")
    max_age_secs: float | None = Field(default=None, gt=0, le=86_400 * 366, description="A value of this "
                                       "sensor holds at most this long after its timestamp, even while its "
                                       "source still vouches for it (default: no limit; rule 2a).")


class WindowConfig(_Section):
    """How readings become rows."""

    agg: Agg = Field(default="mean", description="Default aggregation of the readings in (t − rate, t].")
    fill_limit: int = Field(default=2, ge=0, le=10_000, description="Grid steps a value may be carried "
                            "forward into empty grid points (0: never).")
    grace_secs: float = Field(default=20.0, ge=0, le=3600, description="Wait this long after a window ends "
                              "for late readings before writing it.")


class SpoolConfig(_Section):
    """Durable raw readings on local disk."""

    fsync_interval_ms: int = Field(default=1000, ge=10, le=1000, description="Readings are appended and "
                                   "fsynced in batches at least this often: the most a power cut can lose.")
    budget_bytes: int = Field(default=1 << 30, ge=1 << 20, description="Disk budget for spool + outbox "
                              "together.")
    when_full: Literal["drop_oldest", "drop_newest"] = Field(
        default="drop_oldest", description="At the budget: drop the oldest raw readings first (keep the "
        "newest data), or stop accepting new readings. Written windows go last either way; a data-health "
        "event says what was dropped.")


class UploadConfig(_Section):
    """Outbox → store."""

    backoff_initial_secs: float = Field(default=1.0, gt=0, le=600, description="First retry delay after a "
                                        "failed upload (wall seconds).")
    backoff_max_secs: float = Field(default=60.0, gt=0, le=3600, description="Cap of the retry delay "
                                    "(wall seconds).")
    connect_timeout_secs: float = Field(default=10.0, gt=0, le=300, description="S3: seconds to establish "
                                        "a connection to the endpoint.")
    timeout_secs: float = Field(default=60.0, gt=0, le=3600, description="Seconds one upload may take in "
                                "total (S3 or folder store); a store that does not answer in time counts as "
                                "down and is retried with backoff.")


class HealthConfig(_Section):
    """Data-health checks that raise events (and alarms, when a rule listens)."""

    source_silent_secs: float = Field(default=300.0, gt=0, description="A source that delivered no reading "
                                      "for this long (clock seconds) is reported silent; recovery is reported "
                                      "with its next reading.")


class AssetConfig(_Section):
    """One asset: its Lookout scheduler settings, its components and the sources that feed them."""

    asset: str = Field(description="Asset name (used for the state folder, logs, metrics, alarms).",
                       pattern=r"^[0-9a-zA-Z._\-]{1,200}$")
    lookout: LookoutConfig = Field(description="Scheduler settings.")
    components: dict[str, list[str]] = Field(default_factory=dict, description="ComponentName → its sensors, "
                                             "in schema order (the CSV column order). May be omitted when "
                                             "[lookout] scheduler names a scheduler: its model's schema is used.")
    sensors: dict[str, SensorConfig] = Field(default_factory=dict, description="Per-sensor settings.")
    window: WindowConfig = Field(default_factory=WindowConfig, description="Resampling rules.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="Raw reading spool.")
    upload: UploadConfig = Field(default_factory=UploadConfig, description="Upload retries.")
    sources: list[SourceEntry] = Field(description="Where readings come from.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Data-health checks.")
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig, description="Alarm rules and the hooks that "
                                 "deliver them (README, Alarms; config/demo/pump-07.toml has a working set).")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus /metrics and /healthz "
                                   "(process-wide: the first asset file's settings apply).")
    log: LogConfig = Field(default_factory=LogConfig, description="Log format and level (process-wide: the "
                           "first asset file's settings apply).")
    state_dir: Path | None = Field(default=None, description="State folder (default: /var/lib/l4e-agent/"
                                   "<asset>, or --state-dir).")

    @field_validator("components")
    @classmethod
    def _components(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for comp, sensors in value.items():
            if not NAME_PATTERN.match(comp):
                raise ValueError(f"component name {comp!r} must be {pattern_in_words(NAME_PATTERN.pattern)}")
            if not sensors:
                raise ValueError(f"component {comp!r} needs at least one sensor")
            twice = sorted({s for s in sensors if sensors.count(s) > 1})
            if twice:
                raise ValueError(f"component {comp!r} lists sensor {', '.join(map(repr, twice))} twice; allowed: "
                                 "each sensor once per component")
            for s in sensors:
                if not NAME_PATTERN.match(s):
                    raise ValueError(f"sensor name {s!r} in {comp!r} must be "
                                     f"{pattern_in_words(NAME_PATTERN.pattern)}")
        owners: dict[str, list[str]] = {}
        for comp, sensors in value.items():
            for s in dict.fromkeys(sensors):
                owners.setdefault(s, []).append(comp)
        shared = {s: comps for s, comps in owners.items() if len(comps) > 1}
        if shared:
            sensor, comps = next(iter(shared.items()))
            raise ValueError(f"sensor {sensor!r} is listed in components {' and '.join(map(repr, comps))}; "
                             "allowed: each sensor in exactly one component"
                             + (f" (also shared: {', '.join(map(repr, list(shared)[1:]))})" if len(shared) > 1 else ""))
        return value

    @model_validator(mode="after")
    def _cross(self) -> AssetConfig:
        if not self.components and self.lookout.scheduler is None:
            raise ValueError("[components] is required unless [lookout] scheduler names a scheduler whose model "
                             "schema provides them")
        known = set(self.all_sensors())
        unknown = sorted(set(self.sensors) - known)
        if unknown:
            raise ValueError(f"[sensors] names {unknown} that are in no component")
        if self.lookout.timestamp_column in known:
            raise ValueError(f"timestamp column {self.lookout.timestamp_column!r} is also a sensor name")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        try:
            self.alarms.check_sources({s.name: s.kind for s in self.sources})
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def all_sensors(self) -> list[str]:
        """Every sensor of every component, first occurrence order."""
        seen: dict[str, None] = {}
        for sensors in self.components.values():
            for s in sensors:
                seen.setdefault(s, None)
        return list(seen)

    def agg_for(self, sensor: str) -> str:
        cfg = self.sensors.get(sensor)
        return (cfg.agg if cfg and cfg.agg else None) or self.window.agg


def load(path: str | Path, *, check_sources: bool = True, environ: dict[str, str] | None = None) -> AssetConfig:
    """Read, validate and return the asset file at ``path``, with the environment overrides (``environ``,
    default ``os.environ``) on top. Raises ConfigError (→ exit 78) naming the file or the variable, the key
    path and the allowed values.

    Types are strict: a boolean is not an integer (``fill_limit = true``), a float is not an integer
    (``fill_limit = 2.0``) and a string is not a number (``grace_secs = "20"``), as TOML spells them.
    """
    path = Path(path)
    text = read_text(path, what="asset file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    problems = toml_problems(data)
    if problems:
        raise ConfigError("; ".join(problems), file=str(path))
    merged, overrides = config_env.overlay(os.environ if environ is None else environ, AssetConfig, data)
    numeric_choices = literal_problems(AssetConfig, merged)
    if numeric_choices:
        error = ConfigError(format_problems(numeric_choices, file=str(path), overrides=overrides))
        error.file = str(path)
        raise error
    try:
        # JSON mode + strict: TOML types are JSON types and nothing is coerced (a path still takes a string)
        config = AssetConfig.model_validate_json(json.dumps(merged), strict=True)
    except ValidationError as exc:
        error = ConfigError(format_validation(exc, file=str(path), root=AssetConfig, data=merged,
                                              overrides=overrides))
        error.file = str(path)
        raise error from None
    if check_sources:
        check_sensor_coverage(config, path)
        check_side_files(config, path, base_dir_of(path))
    config = _resolve_metrics_token(config, path)
    return _resolve_ca_bundle(config, path)


def _resolve_ca_bundle(config: AssetConfig, path: Path) -> AssetConfig:
    """[lookout] ca_bundle relative to the asset file's folder (its readability is a side-file check)."""
    bundle = config.lookout.ca_bundle
    if bundle is None or bundle.is_absolute():
        return config
    lookout = config.lookout.model_copy(update={"ca_bundle": base_dir_of(path) / bundle})
    return config.model_copy(update={"lookout": lookout})


def base_dir_of(path: str | Path) -> Path:
    return Path(path).resolve().parent


def _resolve_metrics_token(config: AssetConfig, path: Path) -> AssetConfig:
    """[metrics] token_file relative to the asset file's folder, and readable and non-empty (ConfigError)."""
    from agent.core.metrics_config import read_token

    token_file = config.metrics.token_file
    if token_file is None or not config.metrics.enabled:
        return config
    if not token_file.is_absolute():
        token_file = base_dir_of(path) / token_file
    try:
        read_token(token_file)
    except ValueError as exc:
        raise ConfigError(f"{exc}; allowed: a readable file holding the token", file=str(path),
                          key="metrics.token_file") from None
    return config.model_copy(update={"metrics": config.metrics.model_copy(update={"token_file": token_file})})


def check_sensor_coverage(config: AssetConfig, path: Path) -> None:
    """Every component sensor must come from exactly one source (reads replay headers: file I/O)."""
    base = base_dir_of(path)
    providers: dict[str, list[str]] = {}
    for i, source in enumerate(config.sources):
        where = source.resolved_path(base) if hasattr(source, "resolved_path") else None
        try:
            if where is not None:
                check_text_file(where)
            provided = source.sensors(base)
        except (OSError, UnicodeError, csv.Error) as exc:  # the replay CSV
            raise ConfigError(f'{describe_read_error(exc, where)} (source "{source.name}")', file=str(path),
                              key=f"sources[{i}].path") from None
        except ValueError as exc:
            raise ConfigError(f'{exc} (source "{source.name}")', file=str(path), key=f"sources[{i}]") from None
        for sensor in provided:
            providers.setdefault(sensor, []).append(source.name)
    for sensor in config.all_sensors():
        names = providers.get(sensor, [])
        if not names:
            raise ConfigError(f"sensor {sensor!r} is provided by no source (sources provide: "
                              f"{sorted(providers) or 'nothing'})", file=str(path), key="components")
        if len(names) > 1:
            raise ConfigError(f"sensor {sensor!r} is provided by more than one source: {names}; allowed: "
                              "exactly one", file=str(path), key="sources")
