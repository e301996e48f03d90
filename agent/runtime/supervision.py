"""What the service shows and tells while it runs: Prometheus metrics, /healthz, and systemd notifications.

Metrics are filled by a collector at scrape time from counters the data path keeps anyway (connector
``SourceStats``, closer and uploader stats), so the hot path pays nothing for them. Liveness is "every
source's transport answered within its silence bound (values may stay constant: a steady plant is healthy),
and no upload has been failing for long"; it drives the systemd watchdog (pings stop when a source stops
answering, so systemd restarts a stuck agent). Health (/healthz) is liveness plus "every source is connected"
(a source whose connection attempt failed is unhealthy at once; one that has not connected 10 s after the
start, its connect still pending, too: agent.runtime.source_health.CONNECT_GRACE_SECS) plus "no source whose every
item is Bad": a restart would not mend a refused connection or bad values, so they do not starve the watchdog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.runtime import metrics as M

log = logging.getLogger("l4e.supervision")


class Supervision:
    def __init__(self, runners: Sequence) -> None:
        self.runners = list(runners)
        self.registry = M.registry_for(self.collect)
        self._latency: dict[str, M.LatencyHistogram] = {}  # asset → buckets of the samples seen so far
        self._latency_seen: dict[str, int] = {}

    def set_runners(self, runners: Sequence) -> None:
        self.runners = list(runners)

    def collect(self, scrape: M.Scrape) -> None:
        """Copy the data path's totals into ``scrape`` (run by prometheus_client at each /metrics)."""
        for runner in self.runners:
            asset = runner.plan.asset
            silent, bad = runner.silent_sources(), runner.bad_quality_sources()
            for conn in runner.connectors:
                st, source = conn.stats, conn.name
                for sensor, n in st.readings.items():
                    scrape.add(M.READINGS_TOTAL, n, source=source, sensor=sensor)
                for sensor, n in st.read_errors.items():
                    scrape.add(M.READ_ERRORS_TOTAL, n, source=source, sensor=sensor)
                for sensor, n in st.bad_quality.items():
                    scrape.add(M.BAD_QUALITY_TOTAL, n, source=source, sensor=sensor)
                scrape.add(M.SOURCE_CONNECTED, 1 if st.connected else 0, source=source)
                scrape.add(M.SOURCE_ALIVE, 0 if source in silent else 1, source=source)
                scrape.add(M.SOURCE_BAD_QUALITY, 1 if source in bad else 0, source=source)
                scrape.add(M.SOURCE_UNTRUSTED, 1 if getattr(st, "untrusted", None) else 0, source=source)
                backfill = getattr(conn, "backfill", None)
                if backfill is not None:  # OPC-UA history backfill (connectors.opcua.backfill)
                    scrape.add(M.BACKFILL_VALUES_TOTAL, backfill.stats.values, source=source)
                    scrape.add(M.BACKFILL_GAPS_PENDING, backfill.pending(), source=source)
                    scrape.add(M.BACKFILL_OUT_OF_REACH_TOTAL, backfill.stats.out_of_reach_gaps, source=source)
            scrape.add(M.WINDOWS_WRITTEN_TOTAL, runner.closer.stats.windows_written, asset=asset)
            if getattr(runner, "keeper", None) is not None:
                scrape.add(M.WINDOWS_REWRITTEN_TOTAL, runner.keeper.rewritten, asset=asset)
            scrape.add(M.WINDOWS_LATE_TOTAL, runner.uploader.stats.windows_late, asset=asset)
            for comp, n in runner.closer.stats.windows_missing.items():
                scrape.add(M.WINDOWS_MISSING_TOTAL, n, asset=asset, component=comp)
            scrape.add(M.OUTBOX_BACKLOG, runner.uploader.backlog(), asset=asset)
            scrape.add(M.SPOOL_BYTES, runner.spool.bytes_on_disk(), asset=asset)
            for error, n in dict(runner.spool.read_errors).items():
                scrape.add(M.SPOOL_READ_ERRORS_TOTAL, n, asset=asset, error=error)
            scrape.histogram(M.UPLOAD_LATENCY_SECONDS, self._latency_histogram(asset, runner.uploader.stats),
                             asset=asset)
            poller = runner.results_poller
            if poller is not None:
                scrape.add(M.RESULTS_PROCESSED_TOTAL, poller.stats.results_processed, asset=asset)
            for rule, n in runner.alarms_raised.items():
                scrape.add(M.ALARMS_RAISED_TOTAL, n, asset=asset, rule=rule)
            for name, hook in runner.alarms.hooks.items():
                scrape.add(M.HOOK_FAILURES_TOTAL, getattr(hook, "failures", 0), hook=name)

    def _latency_histogram(self, asset: str, stats) -> M.LatencyHistogram:
        """The asset's latency buckets with the samples recorded since the last scrape folded in (the
        uploader keeps the count and a bounded list of recent samples, not buckets)."""
        histogram = self._latency.setdefault(asset, M.LatencyHistogram())
        new = stats.latency_count - self._latency_seen.get(asset, 0)
        for latency in stats.recent_latencies[max(0, len(stats.recent_latencies) - new):] if new > 0 else ():
            histogram.observe(latency)
        self._latency_seen[asset] = stats.latency_count
        return histogram

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz: liveness, no source whose every item is Bad, no untrusted server (a
        restart would mend neither, so they do not starve the watchdog)."""
        ok, reason = self.liveness()
        problems = [] if ok else [reason]
        for runner in self.runners:
            down = runner.disconnected_sources()
            if down:
                problems.append(f"{runner.plan.asset}: sources not connected: "
                                + ", ".join(f"{name} ({why})" for name, why in sorted(down.items())))
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
