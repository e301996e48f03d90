"""The agent's Prometheus metrics, exposed through prometheus_client and collected at scrape time.

Nothing on the data path touches a metric: the data path keeps its own totals (a connector's
``SourceStats``, closer and uploader stats), and at each scrape a :class:`ScrapeCollector` runs a *fill*
function (agent.runtime.supervision) that copies them into fresh metric families of one :class:`Scrape`.
The only state kept here is :class:`LatencyHistogram`, the bucket counts of upload latencies, because
the uploader keeps only a bounded list of recent samples.

The agent's metrics (names in ``METRIC_SPECS``):

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
l4e_spool_read_errors_total        counter    asset, error        spool segment reads that failed (kept, retried)
l4e_results_processed_total        counter    asset               inference results handled
l4e_alarms_raised_total            counter    asset, rule         alarms raised by a rule
l4e_hook_failures_total            counter    hook                alarm hook deliveries that failed
l4e_source_connected               gauge      source              1 while a source is connected, else 0
l4e_source_alive                   gauge      source              1 while the source's transport answers
l4e_source_bad_quality             gauge      source              1 while it answers but every item is Bad
l4e_source_untrusted               gauge      source              1 while a source's server identity is refused
l4e_backfill_values_total          counter    source              readings filled from the server's history
l4e_backfill_gaps_pending          gauge      source              gaps (per node) not read to their end yet
l4e_backfill_out_of_reach_total    counter    source              gaps (or parts) cut by max_age or with no history
l4e_windows_rewritten_total        counter    asset               written windows rewritten with backfilled data
=================================  =========  ==================  ==========================================

The text is prometheus_client's ``generate_latest`` (exposition format 0.0.4, :data:`CONTENT_TYPE`);
agent.runtime.http serves it on ``/metrics``.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The media type of what :func:`render` returns (generate_latest writes format 0.0.4)."""

READINGS_TOTAL = "l4e_readings_total"
READ_ERRORS_TOTAL = "l4e_read_errors_total"
BAD_QUALITY_TOTAL = "l4e_bad_quality_total"
WINDOWS_WRITTEN_TOTAL = "l4e_windows_written_total"
WINDOWS_LATE_TOTAL = "l4e_windows_late_total"
WINDOWS_MISSING_TOTAL = "l4e_windows_missing_total"
UPLOAD_LATENCY_SECONDS = "l4e_upload_latency_seconds"
OUTBOX_BACKLOG = "l4e_outbox_backlog"
SPOOL_BYTES = "l4e_spool_bytes"
SPOOL_READ_ERRORS_TOTAL = "l4e_spool_read_errors_total"
RESULTS_PROCESSED_TOTAL = "l4e_results_processed_total"
ALARMS_RAISED_TOTAL = "l4e_alarms_raised_total"
HOOK_FAILURES_TOTAL = "l4e_hook_failures_total"
SOURCE_CONNECTED = "l4e_source_connected"
SOURCE_ALIVE = "l4e_source_alive"
SOURCE_BAD_QUALITY = "l4e_source_bad_quality"
SOURCE_UNTRUSTED = "l4e_source_untrusted"
BACKFILL_VALUES_TOTAL = "l4e_backfill_values_total"
BACKFILL_GAPS_PENDING = "l4e_backfill_gaps_pending"
BACKFILL_OUT_OF_REACH_TOTAL = "l4e_backfill_out_of_reach_total"
WINDOWS_REWRITTEN_TOTAL = "l4e_windows_rewritten_total"

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
    MetricSpec(WINDOWS_MISSING_TOTAL, "counter", "Component files missing from a written window.",
               ("asset", "component")),
    MetricSpec(UPLOAD_LATENCY_SECONDS, "histogram", "Seconds from a window's end until its object is stored.",
               ("asset",)),
    MetricSpec(OUTBOX_BACKLOG, "gauge", "Files waiting in the outbox for upload.", ("asset",)),
    MetricSpec(SPOOL_BYTES, "gauge", "Bytes held in the readings spool.", ("asset",)),
    MetricSpec(SPOOL_READ_ERRORS_TOTAL, "counter", "Spool segment reads that failed with an OSError (the segment "
               "is kept and its window retried), by errno name.", ("asset", "error")),
    MetricSpec(RESULTS_PROCESSED_TOTAL, "counter", "Inference results processed.", ("asset",)),
    MetricSpec(ALARMS_RAISED_TOTAL, "counter", "Alarms raised, by rule.", ("asset", "rule")),
    MetricSpec(HOOK_FAILURES_TOTAL, "counter", "Alarm hook deliveries that failed.", ("hook",)),
    MetricSpec(SOURCE_CONNECTED, "gauge", "1 while the source is connected, 0 otherwise.", ("source",)),
    MetricSpec(SOURCE_ALIVE, "gauge", "1 while the source's transport answers (publish responses, keep-alives, "
               "successful polls), whether or not its values change.", ("source",)),
    MetricSpec(SOURCE_BAD_QUALITY, "gauge", "1 while the source answers but every item is Bad/Uncertain.",
               ("source",)),
    MetricSpec(SOURCE_UNTRUSTED, "gauge", "1 while the source's server certificate is refused, else 0.", ("source",)),
    MetricSpec(BACKFILL_VALUES_TOTAL, "counter", "Readings filled from the server's history (OPC-UA backfill).",
               ("source",)),
    MetricSpec(BACKFILL_GAPS_PENDING, "gauge", "Gaps (one per node and outage) not yet read to their end.",
               ("source",)),
    MetricSpec(BACKFILL_OUT_OF_REACH_TOTAL, "counter", "Gaps or parts of gaps that cannot be filled: older than "
               "max_age, or the node keeps no history.", ("source",)),
    MetricSpec(WINDOWS_REWRITTEN_TOTAL, "counter", "Windows already written and rewritten under the same key "
               "because backfilled readings changed them.", ("asset",)),
)

_FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}


@dataclass
class LatencyHistogram:
    """Upload latencies in the fixed buckets of ``UPLOAD_LATENCY_BUCKETS_SECS`` (+Inf implied), in seconds."""

    bounds: tuple[float, ...] = UPLOAD_LATENCY_BUCKETS_SECS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last one is +Inf
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.bounds or list(self.bounds) != sorted(set(self.bounds)) or math.isinf(self.bounds[-1]):
            raise ValueError(f"buckets must be finite, increasing and non-empty, got {list(self.bounds)}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a value on a bound counts in it
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations ≤ le) per bucket, as HistogramMetricFamily takes them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class Scrape:
    """The agent's metric families for one scrape, every name of ``METRIC_SPECS`` present (series appear as
    a fill function adds them). Label values are given by keyword and must match the spec exactly."""

    def __init__(self, specs: Iterable[MetricSpec] = METRIC_SPECS) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.families: dict[str, Metric] = {
            spec.name: _FAMILIES[spec.kind](spec.name, spec.help, labels=spec.labels) for spec in self.specs.values()}

    def add(self, name: str, value: float, **labels: object) -> None:
        """One counter or gauge sample; a counter's value is a total the data path keeps monotonic."""
        spec = self.specs[name]
        if spec.kind == "histogram":
            raise ValueError(f"{name} is a histogram: use Scrape.histogram")
        family = self.families[name]
        family.add_metric(self._values(spec, labels), float(value))  # type: ignore[attr-defined]

    def histogram(self, name: str, histogram: LatencyHistogram, **labels: object) -> None:
        spec = self.specs[name]
        if spec.kind != "histogram":
            raise ValueError(f"{name} is a {spec.kind}, not a histogram")
        family = self.families[name]
        family.add_metric(self._values(spec, labels), histogram.cumulative(),  # type: ignore[attr-defined]
                          histogram.sum)

    @staticmethod
    def _values(spec: MetricSpec, labels: dict[str, object]) -> list[str]:
        if labels.keys() != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {list(spec.labels)}, got {sorted(labels)}")
        return [str(labels[name]) for name in spec.labels]


Fill = Callable[[Scrape], None]
"""Run at each scrape to add samples from state kept elsewhere. It must be quick and must not block (the
server calls it on the event loop, where the state it reads lives)."""


class ScrapeCollector(Collector):
    """A prometheus_client collector that builds a fresh :class:`Scrape` per scrape and runs ``fill`` on it.

    A failing fill is logged (once until it recovers, with the traceback) and its scrape still yields every
    family with the samples added before the failure, so a broken source of numbers never fails /metrics.
    """

    def __init__(self, fill: Fill, specs: Sequence[MetricSpec] = METRIC_SPECS) -> None:
        self.fill = fill
        self.specs = tuple(specs)
        self._failing = False

    def describe(self) -> list[Metric]:
        """The families without samples: lets the registry refuse a second collector with the same names."""
        return list(Scrape(self.specs).families.values())

    def collect(self) -> list[Metric]:
        scrape = Scrape(self.specs)
        try:
            self.fill(scrape)
        except Exception:  # supervision boundary: the scrape goes on with what was filled
            if not self._failing:
                log.warning("metrics fill %r failed", self.fill, exc_info=True)
                self._failing = True
        else:
            if self._failing:
                log.info("metrics fill %r works again", self.fill)
            self._failing = False
        return list(scrape.families.values())


def registry_for(fill: Fill) -> CollectorRegistry:
    """A registry holding only the agent's metrics, filled by ``fill`` at each scrape (no process or
    platform collectors: the agent reports what it does, node exporters report the machine)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(fill))
    return registry


def render(registry: CollectorRegistry) -> str:
    """Every metric of ``registry`` in the text exposition format (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry).decode()
