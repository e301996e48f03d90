"""The agent's metrics through prometheus_client (collected at scrape time), and /metrics + /healthz over
real HTTP."""

from __future__ import annotations

import asyncio
import collections
import http.client
import logging
import math

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

import agent.runtime.metrics as metrics_module
from agent.runtime.httpd import MetricsServer
from agent.runtime.metrics import (
    CONTENT_TYPE,
    METRIC_SPECS,
    LatencyHistogram,
    MetricSpec,
    Scrape,
    ScrapeCollector,
    registry_for,
    render,
)
from agent.runtime.metrics_config import MetricsConfig


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_counter_and_gauge_render_in_text_format() -> None:
    def fill(scrape: Scrape) -> None:
        scrape.add("l4e_readings_total", 3, source="plc1", sensor="temp")
        scrape.add("l4e_readings_total", 1, source="plc1", sensor='odd "name"\\x\ny')
        scrape.add("l4e_source_connected", 1, source="plc1")

    text = render(registry_for(fill))
    assert "# HELP l4e_readings_total Readings received from a source.\n# TYPE l4e_readings_total counter\n" in text
    assert "# TYPE l4e_source_connected gauge\n" in text
    lines = sample_lines(text)
    assert 'l4e_readings_total{sensor="temp",source="plc1"} 3.0' in lines
    assert 'l4e_readings_total{sensor="odd \\"name\\"\\\\x\\ny",source="plc1"} 1.0' in lines
    assert 'l4e_source_connected{source="plc1"} 1.0' in lines
    assert len(lines) == 3  # no process/platform collectors, no _created samples


def test_values_format() -> None:
    values = {"v": 0.25}
    registry = CollectorRegistry()
    registry.register(ScrapeCollector(lambda scrape: scrape.add("b", values["v"], asset="a"),
                                      [MetricSpec("b", "gauge", "B.", ("asset",))]))
    assert sample_lines(render(registry)) == ['b{asset="a"} 0.25']
    values["v"] = math.inf
    assert sample_lines(render(registry)) == ['b{asset="a"} +Inf']


def test_histogram_buckets_are_cumulative() -> None:
    latency = LatencyHistogram((1, 5, 30))
    for value in (0.5, 2, 4, 5, 100):
        latency.observe(value)
    assert latency.count == 5
    text = render(registry_for(lambda scrape: scrape.histogram("l4e_upload_latency_seconds", latency, asset="pump-7")))
    assert [line for line in sample_lines(text) if "latency" in line] == [
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="1.0"} 1.0',
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="5.0"} 4.0',  # 5 counts in le="5"
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="30.0"} 4.0',
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="+Inf"} 5.0',
        'l4e_upload_latency_seconds_count{asset="pump-7"} 5.0',
        'l4e_upload_latency_seconds_sum{asset="pump-7"} 111.5',
    ]


def test_misuse_is_rejected() -> None:
    scrape = Scrape()
    with pytest.raises(ValueError, match="takes labels"):
        scrape.add("l4e_windows_written_total", 1, sensor="t")
    with pytest.raises(ValueError, match="histogram"):
        scrape.add("l4e_upload_latency_seconds", 1, asset="a")
    with pytest.raises(ValueError, match="not a histogram"):
        scrape.histogram("l4e_outbox_backlog", LatencyHistogram(), asset="a")
    with pytest.raises(KeyError):
        scrape.add("l4e_no_such_metric", 1, asset="a")
    with pytest.raises(ValueError, match="increasing"):
        LatencyHistogram((5, 1))
    registry = registry_for(lambda scrape: None)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # prometheus_client refuses a second set
        registry.register(ScrapeCollector(lambda scrape: None))


def test_collectors_run_at_scrape_time_and_a_broken_fill_does_not_blank_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    per_sensor: collections.Counter[str] = collections.Counter()  # what a connector keeps on its hot path
    state = {"broken": True}

    def fill(scrape: Scrape) -> None:
        for sensor, n in per_sensor.items():
            scrape.add("l4e_readings_total", n, source="plc1", sensor=sensor)
        if state["broken"]:
            raise RuntimeError("fill bug")

    registry = registry_for(fill)
    per_sensor["temp"] += 41
    per_sensor["temp"] += 1
    with caplog.at_level(logging.INFO, logger=metrics_module.__name__):
        assert 'l4e_readings_total{sensor="temp",source="plc1"} 42.0' in render(registry)
        per_sensor["temp"] += 8
        text = render(registry)
        assert 'l4e_readings_total{sensor="temp",source="plc1"} 50.0' in text
        assert "# TYPE l4e_outbox_backlog gauge" in text  # every family is still there
        state["broken"] = False
        render(registry)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is not None  # once, with the traceback
    assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_every_documented_name_is_exposed() -> None:
    text = render(registry_for(lambda scrape: None))
    for spec in METRIC_SPECS:
        assert f"# TYPE {spec.name} {spec.kind}\n" in text
        assert f"# HELP {spec.name} {spec.help}\n" in text
        assert spec.name in (metrics_module.__doc__ or "")  # the table in the docstring stays complete
    families = Scrape().families
    for spec in METRIC_SPECS:
        scrape = Scrape()
        labels = {name: "x" for name in spec.labels}
        if spec.kind == "histogram":
            scrape.histogram(spec.name, LatencyHistogram(), **labels)
        else:
            scrape.add(spec.name, 1, **labels)
        assert set(scrape.families[spec.name].samples[0].labels) >= set(spec.labels)
    assert len(families) == len(METRIC_SPECS)


def test_metrics_config() -> None:
    assert MetricsConfig() == MetricsConfig(enabled=False, host="127.0.0.1", port=9108)
    for name, field in MetricsConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        MetricsConfig(prot=1)
    with pytest.raises(ValidationError):
        MetricsConfig(port=70000)


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """A real HTTP client request (blocking; run it in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


async def test_scrape_and_health_over_http() -> None:
    state = {"health": (True, "")}
    latency = LatencyHistogram()
    latency.observe(12.5)
    scrapes = collections.Counter[str]()

    def fill(scrape: Scrape) -> None:
        scrapes.update(["scrape"])
        scrape.add("l4e_windows_written_total", 3, asset="pump-7")
        scrape.add("l4e_outbox_backlog", 2, asset="pump-7")
        scrape.histogram("l4e_upload_latency_seconds", latency, asset="pump-7")

    registry = registry_for(fill)

    async with MetricsServer(registry, lambda: state["health"], host="127.0.0.1", port=0) as server:
        status, headers, body = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        assert 'l4e_windows_written_total{asset="pump-7"} 3.0' in body.splitlines()
        assert 'l4e_outbox_backlog{asset="pump-7"} 2.0' in body.splitlines()
        assert 'l4e_upload_latency_seconds_count{asset="pump-7"} 1.0' in body.splitlines()
        assert scrapes["scrape"] == 1

        status, _, body = await asyncio.to_thread(get, server.port, "/healthz")
        assert (status, body) == (200, "ok\n")
        state["health"] = (False, "no reading from plc1 for 95 s")
        status, _, body = await asyncio.to_thread(get, server.port, "/healthz?verbose=1")
        assert (status, body) == (503, "no reading from plc1 for 95 s\n")

        status, headers, body = await asyncio.to_thread(get, server.port, "/metrics", "HEAD")
        assert status == 200 and body == "" and int(headers["Content-Length"]) > 0
        assert (await asyncio.to_thread(get, server.port, "/nope"))[0] == 404
        assert (await asyncio.to_thread(get, server.port, "/metrics", "POST"))[0] == 405


async def test_broken_health_check_is_503_and_garbage_is_400() -> None:
    def health() -> tuple[bool, str]:
        raise RuntimeError("state dir unreadable")

    async with MetricsServer(registry_for(lambda scrape: None), health, port=0) as server:
        status, _, body = await asyncio.to_thread(get, server.port, "/healthz")
        assert (status, body) == (503, "health check raised RuntimeError: state dir unreadable\n")

        for garbage in (b"hello\r\n\r\n", b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(garbage)
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            await writer.wait_closed()
            assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_supervision_folds_each_upload_latency_into_the_histogram_once() -> None:
    from agent.pipeline.upload import UploadStats
    from agent.runtime.supervision import Supervision

    supervision, stats = Supervision([]), UploadStats()
    stats.record("a.csv", 0.5)
    stats.record("b.csv", 40.0)
    first = supervision._latency_histogram("pump-7", stats)
    assert (first.count, first.sum) == (2, 40.5)
    assert supervision._latency_histogram("pump-7", stats).count == 2  # a second scrape adds nothing
    stats.record("c.csv", 7200.0)
    again = supervision._latency_histogram("pump-7", stats)
    assert again.cumulative() == [("1.0", 1), ("5.0", 1), ("30.0", 1), ("60.0", 2), ("300.0", 2), ("900.0", 2),
                                  ("3600.0", 2), ("+Inf", 3)]
    assert again.sum == 7240.5
