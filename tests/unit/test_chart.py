"""The demo chart: the score threshold drawn is the rule's, the alarm span runs from the raising row to the
clearing row."""

from __future__ import annotations

import json
import re

from agent.core.clock import iso_utc
from agent.demo.chart import PANEL_H, alarm_spans, write_chart

T = 1772438400  # 2026-03-02T08:00:00Z


def alarm(state: str, ts: float, **kw) -> dict:
    return {"id": "a1", "rule": "anomaly", "state": state, "ts": ts, "window_start": T, "window_end": T + 900, **kw}


def test_alarm_span_is_from_the_raising_row_to_the_clearing_row():
    alarms = [alarm("raised", T + 120), alarm("cleared", T + 600),
              {**alarm("raised", T + 700), "id": "a2"}, {**alarm("raised", T + 60), "rule": "disk", "id": "d"}]
    assert alarm_spans(alarms, end=T + 1000) == [(T + 120, T + 600), (T + 700, T + 1000)]


def _asset(tmp_path):
    root = tmp_path / "pump-07"
    (root / "input").mkdir(parents=True)
    (root / "output" / "w1").mkdir(parents=True)
    rows = "".join(f"{iso_utc(T + 60 * i)[:-1]}.000000,{i}\n" for i in range(1, 11))
    (root / "input" / "pump_1.csv").write_text("Timestamp,flow\n" + rows)
    (root / "output" / "w1" / "results.jsonl").write_text("".join(
        json.dumps({"timestamp": iso_utc(T + 60 * i), "prediction": int(i > 5), "anomaly_score": i / 10}) + "\n"
        for i in range(1, 11)))
    return root


def test_chart_draws_the_rules_threshold_and_shades_the_rows(tmp_path):
    out = tmp_path / "chart.html"
    write_chart(out, _asset(tmp_path), [alarm("raised", T + 360), alarm("cleared", T + 540)], (T + 300, T + 600),
                ["flow"], score_threshold=0.9)
    text = out.read_text()
    assert "score threshold 0.9" in text and "threshold 0.5" not in text
    # the dashed line sits at 0.9 of the score panel (0 at the bottom, 1 at the top)
    y1 = float(re.search(r'<line [^>]*y1="([\d.]+)"', text).group(1))
    panel_top = 30 + PANEL_H + 15
    assert abs(y1 - (panel_top + PANEL_H - 10 - 0.9 * (PANEL_H - 20))) < 0.11
    # the red shade spans the raising row (T+6 min) to the clearing row (T+9 min) of the T+1…T+10 min axis
    shades = re.findall(r'<rect x="([\d.]+)" y="30" width="([\d.]+)" height="120" fill="rgba\(200,0,0', text)
    x, width = map(float, shades[0])
    per_min = (960 - 2 * 50) / 9
    assert abs(x - (50 + 5 * per_min)) < 0.2 and abs(width - 3 * per_min) < 0.2


def test_chart_without_a_threshold_draws_no_line(tmp_path):
    out = tmp_path / "chart.html"
    write_chart(out, _asset(tmp_path), [], (T + 300, T + 600), ["flow"], score_threshold=None)
    assert "<line" not in out.read_text() and "threshold" not in out.read_text()
