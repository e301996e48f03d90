"""A self-contained HTML chart (inline SVG, no dependency) of a run: sensor values from the uploaded window
files, the anomaly score from the results files, the injected fault and the alarm spans shaded."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from agent.core.clock import iso_utc, parse_instant

WIDTH, PANEL_H, PAD = 960, 120, 50


def read_series(asset_root: Path, sensors: list[str]) -> dict[str, list[tuple[float, float]]]:
    """sensor → [(ts, value)] from every window CSV under ``<asset_root>/input/``."""
    series: dict[str, list[tuple[float, float]]] = {s: [] for s in sensors}
    for path in sorted((asset_root / "input").glob("*.csv")):
        with open(path, newline="") as fh:
            rows = csv.reader(fh)
            header = next(rows)
            cols = [(i, name) for i, name in enumerate(header) if name in series]
            for row in rows:
                ts = parse_instant(row[0])
                for i, name in cols:
                    if row[i]:
                        series[name].append((ts, float(row[i])))
    return {s: sorted(v) for s, v in series.items()}


def read_scores(asset_root: Path) -> list[tuple[float, float]]:
    out = []
    for path in sorted((asset_root / "output").glob("*/results.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                out.append((parse_instant(row["timestamp"]), float(row.get("anomaly_score", 0.0))))
            except (ValueError, KeyError):
                continue
    return sorted(out)


def alarm_spans(alarms: list[dict], end: float, rule: str = "anomaly") -> list[tuple[float, float]]:
    """(raised, cleared) spans of ``rule``'s alarms, in epoch seconds: from the result row that raised the alarm
    to the row that cleared it (an alarm's ``ts``), not the bounds of the windows those rows sat in. An alarm
    still raised at the end runs to ``end``."""
    spans, open_at = [], {}
    for a in alarms:
        if a["rule"] != rule:
            continue
        if a["state"] == "raised":
            open_at[a["id"]] = a["ts"]
        elif a["id"] in open_at:
            spans.append((open_at.pop(a["id"]), a["ts"]))
    spans += [(s, end) for s in open_at.values()]
    return spans


def _panel(name: str, points: list[tuple[float, float]], t0: float, t1: float, y: int, shades, colour: str,
           ymin: float | None = None, ymax: float | None = None, threshold: float | None = None) -> str:
    if not points:
        return f'<text x="{PAD}" y="{y + 20}">{html.escape(name)}: no data</text>'
    vals = [v for _, v in points]
    lo = min(vals) if ymin is None else ymin
    hi = max(vals) if ymax is None else ymax
    hi = hi if hi > lo else lo + 1
    span = max(t1 - t0, 1)

    def x(t):
        return PAD + (t - t0) / span * (WIDTH - 2 * PAD)

    def yy(v):
        return y + PANEL_H - 10 - (v - lo) / (hi - lo) * (PANEL_H - 20)

    parts = [f'<rect x="{PAD}" y="{y}" width="{WIDTH - 2 * PAD}" height="{PANEL_H}" fill="none" stroke="#ccc"/>']
    for (a, b), fill in shades:
        parts.append(f'<rect x="{x(max(a, t0)):.1f}" y="{y}" width="{max(x(min(b, t1)) - x(max(a, t0)), 1):.1f}" '
                     f'height="{PANEL_H}" fill="{fill}"/>')
    if threshold is not None:
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{yy(threshold):.1f}" y2="{yy(threshold):.1f}" '
                     'stroke="#c00" stroke-dasharray="4 3"/>')
    pts = " ".join(f"{x(t):.1f},{yy(v):.1f}" for t, v in points)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
    parts.append(f'<text x="{PAD + 4}" y="{y + 14}" font-size="12">{html.escape(name)} '
                 f'[{lo:.3g} … {hi:.3g}]</text>')
    return "\n".join(parts)


def write_chart(path: Path, asset_root: Path, alarms: list[dict], fault: tuple[float, float],
                sensors: list[str], score_threshold: float | None = None) -> None:
    """Write the chart. ``score_threshold`` is the anomaly rule's (drawn dashed on the score panel; none when
    the rule raises on consecutive predictions only)."""
    series = read_series(asset_root, sensors)
    scores = read_scores(asset_root)
    times = [t for pts in series.values() for t, _ in pts] + [t for t, _ in scores]
    if not times:
        path.write_text("<html><body>no data</body></html>")
        return
    t0, t1 = min(times), max(times)
    shades = [(fault, "rgba(255,165,0,0.18)")] + [(s, "rgba(200,0,0,0.15)") for s in alarm_spans(alarms, t1)]
    panels, y = [], 30
    colours = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf"]
    for i, name in enumerate(sensors):
        panels.append(_panel(name, series[name], t0, t1, y, shades, colours[i % len(colours)]))
        y += PANEL_H + 15
    panels.append(_panel("anomaly_score", scores, t0, t1, y, shades, "#d62728", 0.0, 1.0, threshold=score_threshold))
    y += PANEL_H + 30
    dashed = f", dashed: the rule's score threshold {score_threshold:g}" if score_threshold is not None else ""
    legend = (f'<text x="{PAD}" y="{y - 8}" font-size="12">{iso_utc(t0)} … {iso_utc(t1)} — orange: injected fault, '
              f'red: anomaly alarm, from the row that raised it to the row that cleared it{dashed}</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" font-family="sans-serif">' \
          f'<text x="{PAD}" y="18" font-size="14">l4e-agent demo: pump-07</text>{"".join(panels)}{legend}</svg>'
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>l4e-agent demo</title></head>"
                    f"<body>{svg}</body></html>")
