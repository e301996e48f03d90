"""Prometheus metrics without a dependency: a registry, the agent's metric set, and a tiny HTTP server.

The registry renders the Prometheus text exposition format 0.0.4. Metrics are thread-safe (the
uploader may run boto3 in worker threads). Hot paths need not touch metrics at all: register a
*collector*, a callable run at scrape time, that copies totals kept elsewhere (e.g. a connector's
``collections.Counter`` of readings per sensor) into counters with :meth:`Counter.set_total`, or
current sizes into gauges.

The agent's metrics (:class:`AgentMetrics`, names in ``METRIC_SPECS``):

=================================  =========  ==================  ==========================================
name                               type       labels              meaning
=================================  =========  ==================  ==========================================
l4e_readings_total                 counter    source, sensor      readings received from a source
l4e_read_errors_total              counter    source, sensor      failed reads (timeouts, exceptions)
l4e_bad_quality_total              counter    source, sensor      readings with a non-good quality
l4e_windows_written_total          counter    asset               windows written to the outbox
l4e_windows_late_total             counter    asset               windows written after their deadline
l4e_windows_missing_total          counter    asset, component    component files missing from a window
l4e_upload_latency_seconds         histogram  asset               window end → object stored, in seconds
l4e_outbox_backlog                 gauge      asset               files waiting in the outbox
l4e_spool_bytes                    gauge      asset               bytes in the readings spool
l4e_results_processed_total        counter    asset               inference results handled
l4e_alarms_raised_total            counter    asset, rule         alarms raised by a rule
l4e_hook_failures_total            counter    hook                alarm hook deliveries that failed
l4e_source_connected               gauge      source              1 while a source is connected, else 0
l4e_source_alive                   gauge      source              1 while the source's transport answers
l4e_source_bad_quality             gauge      source              1 while it answers but every item is Bad
l4e_source_untrusted               gauge      source              1 while a source's server identity is refused
=================================  =========  ==================  ==========================================

The server (:class:`MetricsServer`) answers ``GET /metrics``, ``GET /healthz`` (200 ``ok`` or 503
with the reason from an injected ``health() -> (ok, reason)``) and, given a ``status() -> dict`` provider,
``GET /`` (the status page, agent.runtime.status_page) and ``GET /api/status`` (the same data as JSON, documented in
agent.runtime.status_data). It binds 127.0.0.1 by default. Bound to any other address it requires a token
(``[metrics] token_file``; a configuration without one is refused at load, exit 78): every request must
then carry ``Authorization: Bearer <token>`` (or HTTP Basic with the token as the password, so a browser
can ask for it), else 401.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# --------------------------------------------------------------------------------------------------
# Metric types


def _format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without '.0', +Inf/-Inf/NaN spelled out."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _render_labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)
    return "{" + body + "}" if body else ""


class _Metric:
    """Common parts: name, help, label names, a lock, and label-set validation."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        """Label values in declaration order; every declared label is required, no others allowed."""
        if labels.keys() != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def _pairs(self, key: tuple[str, ...]) -> list[tuple[str, str]]:
        return list(zip(self.labelnames, key, strict=True))

    def samples(self) -> Iterator[tuple[str, list[tuple[str, str]], float]]:
        """(sample name, label pairs, value) for every series, sorted by label values."""
        raise NotImplementedError

    def render(self) -> str:
        """The metric's block in the text format: HELP, TYPE and its samples."""
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{name}{_render_labels(pairs)} {_format_value(value)}" for name, pairs, value in self.samples()]
        return "\n".join(lines) + "\n"


class _Scalar(_Metric):
    """A metric holding one float per label set (counters and gauges)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        # An unlabelled metric exists from the start (value 0); labelled series appear when first set.
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def value(self, **labels: object) -> float:
        """Current value of one series (0 when it was never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def remove(self, **labels: object) -> None:
        """Drop one series (e.g. a source removed from the configuration)."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def samples(self) -> Iterator[tuple[str, list[tuple[str, str]], float]]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield self.name, self._pairs(key), value

    def _add(self, key: tuple[str, ...], amount: float) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def _set(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[key] = float(value)


class Counter(_Scalar):
    """A monotonic total. Names end in ``_total`` by convention."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (≥ 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        self._add(self._key(labels), amount)

    def set_total(self, value: float, **labels: object) -> None:
        """Set the series to a total counted elsewhere (collectors). The caller keeps it monotonic."""
        self._set(self._key(labels), value)


class Gauge(_Scalar):
    """A value that goes up and down (sizes, backlogs, connection state)."""

    kind = "gauge"

    def set(self, value: float, **labels: object) -> None:
        self._set(self._key(labels), value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._add(self._key(labels), amount)

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self._add(self._key(labels), -amount)


@dataclass
class _HistogramSeries:
    bucket_counts: list[int]  # per upper bound, not cumulative
    sum: float = 0.0
    count: int = 0


class Histogram(_Metric):
    """Observations in a few fixed buckets plus their sum and count (no quantiles computed here).

    ``buckets`` are the finite upper bounds in increasing order; ``+Inf`` is implied.
    """

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]) -> None:
        super().__init__(name, help, labelnames)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and non-empty, got {list(buckets)}")
        self.buckets = (*bounds, math.inf)
        self._series: dict[tuple[str, ...], _HistogramSeries] = {}

    def observe(self, value: float, **labels: object) -> None:
        """Record one observation (in the metric's unit, e.g. seconds)."""
        key = self._key(labels)
        index = next(i for i, bound in enumerate(self.buckets) if value <= bound)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _HistogramSeries([0] * len(self.buckets))
            series.bucket_counts[index] += 1
            series.sum += value
            series.count += 1

    def count(self, **labels: object) -> int:
        """Number of observations of one series."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return series.count if series else 0

    def samples(self) -> Iterator[tuple[str, list[tuple[str, str]], float]]:
        with self._lock:
            snapshot = sorted((key, list(s.bucket_counts), s.sum, s.count) for key, s in self._series.items())
        for key, counts, total, count in snapshot:
            pairs = self._pairs(key)
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                yield f"{self.name}_bucket", [*pairs, ("le", _format_value(bound))], cumulative
            yield f"{self.name}_sum", pairs, total
            yield f"{self.name}_count", pairs, count


# --------------------------------------------------------------------------------------------------
# Registry

_M = TypeVar("_M", bound=_Metric)

Collector = Callable[[], None]
"""A callable run at each scrape, before rendering, to update metrics from state kept elsewhere."""


class Registry:
    """A set of metrics and collectors, rendered together.

    Registering the same name twice with the same type and labels returns the existing metric (so
    independent components can ask for it); a conflicting definition raises ValueError.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Collector] = []
        self._failing_collectors: set[int] = set()
        self._lock = threading.Lock()

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]) -> Histogram:
        return self._register(Histogram(name, help, labelnames, buckets=buckets))

    def get(self, name: str) -> _Metric:
        """The metric registered under ``name`` (KeyError if none)."""
        return self._metrics[name]

    def add_collector(self, collector: Collector) -> None:
        """Run ``collector()`` at every scrape. It must be quick and must not block (it runs on the loop)."""
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> None:
        """Run every collector. A failing collector is logged (once until it recovers) and skipped,
        so one broken source of numbers does not blank the whole scrape."""
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            ident = id(collector)
            try:
                collector()
            except Exception:
                if ident not in self._failing_collectors:
                    log.warning("metrics collector %r failed", collector, exc_info=True)
                    self._failing_collectors.add(ident)
            else:
                self._failing_collectors.discard(ident)

    def render(self) -> str:
        """Run the collectors, then return every metric in the text exposition format 0.0.4."""
        self.collect()
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        return "".join(metric.render() for metric in metrics)

    def _register(self, metric: _M) -> _M:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is None:
                self._metrics[metric.name] = metric
                return metric
        same = type(existing) is type(metric) and existing.labelnames == metric.labelnames
        if isinstance(existing, Histogram) and isinstance(metric, Histogram):
            same = same and existing.buckets == metric.buckets
        if not same:
            raise ValueError(f"metric {metric.name} is already registered with another definition")
        return existing  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# The agent's metrics

READINGS_TOTAL = "l4e_readings_total"
READ_ERRORS_TOTAL = "l4e_read_errors_total"
BAD_QUALITY_TOTAL = "l4e_bad_quality_total"
WINDOWS_WRITTEN_TOTAL = "l4e_windows_written_total"
WINDOWS_LATE_TOTAL = "l4e_windows_late_total"
WINDOWS_MISSING_TOTAL = "l4e_windows_missing_total"
UPLOAD_LATENCY_SECONDS = "l4e_upload_latency_seconds"
OUTBOX_BACKLOG = "l4e_outbox_backlog"
SPOOL_BYTES = "l4e_spool_bytes"
RESULTS_PROCESSED_TOTAL = "l4e_results_processed_total"
ALARMS_RAISED_TOTAL = "l4e_alarms_raised_total"
HOOK_FAILURES_TOTAL = "l4e_hook_failures_total"
SOURCE_CONNECTED = "l4e_source_connected"
SOURCE_ALIVE = "l4e_source_alive"
SOURCE_BAD_QUALITY = "l4e_source_bad_quality"
SOURCE_UNTRUSTED = "l4e_source_untrusted"

UPLOAD_LATENCY_BUCKETS_SECS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Upload latency is measured from a window's end, so it includes the grace period and any outage."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]


METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(READINGS_TOTAL, "counter", "Readings received from a source.", ("source", "sensor")),
    MetricSpec(READ_ERRORS_TOTAL, "counter", "Failed reads of a sensor.", ("source", "sensor")),
    MetricSpec(BAD_QUALITY_TOTAL, "counter", "Readings whose quality was not good.", ("source", "sensor")),
    MetricSpec(WINDOWS_WRITTEN_TOTAL, "counter", "Windows written to the outbox.", ("asset",)),
    MetricSpec(WINDOWS_LATE_TOTAL, "counter", "Windows written after their deadline.", ("asset",)),
    MetricSpec(
        WINDOWS_MISSING_TOTAL,
        "counter",
        "Component files missing from a written window.",
        ("asset", "component"),
    ),
    MetricSpec(
        UPLOAD_LATENCY_SECONDS,
        "histogram",
        "Seconds from a window's end until its object is stored.",
        ("asset",),
    ),
    MetricSpec(OUTBOX_BACKLOG, "gauge", "Files waiting in the outbox for upload.", ("asset",)),
    MetricSpec(SPOOL_BYTES, "gauge", "Bytes held in the readings spool.", ("asset",)),
    MetricSpec(RESULTS_PROCESSED_TOTAL, "counter", "Inference results processed.", ("asset",)),
    MetricSpec(ALARMS_RAISED_TOTAL, "counter", "Alarms raised, by rule.", ("asset", "rule")),
    MetricSpec(HOOK_FAILURES_TOTAL, "counter", "Alarm hook deliveries that failed.", ("hook",)),
    MetricSpec(SOURCE_CONNECTED, "gauge", "1 while the source is connected, 0 otherwise.", ("source",)),
    MetricSpec(SOURCE_ALIVE, "gauge", "1 while the source's transport answers (publish responses, keep-alives, "
               "successful polls), whether or not its values change.", ("source",)),
    MetricSpec(SOURCE_BAD_QUALITY, "gauge", "1 while the source answers but every item is Bad/Uncertain.",
               ("source",)),
    MetricSpec(SOURCE_UNTRUSTED, "gauge", "1 while the source's server certificate is refused, else 0.", ("source",)),
)


@dataclass(frozen=True)
class AgentMetrics:
    """Typed handles on the agent's metrics (see the table in the module docstring)."""

    readings: Counter
    read_errors: Counter
    bad_quality: Counter
    windows_written: Counter
    windows_late: Counter
    windows_missing: Counter
    upload_latency: Histogram
    outbox_backlog: Gauge
    spool_bytes: Gauge
    results_processed: Counter
    alarms_raised: Counter
    hook_failures: Counter
    source_connected: Gauge
    source_alive: Gauge
    source_bad_quality: Gauge
    source_untrusted: Gauge

    @classmethod
    def register(cls, registry: Registry) -> AgentMetrics:
        """Register every metric of ``METRIC_SPECS`` in ``registry`` (idempotent) and return the handles."""
        made: list[_Metric] = []
        for spec in METRIC_SPECS:
            if spec.kind == "counter":
                made.append(registry.counter(spec.name, spec.help, spec.labels))
            elif spec.kind == "gauge":
                made.append(registry.gauge(spec.name, spec.help, spec.labels))
            else:
                made.append(registry.histogram(spec.name, spec.help, spec.labels, buckets=UPLOAD_LATENCY_BUCKETS_SECS))
        return cls(*made)  # field order follows METRIC_SPECS


# --------------------------------------------------------------------------------------------------
# HTTP


class MetricsConfig(BaseModel):
    """The ``[metrics]`` table of an asset file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Serve Prometheus /metrics, /healthz and the status page (/ and "
                          "/api/status) over HTTP.")
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on (also serves the status page / and /api/status). Any address but "
        "loopback requires token_file.",
    )
    port: int = Field(9108, ge=0, le=65535, description="TCP port to listen on; 0 picks a free port (tests).")
    token_file: Path | None = Field(
        None,
        description="File holding the bearer token (surrounding whitespace stripped) every request must carry "
        "when set; required when host is not loopback. Relative to the asset file's folder.",
    )

    @model_validator(mode="after")
    def _token_when_exposed(self) -> MetricsConfig:
        if self.enabled and not is_loopback(self.host) and self.token_file is None:
            raise ValueError(f"host {self.host!r} is not loopback: token_file is required (a file holding the "
                             "bearer token), or use host = \"127.0.0.1\"")
        return self


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; a host name other than localhost counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path`` (whitespace stripped). Raises ValueError when it is unreadable or empty."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {exc}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


Health = Callable[[], tuple[bool, str]]
"""Returns (ok, reason); reason is shown with 503 when not ok."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_REQUEST_TIMEOUT_SECS = 5.0  # a client that sends no complete request in this time is dropped
_MAX_HEADER_LINES = 100


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` (HTTP/1.1, GET and HEAD, one request per
    connection). Use as ``async with MetricsServer(...) as server:`` or call :meth:`start`/:meth:`stop`.
    """

    def __init__(self, registry: Registry, health: Health, *, host: str = "127.0.0.1", port: int = 9108,
                 status: Callable[[], dict] | None = None, token: str | None = None) -> None:
        if token is None and not is_loopback(host):
            raise ValueError(f"metrics: host {host!r} is not loopback and no token is set")
        self.registry = registry
        self.health = health
        self.host = host
        self.requested_port = port
        self.status = status
        self._token = token
        self._server: asyncio.Server | None = None

    @classmethod
    def from_config(cls, config: MetricsConfig, registry: Registry, health: Health,
                    status: Callable[[], dict] | None = None) -> MetricsServer:
        token = read_token(config.token_file) if config.token_file is not None else None
        return cls(registry, health, host=config.host, port=config.port, status=status, token=token)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0). Only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("metrics server is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Bind and start serving in the background. Raises OSError when the port is taken."""
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port, limit=8192)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and wait for the server to close."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SECS):
                method, path, authorization = await _read_request(reader)
            try:
                if not self._authorized(authorization):
                    status, content_type, body = 401, "text/plain; charset=utf-8", b"token required\n"
                else:
                    status, content_type, body = self._respond(method, path)
            except Exception:  # a bug in rendering must not kill the connection without an answer
                log.exception("metrics request %s %s failed", method, path)
                status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            await _write_response(writer, status, content_type, body, head_only=method == "HEAD")
        except _BadRequest as exc:
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await _write_response(writer, 400, "text/plain; charset=utf-8", f"{exc}\n".encode(),
                                      head_only=False)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, self.registry.render().encode()
        if path == "/healthz":
            ok, reason = self._check_health()
            return (
                (200 if ok else 503),
                "text/plain; charset=utf-8",
                (("ok" if ok else reason) + "\n").encode(),
            )
        if path in ("/", "/index.html") and self.status is not None:
            from agent.runtime.status_page import render_page

            return 200, "text/html; charset=utf-8", render_page(self.status()).encode()
        if path == "/api/status" and self.status is not None:
            return 200, "application/json", json.dumps(self.status(), allow_nan=False).encode()
        return 404, "text/plain; charset=utf-8", b"not found: try /, /api/status, /metrics or /healthz\n"

    def _authorized(self, authorization: str) -> bool:
        """No token configured, or the request carries it (Bearer, or Basic with it as the password)."""
        if self._token is None:
            return True
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.encode(), self._token.encode())

    def _check_health(self) -> tuple[bool, str]:
        try:
            ok, reason = self.health()
        except Exception as exc:  # supervision boundary: a broken check is itself a reason to report unhealthy
            log.debug("health check raised", exc_info=True)  # the watchdog gate logs the transition with it
            return False, f"health check raised {type(exc).__name__}: {exc}"
        return bool(ok), reason or "unhealthy"


class _BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, str]:
    """Read the request line and headers; return (method, path without the query string, the Authorization
    header or "")."""
    raw = await _read_line(reader)
    if not raw:  # closed before sending anything (a browser's speculative preconnect): nothing to answer
        raise ConnectionResetError("no request")
    request_line = raw.decode("latin-1").strip()
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest("malformed request line")
    authorization = ""
    for _ in range(_MAX_HEADER_LINES):
        line = await _read_line(reader)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "authorization":
            authorization = value.strip()
    else:
        raise _BadRequest("too many header lines")
    method, target, _version = parts
    return method, target.split("?", 1)[0], authorization


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError as exc:  # StreamReader's limit (8 KiB) exceeded: no legitimate scraper does that
        raise _BadRequest("request line or header too long") from exc


async def _write_response(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *, head_only: bool
) -> None:
    headers = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
    )
    if status == 405:
        headers += "Allow: GET, HEAD\r\n"
    if status == 401:  # Basic makes a browser ask; Bearer is what scripts and Prometheus send
        headers += 'WWW-Authenticate: Basic realm="l4e-agent", charset="UTF-8"\r\n'
    writer.write((headers + "\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
