"""The CLI against the local L4E service: provision, check --online, status, and run with only the scheduler's
name in the asset file (discovery), each as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from agent.lookout_local import LocalLookoutService
from tests.helpers import logfmt_events
from tests.lookout_local import synth

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_provision_check_status_and_run_from_the_scheduler_name(tmp_path):
    history = synth.series(synth.DAY)
    frame = pd.concat([f.set_index("Timestamp") for f in history.values()], axis=1)
    frame.index = frame.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(tmp_path / "history.csv")
    store = tmp_path / "store"
    svc = LocalLookoutService(tmp_path / "svc", store.as_uri() + "/").start()
    env = dict(os.environ)
    comps = "\n".join(f"{c} = {json.dumps(s)}" for c, s in synth.COMPONENTS.items())
    full = tmp_path / "full.toml"
    full.write_text(textwrap.dedent(f"""\
        asset = "pump-07"
        [lookout]
        scheduler = "pump-07-scheduler"
        endpoint_url = "{svc.endpoint_url}"
        store = "{store.as_uri()}/"
        upload_frequency = "PT5M"
        delay_offset_minutes = 1
        sampling_rate = "PT1M"
        input = "{store.as_uri()}/plant/pump-07/input/"
        [[sources]]
        name = "history"
        kind = "replay"
        path = "history.csv"
        [components]
        """) + comps + "\n")
    try:
        dry = cli("provision", str(full), "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr[-2000:]
        logfmt_events(dry.stderr)  # one line per event, in the one format
        assert not (store / "plant").exists()  # the plan changed nothing

        done = cli("provision", str(full), env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "scheduler pump-07-scheduler:" in done.stdout
        events = logfmt_events(done.stderr)
        assert len(events) == len(set(events)), events  # nothing logged twice
        assert (store / "plant" / "pump-07" / "training-data" / "pump" / "pump.csv").exists()

        check = cli("check", str(full), "--online", env=env)
        assert check.returncode == 0, check.stderr[-2000:]
        logfmt_events(check.stderr)
        assert "scheduler pump-07-scheduler:" in check.stdout

        # a minimal file: everything else comes from the scheduler and its model
        minimal = tmp_path / "minimal.toml"
        minimal.write_text(textwrap.dedent(f"""\
            asset = "pump-07"
            [lookout]
            scheduler = "pump-07-scheduler"
            endpoint_url = "{svc.endpoint_url}"
            store = "{store.as_uri()}/"
            [[sources]]
            name = "history"
            kind = "replay"
            path = "history.csv"
            """))
        state = tmp_path / "state"
        start = pd.Timestamp(frame.index[-1]) - pd.Timedelta(minutes=20)
        ran = cli("run", str(minimal), "--state-dir", str(state), "--clock-start", start.isoformat(),
                  "--speed", "120", "--until", (start + pd.Timedelta(minutes=12)).isoformat(), env=env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert logfmt_events(ran.stderr).count("agent started: 1 asset(s): pump-07") == 1
        written = sorted(p.name for p in (store / "plant" / "pump-07" / "input").glob("*.csv"))
        assert written and all(name.startswith(("pump_", "motor_")) for name in written)
        assert (state / "discovery.json").exists()  # cached for outages

        shown = cli("status", str(minimal), "--state-dir", str(state), env=env)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "pump-07-scheduler" in shown.stdout
    finally:
        svc.stop()
