"""A shortened demo: simulated plant → real OPC-UA and Modbus connections → agent → local L4E service →
alarms. The anomaly alarm must be raised for the injected fault and not before it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_demo_raises_the_alarm_for_the_fault_and_not_before(tmp_path):
    out = tmp_path / "demo"
    lines, page = [], None
    with (tmp_path / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "demo", "--out", str(out), "--quick",
                                 "--fault-start-min", "20", "--fault-end-min", "35", "--live-min", "50"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:  # the status page is served while the agent runs: fetch it then
                lines.append(line)
                m = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", line)
                if m and page is None:
                    with urllib.request.urlopen(m.group(1), timeout=10) as resp:
                        page = (resp.status, resp.read().decode())
            proc.wait(timeout=240)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()
        err.seek(0)
        errors = err.read()
    stdout = "".join(lines)
    assert proc.returncode == 0, stdout[-3000:] + errors[-3000:]
    assert page is not None and page[0] == 200 and "asset pump-07" in page[1]
    assert all(f'data-sensor="{s}"' in page[1] for s in ("flow", "suction_pressure", "vibration", "winding_temp"))
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
    assert "uploaded pump_" in stdout and "ALARM RAISED anomaly" in stdout
