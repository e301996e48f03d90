"""``GET /api/status``: what the running agent sees, sends and concludes, as one JSON document.

Collected at request time from what the agent already holds (each AssetRunner's connectors' SourceStats, its
closer, uploader, outbox, spool, alarm engine, results poller, its per-sensor last readings and its
:class:`agent.runtime.status_history.StatusHistory`); nothing here runs per reading. The outbox and spool sizes are
read from the disk (a stat per file, as /metrics does). No secret is ever included: no configuration is
dumped, source endpoints lose any ``user:password@``, hooks show only their name and kind.

Times are agent clock seconds (Unix, UTC; ``null`` when unknown); ages and "left" values are clock seconds.
The document (``version`` 1)::

    {"version": 1, "now": <ts>, "assets": [<asset>, ...]}

    asset = {
      "asset": name,
      "sources": [{"name", "kind", "endpoint", "state": "connected|bad quality|reconnecting|down",
                   "since": ts of the first observation in that state, "readings_total",
                   "readings_per_sec" (clock seconds, about the last minute; null before two samples),
                   "read_errors_total", "bad_quality_total", "reconnects", "last_reading_ts", "last_alive_ts",
                   "bad_now": [sensor, ...],
                   "backfill": null, or for an OPC-UA source with ``backfill``: {"values_total" (readings filled
                   from the server's history), "gaps_filled", "pending_gaps", "pending_secs" (gap time still to
                   read), "out_of_reach_gaps", "out_of_reach_secs" (cut by max_age or without history),
                   "no_history": [sensor, ...], "last_error"}}],
      "sensors": [{"name", "component", "source", "value", "ts", "age_secs" (value and clock ts of the last
                   reading the agent received for the sensor, never a grid aggregate; age = now - ts),
                   "holds": the value is still carried on the grid (the next file has it: while its source
                   vouches for it, rule 2a, else within fill_limit steps),
                   "quality": "good|bad|ended|none" (bad: the latest sample was Bad/Uncertain, or none was
                   good; ended: the source stopped vouching for the value, which is then the last on the grid),
                   "readings_total", "read_errors_total", "bad_quality_total",
                   "history": [[grid ts, value | null], ...] (closed windows, the last hour, ≤ 120 rows)}],
      "windows": {"frequency_secs", "rate_secs", "grace_secs", "delay_offset_secs", "written_total",
                  "rewritten_total" (windows rewritten with backfilled readings; 0 without a backfill),
                  "last_written": {"start", "end"} | null,
                  "last_uploaded": {"key", "latency_secs", "uploaded_total"} | null,
                  "open": {"start", "end", "due_at": end + grace},
                  "next_deadline": {"window_start", "window_end", "deadline": end + delay, "left_secs",
                                    "pending": true when that window is in the outbox, false when still open},
                  "outbox": {"files", "windows", "oldest_end", "bytes"}, "late_total",
                  "missing": {component: count}, "spool": {"bytes", "buffered_readings", "late_readings"},
                  "budget": {"bytes", "used_bytes", "fraction", "when_full", "refusing"}},
      "lookout": {"scheduler", "mode": "api|listing|none", "status": "ok|failing|waiting|off",
                  "polls", "poll_errors", "cursor": DataStartTime of the last execution handled,
                  "results_processed", "executions": [{"window_start", "window_end", "status", "ts", "rows",
                  "anomalous", "max_score", "reason"}] (newest first), "score_trend": [[ts, score, prediction]],
                  "thresholds": [{"rule", "score_threshold", "min_consecutive"}],
                  "abnormal": [{"ts", "score", "reason", "diagnostics": [[name, value], ...]}] (newest first)},
      "alarms": {"open": [{"rule", "id", "since", "score" | "subject"}],
                 "transitions": [{"id", "rule", "state", "ts", "severity", "message", "score"}] (newest first),
                 "pending_deliveries", "hooks": [{"name", "kind", "delivered", "failures", "pending"}]},
    }
"""

from __future__ import annotations

import contextlib
import math
from urllib.parse import urlsplit, urlunsplit

from agent.pipeline.windows import grid_point, window_containing

VERSION = 1


def _endpoint(source) -> str:
    """Where a source reads from, without credentials."""
    kind = getattr(source, "kind", "")
    if kind == "opcua":
        parts = urlsplit(source.endpoint)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if kind == "modbus":
        if getattr(source, "transport", "tcp") == "rtu":
            return str(getattr(source, "port", ""))
        return f"{getattr(source, 'host', '')}:{getattr(source, 'port', '')}"
    if kind == "replay":
        return str(getattr(source, "path", ""))
    return ""


def _sensor_sources(runner) -> dict[str, str]:
    """sensor → source name, from the configuration (cached on the runner's history: it may read files)."""
    cached = runner.history.sensor_sources
    if cached is not None:
        return cached
    from agent.config import base_dir_of

    out: dict[str, str] = {}
    base = base_dir_of(runner.config_path)
    for src in runner.config.sources:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            for sensor in src.sensors(base):
                out.setdefault(sensor, src.name)
    runner.history.sensor_sources = out
    return out


def bad_quality_sources(runner) -> set[str]:
    """Sources answering with Bad/Uncertain items only: the runner's own verdict when it keeps one, else the
    sources all of whose sensors are in their connector's ``stats.bad_now`` (when the connector reports it)."""
    verdict = getattr(runner, "bad_quality_sources", None)
    if verdict is not None:
        return set(verdict())
    owners = _sensor_sources(runner)
    out = set()
    for conn in runner.connectors:
        bad = getattr(conn.stats, "bad_now", None)
        mine = {s for s, src in owners.items() if src == conn.name}
        if bad and mine and mine <= set(bad):
            out.add(conn.name)
    return out


def _sources(runner, now: float) -> list[dict]:
    history = runner.history
    silent = runner.silent_sources()
    history.observe_sources(runner.connectors, silent, bad_quality_sources(runner), now)
    configs = {s.name: s for s in runner.config.sources}
    out = []
    for conn in runner.connectors:
        st = conn.stats
        total = sum(st.readings.values())
        memo = history.sources.get(conn.name)
        src = configs.get(conn.name)
        out.append({
            "name": conn.name, "kind": getattr(src, "kind", ""), "endpoint": _endpoint(src) if src else "",
            "state": memo.state if memo else "", "since": memo.since if memo else None,
            "readings_total": total, "readings_per_sec": history.rate_of(conn.name, total, now),
            "read_errors_total": sum(st.read_errors.values()), "bad_quality_total": sum(st.bad_quality.values()),
            "reconnects": st.reconnects, "last_reading_ts": st.last_reading_ts,
            "last_alive_ts": getattr(st, "last_alive_ts", None),
            "bad_now": sorted(getattr(st, "bad_now", None) or ()),
            "backfill": _backfill(getattr(conn, "backfill", None))})
    return out


def _backfill(backfill) -> dict | None:
    """A source's history backfill (connectors.opcua.backfill), or None without one."""
    if backfill is None:
        return None
    st = backfill.stats
    return {"values_total": st.values, "gaps_filled": st.gaps_filled, "pending_gaps": backfill.pending(),
            "pending_secs": round(backfill.pending_secs(), 3), "out_of_reach_gaps": st.out_of_reach_gaps,
            "out_of_reach_secs": round(st.out_of_reach_secs, 3), "no_history": sorted(st.no_history),
            "last_error": st.last_error}


def _holds(plan, sensor: str, reading, ended_at: float | None, vouched: bool, now: float) -> bool:
    """Whether the sensor's last value is still carried on the grid (the next file will have it).

    With rule 2a (``plan.holds``, sensors of sources that hold values) a value holds while its source vouches
    for it (``vouched``: not silent, the sensor not Bad now, no validity-end marker since: ``ended_at`` is the
    clock time of that marker, else None) and within the sensor's max age; otherwise, and for sampled sensors,
    the fill rule carries it ``fill_limit`` grid steps from its grid point (or from where the hold ended)."""
    hold_secs = (getattr(plan, "holds", None) or {}).get(sensor)
    if hold_secs is not None and ended_at is None and vouched and now - reading.ts <= hold_secs:
        return True
    # the last grid point that had the value: its reading's grid point, or the last one before a marker
    last = (math.floor(ended_at / plan.rate) * plan.rate) if ended_at is not None else grid_point(reading.ts,
                                                                                                 plan.rate)
    return now <= last + plan.fill_limit * plan.rate


def _sensors(runner, now: float) -> list[dict]:
    """Per schema sensor: its last value and age are those of the last reading the agent received for it
    (``runner.last_readings``, never a grid aggregate), "ended" when a validity-end marker (rule 2a,
    ``runner.validity_ends``) is at or after that reading."""
    plan = runner.plan
    counts: dict[str, tuple] = {}
    bad_now: set[str] = set()
    for conn in runner.connectors:
        st = conn.stats
        bad_now |= set(getattr(st, "bad_now", None) or ())
        for sensor in set(st.readings) | set(st.read_errors) | set(st.bad_quality):
            counts[sensor] = (st.readings.get(sensor, 0), st.read_errors.get(sensor, 0),
                              st.bad_quality.get(sensor, 0))
    sources = _sensor_sources(runner)
    silent = runner.silent_sources()
    component_of = {}
    for comp, sensors in plan.components.items():
        for s in sensors:
            component_of.setdefault(s, comp)
    last = runner.last_readings
    ends = getattr(runner, "validity_ends", {})
    out = []
    for sensor in plan.sensors:
        reading = last.get(sensor)
        if reading is not None and reading.value != reading.value:
            reading = None  # a marker is never a value (the runner keeps markers apart)
        n, errors, bad = counts.get(sensor, (0, 0, 0))
        history = runner.history.sensor_points(sensor)
        value = ts = age = None
        holds = ended = False
        if reading is not None:
            ended_at = ends.get(sensor)
            if ended_at is not None and ended_at < reading.ts:
                ended_at = None  # a reading after the marker: the value holds again
            ended = ended_at is not None
            holds = _holds(plan, sensor, reading, ended_at, sensor not in bad_now and
                           sources.get(sensor) not in silent, now)
            value, ts = reading.value, reading.ts
            value = value if math.isfinite(value) else None  # JSON has no Infinity
            age = now - ts
        if sensor in bad_now or (reading is None and bad):
            quality = "bad"  # the latest sample was Bad/Uncertain, or no sample was ever good
        elif reading is None:
            quality = "none"
        else:
            quality = "ended" if ended else "good"
        out.append({
            "name": sensor, "component": component_of.get(sensor, ""), "source": sources.get(sensor, ""),
            "value": value, "ts": ts, "age_secs": age, "holds": holds, "quality": quality,
            "readings_total": n, "read_errors_total": errors, "bad_quality_total": bad,
            "history": history})  # (ts, value) tuples: JSON arrays
    return out


def _windows(runner, now: float) -> dict:
    plan, closer, uploader = runner.plan, runner.closer, runner.uploader
    delay = uploader.delay_offset_secs
    entries = runner.outbox.entries()
    nbytes = 0
    for entry in entries:
        with contextlib.suppress(OSError):
            nbytes += entry.path.stat().st_size
    ends = sorted({e.window_end for e in entries})
    spool_bytes = runner.spool.bytes_on_disk()
    used = spool_bytes + nbytes
    open_window = window_containing(now, plan.frequency)
    if ends:
        pending_end, pending = ends[0], True
    else:
        pending_end, pending = open_window.end, False
    keys = uploader.stats.uploaded_keys
    last = closer.last_written
    return {
        "frequency_secs": plan.frequency, "rate_secs": plan.rate, "grace_secs": plan.grace_secs,
        "delay_offset_secs": delay, "written_total": closer.stats.windows_written,
        "rewritten_total": runner.keeper.rewritten if getattr(runner, "keeper", None) is not None else 0,
        "last_written": {"start": last - plan.frequency, "end": last} if last is not None else None,
        "last_uploaded": {"key": keys[-1], "latency_secs": uploader.stats.last_latency_secs,
                          "uploaded_total": uploader.stats.uploaded} if keys else None,
        "open": {"start": open_window.start, "end": open_window.end, "due_at": open_window.end + plan.grace_secs},
        "next_deadline": {"window_start": pending_end - plan.frequency, "window_end": pending_end,
                          "deadline": pending_end + delay, "left_secs": pending_end + delay - now,
                          "pending": pending},
        "outbox": {"files": len(entries), "windows": len(ends), "oldest_end": ends[0] if ends else None,
                   "bytes": nbytes},
        "late_total": uploader.stats.windows_late,
        "missing": dict(closer.stats.windows_missing),
        "spool": {"bytes": spool_bytes, "buffered_readings": runner.spool.buffered(),
                  "late_readings": runner.spool.late},
        "budget": {"bytes": plan.budget_bytes, "used_bytes": used,
                   "fraction": used / plan.budget_bytes if plan.budget_bytes else None,
                   "when_full": plan.when_full, "refusing": bool(getattr(runner, "_refusing", False))},
    }


def _lookout(runner) -> dict:
    lk = runner.config.lookout
    poller = runner.results_poller
    history = runner.history
    thresholds = [{"rule": r.name, "score_threshold": r.score_threshold, "min_consecutive": r.min_consecutive}
                  for r in runner.config.alarms.rules if r.kind == "anomaly"]
    doc = {"scheduler": lk.scheduler, "mode": "none", "status": "off", "polls": 0, "poll_errors": 0,
           "cursor": None, "results_processed": 0,
           "executions": list(reversed(history.executions)),
           "score_trend": [list(s) for s in history.scores], "thresholds": thresholds,
           "abnormal": list(reversed(history.abnormal))}
    if poller is None:
        return doc
    stats = poller.stats
    trouble = getattr(poller, "_trouble", None)  # its TransitionLog: which kinds of request fail right now
    failing = trouble is not None and any(trouble.is_failing(k) for k in ("list", "get", "api"))
    doc.update({
        "mode": "api" if (lk.scheduler and poller.client is not None) else "listing",
        "status": "failing" if failing else ("ok" if stats.polls else "waiting"),
        "polls": stats.polls, "poll_errors": stats.poll_errors,
        "cursor": poller.cursor,
        "results_processed": stats.results_processed})
    return doc


def _alarms(runner) -> dict:
    engine = runner.alarms
    pending: dict[str, int] = {}
    state = getattr(engine, "_state", None)  # the engine's persisted outbox: deliveries still owed, per hook
    for entry in (state.outbox if state is not None else ()):
        for hook in entry.pending:
            pending[hook] = pending.get(hook, 0) + 1
    hooks = [{"name": name, "kind": getattr(cfg, "kind", ""),
              "delivered": getattr(engine.hooks.get(name), "delivered", 0),
              "failures": getattr(engine.hooks.get(name), "failures", 0), "pending": pending.get(name, 0)}
             for name, cfg in runner.config.alarms.hooks.items()]
    return {"open": sorted(engine.open_alarms(), key=lambda a: a["since"]),
            "transitions": list(reversed(runner.history.transitions)),
            "pending_deliveries": engine.pending_deliveries(), "hooks": hooks}


def asset_status(runner, now: float) -> dict:
    """One asset's part of the document (see the module docstring)."""
    return {"asset": runner.plan.asset, "sources": _sources(runner, now), "sensors": _sensors(runner, now),
            "windows": _windows(runner, now), "lookout": _lookout(runner), "alarms": _alarms(runner)}


def collect_status(runners, now: float) -> dict:
    """The whole document for ``runners`` at clock time ``now``."""
    return {"version": VERSION, "now": now, "assets": [asset_status(r, now) for r in runners]}
