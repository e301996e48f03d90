"""What the service shows and tells while it runs: Prometheus metrics, /healthz, and systemd notifications.

Metrics are filled by a collector at scrape time from counters the data path keeps anyway (connector
``SourceStats``, closer and uploader stats), so the hot path pays nothing for them. Liveness is "every
source's transport answered within its silence bound (values may stay constant: a steady plant is healthy),
and no upload has been failing for long"; it drives the systemd watchdog (pings stop when a source stops
answering, so systemd restarts a stuck agent). Health (/healthz) is liveness plus "no source whose every item
is Bad": a restart would not mend bad values, so they do not starve the watchdog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.runtime.metrics import AgentMetrics, Registry

log = logging.getLogger("l4e.supervision")


class Supervision:
    def __init__(self, runners: Sequence) -> None:
        self.runners = list(runners)
        self.registry = Registry()
        self.metrics = AgentMetrics.register(self.registry)
        self.registry.add_collector(self.collect)
        self._latency_seen: dict[str, int] = {}

    def set_runners(self, runners: Sequence) -> None:
        self.runners = list(runners)

    def collect(self) -> None:
        m = self.metrics
        for runner in self.runners:
            asset = runner.plan.asset
            for conn in runner.connectors:
                st = conn.stats
                for sensor, n in st.readings.items():
                    m.readings.set_total(n, source=conn.name, sensor=sensor)
                for sensor, n in st.read_errors.items():
                    m.read_errors.set_total(n, source=conn.name, sensor=sensor)
                for sensor, n in st.bad_quality.items():
                    m.bad_quality.set_total(n, source=conn.name, sensor=sensor)
                m.source_connected.set(1.0 if st.connected else 0.0, source=conn.name)
                m.source_alive.set(0.0 if conn.name in runner.silent_sources() else 1.0, source=conn.name)
                m.source_bad_quality.set(1.0 if conn.name in runner.bad_quality_sources() else 0.0,
                                         source=conn.name)
                m.source_untrusted.set(1.0 if getattr(st, "untrusted", None) else 0.0, source=conn.name)
            m.windows_written.set_total(runner.closer.stats.windows_written, asset=asset)
            m.windows_late.set_total(runner.uploader.stats.windows_late, asset=asset)
            for comp, n in runner.closer.stats.windows_missing.items():
                m.windows_missing.set_total(n, asset=asset, component=comp)
            m.outbox_backlog.set(runner.uploader.backlog(), asset=asset)
            m.spool_bytes.set(runner.spool.bytes_on_disk(), asset=asset)
            # the uploader keeps every latency sample's sum/count; feed the histogram only the new ones
            stats = runner.uploader.stats
            seen = self._latency_seen.get(asset, 0)
            for latency in stats.recent_latencies[max(0, len(stats.recent_latencies) - (stats.latency_count - seen)):]:
                m.upload_latency.observe(latency, asset=asset)
            self._latency_seen[asset] = stats.latency_count
            poller = runner.results_poller
            if poller is not None:
                m.results_processed.set_total(poller.stats.results_processed, asset=asset)
            for rule, n in runner.alarms_raised.items():
                m.alarms_raised.set_total(n, asset=asset, rule=rule)
            for name, hook in runner.alarms.hooks.items():
                m.hook_failures.set_total(getattr(hook, "failures", 0), hook=name)

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz: liveness, no source whose every item is Bad, no untrusted server (a
        restart would mend neither, so they do not starve the watchdog)."""
        ok, reason = self.liveness()
        problems = [] if ok else [reason]
        for runner in self.runners:
            bad = runner.bad_quality_sources()
            if bad:
                problems.append(f"{runner.plan.asset}: sources answering with bad quality only {sorted(bad)}")
            untrusted = runner.untrusted_sources()
            if untrusted:
                problems.append(f"{runner.plan.asset}: untrusted sources {sorted(untrusted)} (server certificate "
                                "refused)")
        return (not problems, "; ".join(problems) or "ok")

    def liveness(self) -> tuple[bool, str]:
        """(ok, reason) for the systemd watchdog: every source answers, uploads are not failing for long."""
        problems = []
        for runner in self.runners:
            silent = runner.silent_sources()
            if silent:
                problems.append(f"{runner.plan.asset}: silent sources {sorted(silent)}")
            if runner.uploader.failing_for() > 600:
                problems.append(f"{runner.plan.asset}: uploads failing for {runner.uploader.failing_for():.0f}s")
        return (not problems, "; ".join(problems) or "ok")

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        parts = []
        for runner in self.runners:
            parts.append(f"{runner.plan.asset}: {runner.stats.readings} readings, "
                         f"{runner.closer.stats.windows_written} windows, backlog {runner.uploader.backlog()}")
        return "; ".join(parts)
