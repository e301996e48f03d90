"""The Prometheus registry, the agent's metric set, and /metrics + /healthz over real HTTP."""

from __future__ import annotations

import asyncio
import collections
import http.client
import math

import pytest
from pydantic import ValidationError

import agent.runtime.metrics as metrics_module
from agent.runtime.metrics import (
    CONTENT_TYPE,
    METRIC_SPECS,
    AgentMetrics,
    MetricsConfig,
    MetricsServer,
    Registry,
)


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_counter_and_gauge_render_in_text_format() -> None:
    registry = Registry()
    readings = registry.counter("l4e_readings_total", "Readings.", ("source", "sensor"))
    connected = registry.gauge("l4e_source_connected", "Connected.", ("source",))
    readings.inc(source="plc1", sensor="temp")
    readings.inc(2, source="plc1", sensor="temp")
    readings.inc(source="plc1", sensor='odd "name"\\x\ny')
    connected.set(1, source="plc1")
    text = registry.render()
    assert "# HELP l4e_readings_total Readings.\n# TYPE l4e_readings_total counter\n" in text
    assert "# TYPE l4e_source_connected gauge\n" in text
    assert sample_lines(text) == [
        'l4e_readings_total{source="plc1",sensor="odd \\"name\\"\\\\x\\ny"} 1',
        'l4e_readings_total{source="plc1",sensor="temp"} 3',
        'l4e_source_connected{source="plc1"} 1',
    ]


def test_unlabelled_metric_starts_at_zero_and_values_format() -> None:
    registry = Registry()
    registry.counter("a_total", "A.")
    gauge = registry.gauge("b", "B.")
    gauge.set(0.25)
    assert sample_lines(registry.render()) == ["a_total 0", "b 0.25"]
    gauge.set(math.inf)
    assert "b +Inf" in registry.render()


def test_histogram_buckets_are_cumulative() -> None:
    registry = Registry()
    latency = registry.histogram("l4e_upload_latency_seconds", "Latency.", ("asset",), buckets=(1, 5, 30))
    for value in (0.5, 2, 4, 100):
        latency.observe(value, asset="pump-7")
    assert latency.count(asset="pump-7") == 4
    assert sample_lines(registry.render()) == [
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="1"} 1',
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="5"} 3',
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="30"} 3',
        'l4e_upload_latency_seconds_bucket{asset="pump-7",le="+Inf"} 4',
        'l4e_upload_latency_seconds_sum{asset="pump-7"} 106.5',
        'l4e_upload_latency_seconds_count{asset="pump-7"} 4',
    ]


def test_misuse_is_rejected() -> None:
    registry = Registry()
    counter = registry.counter("x_total", "X.", ("asset",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(sensor="t")
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, asset="a")
    with pytest.raises(ValueError, match="another definition"):
        registry.gauge("x_total", "X.", ("asset",))
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.counter("bad-name", "X.")
    assert registry.counter("x_total", "X.", ("asset",)) is counter  # same definition: shared


def test_collectors_run_at_scrape_time() -> None:
    registry = Registry()
    readings = registry.counter("l4e_readings_total", "Readings.", ("source", "sensor"))
    per_sensor: collections.Counter[str] = collections.Counter()  # what a connector keeps on its hot path

    def copy_counts() -> None:
        for sensor, n in per_sensor.items():
            readings.set_total(n, source="plc1", sensor=sensor)

    def broken() -> None:
        raise RuntimeError("collector bug")

    registry.add_collector(broken)
    registry.add_collector(copy_counts)
    per_sensor["temp"] += 41
    per_sensor["temp"] += 1
    assert 'l4e_readings_total{source="plc1",sensor="temp"} 42' in registry.render()
    per_sensor["temp"] += 8
    assert 'l4e_readings_total{source="plc1",sensor="temp"} 50' in registry.render()


def test_agent_metrics_register_every_documented_name() -> None:
    registry = Registry()
    handles = AgentMetrics.register(registry)
    assert AgentMetrics.register(registry) == handles  # idempotent
    text = registry.render()
    for spec in METRIC_SPECS:
        assert f"# TYPE {spec.name} {spec.kind}\n" in text
        assert registry.get(spec.name).labelnames == spec.labels
        assert spec.name in (metrics_module.__doc__ or "")  # the table in the docstring stays complete
    assert handles.readings.name == "l4e_readings_total"
    assert handles.upload_latency.name == "l4e_upload_latency_seconds"
    assert handles.source_connected.name == "l4e_source_connected"


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
    registry = Registry()
    m = AgentMetrics.register(registry)
    state = {"health": (True, "")}
    m.windows_written.inc(3, asset="pump-7")
    m.outbox_backlog.set(2, asset="pump-7")
    m.upload_latency.observe(12.5, asset="pump-7")
    scrapes = collections.Counter[str]()
    registry.add_collector(lambda: scrapes.update(["scrape"]))

    async with MetricsServer(registry, lambda: state["health"], host="127.0.0.1", port=0) as server:
        status, headers, body = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        assert 'l4e_windows_written_total{asset="pump-7"} 3' in body.splitlines()
        assert 'l4e_outbox_backlog{asset="pump-7"} 2' in body.splitlines()
        assert 'l4e_upload_latency_seconds_count{asset="pump-7"} 1' in body.splitlines()
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

    async with MetricsServer(Registry(), health, port=0) as server:
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
