"""``GET /``: the status page, one self-contained HTML document rendered from agent.runtime.status_data's dict.

Self-contained because gateways are offline: inline CSS, inline SVG sparklines and trends, no script at all
(a ``<meta http-equiv="refresh">`` reloads it every ``REFRESH_SECS``). At the top a health summary (per asset:
whether every source answers, the open alarms with their age), then one section per asset, in this order:
sources, sensors, windows, Lookout, alarms (the README says what each shows). Every text from the agent is
HTML-escaped. Rendering is plain string building, measured by tests/bench/bench_status_page.py (2,200
sensors ≤ 50 ms).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape

import numpy as np

REFRESH_SECS = 10
SPARK_W, SPARK_H = 120, 22
TREND_W, TREND_H = 480, 90

_CSS = """
body{font:14px/1.35 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #446;margin-top:1.5em}
h3{font-size:1.05em;margin:1em 0 .3em}table{border-collapse:collapse;margin:.3em 0}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#161}.warn{color:#a60}.bad{color:#b00;font-weight:bold}.muted{color:#777}
.badge{padding:1px 6px;border-radius:3px;color:#fff}.b-ok{background:#2a7}.b-warn{background:#d80}
.b-bad{background:#c22}.b-off{background:#888}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{font-weight:bold}dd{margin:0}svg{vertical-align:middle}
.scale{display:inline-block;vertical-align:middle;text-align:right;font-size:10px;line-height:11px;color:#555;
min-width:3.5em;margin-right:3px;font-variant-numeric:tabular-nums}
.health{border:1px solid #ccd;background:#fff;padding:.3em .8em;margin:.5em 0}.health p{margin:.2em 0}
.health ul{margin:.1em 0 .3em;padding-left:1.4em}
"""

_STATE_BADGE = {"connected": "b-ok", "bad quality": "b-warn", "reconnecting": "b-warn", "down": "b-bad",
                "ok": "b-ok", "waiting": "b-off", "off": "b-off", "failing": "b-bad", "raised": "b-bad",
                "cleared": "b-ok", "SUCCESS": "b-ok", "FAILED": "b-bad"}


def _iso(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _dur(secs: float | None) -> str:
    """A short human duration: 42 s, 3.5 min, 2.1 h, 3.0 d (negative: '-' prefixed)."""
    if secs is None:
        return "—"
    sign, secs = ("-" if secs < 0 else ""), abs(secs)
    if secs < 120:
        return f"{sign}{secs:.0f} s"
    if secs < 7200:
        return f"{sign}{secs / 60:.1f} min"
    if secs < 172800:
        return f"{sign}{secs / 3600:.1f} h"
    return f"{sign}{secs / 86400:.1f} d"


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else _dur(now - ts) + " ago"


def _num(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    return str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _badge(text: str) -> str:
    return f'<span class="badge {_STATE_BADGE.get(text, "b-off")}">{escape(text)}</span>'


# Sparkline coordinates are whole pixels, so every "x y" pair is one of (SPARK_W + 1) × SPARK_H strings: a
# page of 2,200 sparklines is a table lookup per point after one vectorised pass (tests/bench).
_PAIRS = [f"{x} {y}" for x in range(SPARK_W + 1) for y in range(SPARK_H)]
_TOKENS = _PAIRS + ["M" + p for p in _PAIRS] + [""]  # lineto pair, moveto pair (after a gap), gap
_GAP = len(_TOKENS) - 1


def sparklines(histories: list[list], end: float | None, span: float = 3600.0) -> list[str]:
    """Inline SVGs of sensors' last hour on the grid; each history is [[ts, value | None], ...] and a None
    value (an empty grid cell) breaks the line. Each drawn line is preceded by its scale: the hour's max
    (top of the line's box) over its min (bottom), the two values the line is stretched between."""
    empty = f'<svg width="{SPARK_W}" height="{SPARK_H}" role="img" aria-label="no data"></svg>'
    if end is None or not histories:
        return [empty] * len(histories)
    width = max((len(h) for h in histories), default=0)
    if width == 0:
        return [empty] * len(histories)
    # columns by zip (C speed); a shorter history (a sensor added later) is padded with gaps
    pad = (math.nan,)
    columns = [tuple(zip(*h, strict=True)) if len(h) == width else
               (tuple(p[0] for p in h) + pad * (width - len(h)), tuple(p[1] for p in h) + pad * (width - len(h)))
               for h in histories]
    times = np.array([c[0] for c in columns], dtype=float)
    values = np.array([c[1] for c in columns], dtype=float)
    valid = np.isfinite(values) & np.isfinite(times)
    lo = np.where(valid, values, np.inf).min(axis=1)
    hi = np.where(valid, values, -np.inf).max(axis=1)
    spread = np.where(hi > lo, hi - lo, 1.0)[:, None]
    with np.errstate(invalid="ignore"):
        x = np.clip(np.rint((times - (end - span)) * (SPARK_W / span)), 0, SPARK_W)
        y = np.where(hi[:, None] > lo[:, None], np.rint((SPARK_H - 1) - (values - lo[:, None]) / spread
                                                        * (SPARK_H - 2)), SPARK_H // 2)
        y = np.clip(y, 0, SPARK_H - 1)
        pair = np.where(valid, x, 0).astype(np.int64) * SPARK_H + np.where(valid, y, 0).astype(np.int64)
    previous = np.zeros_like(valid)
    previous[:, 1:] = valid[:, :-1]
    tokens = np.where(valid, pair + np.where(previous, 0, len(_PAIRS)), _GAP).tolist()
    get = _TOKENS.__getitem__
    out = []
    for row, low, high, ok in zip(tokens, lo.tolist(), hi.tolist(), valid.any(axis=1).tolist(), strict=True):
        if not ok:
            out.append(empty)
            continue
        out.append(f'<span class="scale"><span class="scale-max">{high:.4g}</span>'
                   f'<br><span class="scale-min">{low:.4g}</span></span>'
                   f'<svg width="{SPARK_W}" height="{SPARK_H}" role="img" aria-label="last hour {low:.4g} to '
                   f'{high:.4g}"><path d="{" ".join(map(get, row))}" fill="none" stroke="#36c" '
                   'stroke-width="1.2"/></svg>')
    return out


def _path(points, t0: float, span: float, width: int, height: int, lo: float, hi: float) -> str:
    """An SVG path through (t, v) points; a None value breaks the line (an empty grid cell)."""
    sx = width / span if span > 0 else 0.0
    sy = (height - 2) / (hi - lo) if hi > lo else 0.0
    mid = height / 2
    out, pen = [], "M"
    for t, v in points:
        if v is None:
            pen = "M"
            continue
        y = (height - 1 - (v - lo) * sy) if sy else mid
        out.append(f"{pen}{(t - t0) * sx:.1f} {y:.1f}")
        pen = "L"
    return "".join(out)


def _trend(scores, thresholds) -> str:
    """Anomaly scores (0..1) over time with the rules' score thresholds as dashed lines."""
    pts = [(t, s) for t, s, _p in scores]
    if not any(s is not None for _, s in pts):
        return '<p class="muted">no scored result rows yet</p>'
    t0, t1 = pts[0][0], pts[-1][0]
    span = max(t1 - t0, 1.0)
    d = _path(pts, t0, span, TREND_W, TREND_H, 0.0, 1.0)
    parts = [f'<svg width="{TREND_W}" height="{TREND_H + 14}" role="img" aria-label="anomaly score trend">',
             f'<rect width="{TREND_W}" height="{TREND_H}" fill="#fff" stroke="#ccc"/>',
             f'<path d="{d}" fill="none" stroke="#36c" stroke-width="1.5"/>']
    for t, _s, p in scores:
        if p == 1:
            parts.append(f'<rect x="{(t - t0) * TREND_W / span:.1f}" y="{TREND_H}" width="2" height="4" '
                         'fill="#c22"/>')
    for th in thresholds:
        if th.get("score_threshold") is not None:
            y = TREND_H - 1 - th["score_threshold"] * (TREND_H - 2)
            parts.append(f'<line x1="0" x2="{TREND_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c22" '
                         f'stroke-dasharray="4 3"><title>{escape(th["rule"])}: threshold '
                         f'{th["score_threshold"]:g}</title></line>')
    parts.append(f'<text x="0" y="{TREND_H + 12}" font-size="10">{_iso(t0)}</text>'
                 f'<text x="{TREND_W}" y="{TREND_H + 12}" font-size="10" text-anchor="end">{_iso(t1)}</text></svg>')
    return "".join(parts)


def _sources(sources: list[dict], now: float) -> str:
    rows = ["<table><tr><th>source</th><th>kind</th><th>endpoint</th><th>state</th><th>since</th>"
            "<th>readings/s</th><th>readings</th><th>errors</th><th>bad quality</th><th>reconnects</th>"
            "<th>last reading</th><th>last answer</th></tr>"]
    for s in sources:
        rate = s["readings_per_sec"]
        bad = ", ".join(s["bad_now"])
        rows.append(
            f'<tr class="source" data-source="{escape(s["name"])}"><td>{escape(s["name"])}</td>'
            f'<td>{escape(s["kind"])}</td><td>{escape(s["endpoint"])}</td>'
            f'<td class="state">{_badge(s["state"])}{" " + escape(bad) if bad else ""}</td>'
            f'<td>{_iso(s["since"])}</td><td class="num">{"—" if rate is None else f"{rate:.2f}"}</td>'
            f'<td class="num">{s["readings_total"]}</td><td class="num">{s["read_errors_total"]}</td>'
            f'<td class="num">{s["bad_quality_total"]}</td><td class="num">{s["reconnects"]}</td>'
            f'<td>{_ago(s["last_reading_ts"], now)}</td><td>{_ago(s["last_alive_ts"], now)}</td></tr>')
    rows.append("</table>")
    rows.extend(_backfill(s) for s in sources if s.get("backfill"))
    return "".join(rows)


def _backfill(source: dict) -> str:
    """One line per source with a history backfill: filled, pending, out of reach."""
    b = source["backfill"]
    none = f'; no history: {escape(", ".join(b["no_history"]))}' if b["no_history"] else ""
    return (f'<p class="backfill" data-source="{escape(source["name"])}">backfill {escape(source["name"])}: '
            f'{b["values_total"]} values filled ({b["gaps_filled"]} gaps), {b["pending_gaps"]} gaps pending '
            f'({b["pending_secs"]:.0f} s), {b["out_of_reach_gaps"]} out of reach ({b["out_of_reach_secs"]:.0f} s)'
            f'{none}</p>')


_QUALITY_CLASS = {"good": "ok", "ended": "warn", "bad": "bad", "none": "muted"}


def _sensors(sensors: list[dict], end: float | None) -> str:
    rows = ['<table><tr><th>sensor</th><th>component</th><th>source</th><th>last value</th><th>age</th>'
            '<th>holds</th><th>quality</th><th>readings</th><th>errors</th><th>bad</th>'
            '<th>last hour (scale: max over min)</th></tr>']
    append = rows.append
    for s, spark in zip(sensors, sparklines([s["history"] for s in sensors], end), strict=True):
        name = escape(s["name"])
        quality = s["quality"]
        # only a value the source still vouches for is green; "ended" (it stopped holding) is amber
        qclass = _QUALITY_CLASS.get(quality, "muted")
        holds = '<td class="ok">yes</td>' if s["holds"] else '<td class="warn">no</td>'
        age = s["age_secs"]
        append(f'<tr class="sensor" data-sensor="{name}"><td class="name">{name}</td>'
               f'<td>{escape(s["component"])}</td><td>{escape(s["source"])}</td>'
               f'<td class="num value">{_num(s["value"])}</td><td class="num">{_dur(age)}</td>{holds}'
               f'<td class="quality {qclass}">{quality}</td><td class="num">{s["readings_total"]}</td>'
               f'<td class="num">{s["read_errors_total"]}</td><td class="num">{s["bad_quality_total"]}</td>'
               f'<td>{spark}</td></tr>')
    append("</table>")
    return "".join(rows)


def _windows(w: dict) -> str:
    last, up, nd, ob = w["last_written"], w["last_uploaded"], w["next_deadline"], w["outbox"]
    left = nd["left_secs"]
    left_cls = "bad" if left < 0 else ("warn" if left < w["frequency_secs"] / 5 else "ok")
    budget = w["budget"]
    frac = budget["fraction"]
    missing = ", ".join(f"{escape(c)}: {n}" for c, n in sorted(w["missing"].items())) or "0"
    items = [
        ("grid", f'windows of {w["frequency_secs"]} s, rows every {w["rate_secs"]} s, written at end + '
                 f'{w["grace_secs"]:g} s, deadline end + {w["delay_offset_secs"]} s'),
        ("last written", f'<span class="last-written">{_iso(last["start"])} … {_iso(last["end"])}</span>'
                         if last else '<span class="last-written muted">none yet</span>'),
        ("windows written", f'<span class="written-total">{w["written_total"]}</span>'
                            + (f' (<span class="rewritten-total">{w["rewritten_total"]}</span> rewritten with '
                               'backfilled readings)' if w.get("rewritten_total") else "")),
        ("last uploaded", f'<span class="last-uploaded">{escape(up["key"])}</span> ({up["uploaded_total"]} files, '
                          f'latency {_dur(up["latency_secs"])})' if up else
                          '<span class="last-uploaded muted">none yet</span>'),
        ("next deadline", f'window {_iso(nd["window_start"])} … {_iso(nd["window_end"])} '
                          f'({"in the outbox" if nd["pending"] else "open"}): due {_iso(nd["deadline"])}, '
                          f'<span class="{left_cls} time-left">{_dur(left)} left</span>'),
        ("outbox backlog", f'<span class="backlog">{ob["files"]}</span> file(s) in {ob["windows"]} window(s), '
                           f'{_bytes(ob["bytes"])}' + (f', oldest ending {_iso(ob["oldest_end"])}'
                                                       if ob["oldest_end"] else "")),
        ("late windows", f'<span class="late">{w["late_total"]}</span>'),
        ("missing windows", f'<span class="missing">{missing}</span>'),
        ("spool", f'{_bytes(w["spool"]["bytes"])} on disk, {w["spool"]["buffered_readings"]} readings buffered, '
                  f'{w["spool"]["late_readings"]} late readings dropped'),
        ("disk budget", f'{_bytes(budget["used_bytes"])} of {_bytes(budget["bytes"])} '
                        f'({0 if frac is None else 100 * frac:.1f} %), when full: {escape(budget["when_full"])}'
                        + (' <span class="bad">refusing new readings</span>' if budget["refusing"] else "")),
    ]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _lookout(lk: dict) -> str:
    out = [f'<p>scheduler <b>{escape(lk["scheduler"] or "none configured")}</b>, results by {lk["mode"]}: '
           f'<span class="scheduler-status">{_badge(lk["status"])}</span> ({lk["polls"]} polls, '
           f'{lk["poll_errors"]} failed; {lk["results_processed"]} result rows; handled up to the window '
           f'starting {_iso(lk["cursor"])})</p>', "<h3>last executions</h3>"]
    if lk["executions"]:
        out.append("<table><tr><th>window</th><th>status</th><th>max score</th><th>anomalous rows</th>"
                   "<th>reason</th></tr>")
        for e in lk["executions"][:10]:
            out.append(f'<tr class="execution"><td>{_iso(e["window_start"])} … {_iso(e["window_end"])}</td>'
                       f'<td>{_badge(e["status"])}</td><td class="num">{_num(e["max_score"])}</td>'
                       f'<td class="num">{_num(e["anomalous"])} / {_num(e["rows"])}</td>'
                       f'<td>{escape(e["reason"])}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted">no execution seen yet</p>')
    out += ["<h3>score trend</h3>", _trend(lk["score_trend"], lk["thresholds"])]
    out.append("<h3>top diagnostics of the latest abnormal rows</h3>")
    if lk["abnormal"]:
        out.append("<table><tr><th>row</th><th>score</th><th>top sensors</th></tr>")
        for a in lk["abnormal"]:
            diag = ", ".join(f"{escape(n)} {v:.3f}" for n, v in a["diagnostics"]) or "—"
            out.append(f'<tr><td>{_iso(a["ts"])}</td><td class="num">{_num(a["score"])}</td><td>{diag}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted">no abnormal row yet</p>')
    return "".join(out)


def _alarms(al: dict) -> str:
    out = ["<h3>open alarms</h3>"]
    if al["open"]:
        out.append("<table><tr><th>rule</th><th>id</th><th>since</th><th>score / subject</th></tr>")
        for a in al["open"]:
            what = _num(a["score"]) if "score" in a else escape(str(a.get("subject", "")))
            out.append(f'<tr class="open-alarm" data-rule="{escape(a["rule"])}"><td>{escape(a["rule"])}</td>'
                       f'<td>{escape(a["id"])}</td><td>{_iso(a["since"])}</td><td>{what}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="no-open-alarms ok">none</p>')
    out.append("<h3>last transitions</h3>")
    if al["transitions"]:
        out.append("<table><tr><th>when</th><th>rule</th><th>state</th><th>severity</th><th>message</th></tr>")
        for t in al["transitions"]:
            out.append(f'<tr class="transition"><td>{_iso(t["ts"])}</td><td>{escape(t["rule"])}</td>'
                       f'<td>{_badge(t["state"])}</td><td>{escape(t["severity"])}</td>'
                       f'<td>{escape(t["message"])}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted">none since the agent started</p>')
    out.append(f'<h3>hook deliveries</h3><p><span class="pending-deliveries">{al["pending_deliveries"]}</span> '
               'pending</p>')
    if al["hooks"]:
        out.append("<table><tr><th>hook</th><th>kind</th><th>delivered</th><th>failed</th><th>pending</th></tr>")
        for h in al["hooks"]:
            cls = "bad" if h["failures"] else "num"
            out.append(f'<tr class="hook"><td>{escape(h["name"])}</td><td>{escape(h["kind"])}</td>'
                       f'<td class="num">{h["delivered"]}</td><td class="{cls}">{h["failures"]}</td>'
                       f'<td class="num">{h["pending"]}</td></tr>')
        out.append("</table>")
    return "".join(out)


def render_asset(a: dict, now: float) -> str:
    end = max((p[-1][0] for p in (s["history"] for s in a["sensors"]) if p), default=None)
    name = escape(a["asset"])
    return "".join([
        f'<section class="asset" id="asset-{name}" data-asset="{name}"><h2>asset {name}</h2>',
        '<section class="sources"><h3>sources</h3>', _sources(a["sources"], now), "</section>",
        '<section class="sensors"><h3>sensors</h3>', _sensors(a["sensors"], end), "</section>",
        '<section class="windows"><h3>windows</h3>', _windows(a["windows"]), "</section>",
        '<section class="lookout"><h3>Lookout</h3>', _lookout(a["lookout"]), "</section>",
        '<section class="alarms"><h3>alarms</h3>', _alarms(a["alarms"]), "</section></section>"])


_ANSWERING = ("connected", "bad quality")  # the source's transport answers (bad quality: with Bad items)


def health_summary(doc: dict) -> str:
    """The top of the page: per asset one line saying whether every source answers (else which do not, in
    which state and since when), then its open alarms (the alarm engine's state) with their age."""
    now = doc["now"]
    out = ['<section class="health"><h2 style="margin-top:0">health</h2>']
    for a in doc["assets"]:
        name = escape(a["asset"])
        sources = a["sources"]
        silent = [s for s in sources if s["state"] not in _ANSWERING]
        if not sources:
            answer = '<span class="health-sources muted">no source configured</span>'
        elif not silent:
            answer = (f'<span class="health-sources ok">all {len(sources)} source(s) answer</span>')
        else:
            which = ", ".join(f'{escape(s["name"])} ({escape(s["state"])} for '
                              f'{_dur(None if s["since"] is None else now - s["since"])})' for s in silent)
            answer = (f'<span class="health-sources bad">{len(silent)} of {len(sources)} source(s) do not '
                      f'answer: {which}</span>')
        alarms = a["alarms"]["open"]
        count = (f'<span class="health-alarms {"bad" if alarms else "ok"}">'
                 f'{len(alarms) or "no"} open alarm{"" if len(alarms) == 1 else "s"}</span>')
        out.append(f'<p class="health-summary" data-asset="{name}"><b>{name}</b>: {answer}; {count}</p>')
        if alarms:
            out.append("<ul>")
            for al in alarms:
                what = (f"score {_num(al['score'])}" if "score" in al
                        else escape(str(al.get("subject", ""))))
                out.append(f'<li class="health-alarm" data-rule="{escape(al["rule"])}"><b>{escape(al["rule"])}</b>'
                           f'{" " + what if what else ""}, open for <span class="alarm-age">'
                           f'{_dur(None if al["since"] is None else now - al["since"])}</span> '
                           f'(since {_iso(al["since"])})</li>')
            out.append("</ul>")
    out.append("</section>")
    return "".join(out)


def render_page(doc: dict) -> str:
    """The whole page for a status document (agent.runtime.status_data.collect_status)."""
    now = doc["now"]
    assets = [render_asset(a, now) for a in doc["assets"]]
    names = ", ".join(escape(a["asset"]) for a in doc["assets"])
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request (it would be a 404 in the console)
        f"<title>l4e-agent: {names}</title><style>{_CSS}</style></head><body>",
        f'<h1>l4e-agent status</h1><p class="muted">agent clock {_iso(now)}; this page reloads every '
        f'{REFRESH_SECS} s; the same data as JSON: <a href="/api/status">/api/status</a>, numbers for '
        'Prometheus: <a href="/metrics">/metrics</a></p>', health_summary(doc), *assets, "</body></html>"])
