"""A shortened demo: simulated plant → real OPC-UA and Modbus connections → agent → local L4E service →
alarms. The anomaly alarm must be raised for the injected fault and not before it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_demo_raises_the_alarm_for_the_fault_and_not_before(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "agent", "demo", "--out", str(out), "--quick",
                           "--fault-start-min", "20", "--fault-end-min", "35", "--live-min", "50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True
    alarms = [json.loads(x) for x in (out / "alarms.jsonl").read_text().splitlines()]
    anomaly = [a for a in alarms if a["rule"] == "anomaly"]
    assert anomaly and anomaly[0]["state"] == "raised"
    fault_start = 1772438400 + 20 * 60  # --start default 2026-03-02T08:00:00Z + 20 min
    assert anomaly[0]["window_end"] > fault_start  # not before the fault
    assert anomaly[0]["ts"] <= fault_start + 15 * 60 + 300  # caught while it lasted
    assert any(d["name"] in ("pump\\suction_pressure", "motor\\vibration", "pump\\discharge_pressure",
                             "pump\\flow") for d in anomaly[0]["diagnostics"])
    # the whole loop really ran: windows in the store, results written by the scheduler, a chart
    store = out / "store" / "plant-l4e" / "pump-07"
    assert len(list((store / "input").glob("pump_*.csv"))) >= 8
    assert len(list((store / "output").glob("*/results.jsonl"))) >= 8
    assert "<svg" in (out / "demo-chart.html").read_text()
    assert "uploaded pump_" in proc.stdout and "ALARM RAISED anomaly" in proc.stdout
