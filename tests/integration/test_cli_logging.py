"""The first hour on the command line, as a new user types it: every log event is one line in the configured
format (never twice, never in a second format), ``--help`` lists every command, ``lookout --help`` has its own
help, and the documented example passes ``check``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import assert_once, logfmt_events

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def replay_asset(tmp_path: Path, log_format: str | None = None) -> Path:
    """The shipped replay example, writing into tmp_path/store."""
    for name in ("pump-07.toml", "history.csv"):
        (tmp_path / name).write_text((ROOT / "config" / "replay" / name).read_text())
    text = (tmp_path / "pump-07.toml").read_text().replace("file:///var/lib/l4e-agent/store/",
                                                          (tmp_path / "store").as_uri() + "/")
    if log_format:
        text += f'\n[log]\nformat = "{log_format}"\n'
    (tmp_path / "pump-07.toml").write_text(text)
    return tmp_path / "pump-07.toml"


RUN = ("--clock-start", "2026-01-01T00:00:00Z", "--speed", "600", "--until", "2026-01-01T00:12:00Z")


def test_run_writes_each_event_once_as_logfmt(tmp_path):
    asset = replay_asset(tmp_path)
    ran = cli("run", str(asset), "--state-dir", str(tmp_path / "state"), *RUN)
    assert ran.returncode == 0, ran.stderr[-3000:]
    events = logfmt_events(ran.stderr)
    assert_once(events, "agent started: 1 asset(s): pump-07", "agent stopping: draining", "agent stopped")
    assert list((tmp_path / "store" / "plant-l4e" / "pump-07" / "input").glob("pump_*.csv"))


def test_run_writes_each_event_once_in_the_configured_json(tmp_path):
    asset = replay_asset(tmp_path, log_format="json")
    ran = cli("run", str(asset), "--state-dir", str(tmp_path / "state"), *RUN)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object, none in another format
    assert [e["msg"] for e in events].count("agent started: 1 asset(s): pump-07") == 1
    assert [e["msg"] for e in events].count("agent stopped") == 1


def test_lookout_serve_writes_each_event_once_and_names_its_store(tmp_path):
    state = tmp_path / "svc"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "lookout", "serve", "--port", "0", "--state-dir",
                             str(state)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
        assert proc.stdout.readline() == f"serving folder {state.resolve() / 'store'}/ " \
                                         f"(bucket b = {state.resolve() / 'store'}/b/)\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    events = logfmt_events(err)
    assert_once(events, "local Lookout for Equipment service on http://127.0.0.1:")
    assert f"store folder {state.resolve() / 'store'}/" in events[0]


def test_check_passes_on_the_documented_example_and_logs_nothing_twice():
    for shipped in ("config/example.toml", "config/replay/pump-07.toml"):
        done = cli("check", shipped, "--at", "2026-01-01T00:00:00Z")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"{shipped}: OK\n"), done.stdout
        logfmt_events(done.stderr)


def test_help_lists_every_command_without_raw_markup():
    top = cli("--help")
    assert top.returncode == 0, top.stderr
    listed = set(re.findall(r"^    (\S+)", top.stdout, re.M))
    assert {"run", "check", "probe", "config-example", "provision", "status", "opcua-cert", "lookout",
            "simulate", "demo", "discover"} <= listed, top.stdout
    lookout = cli("lookout", "--help")
    assert lookout.returncode == 0, lookout.stderr
    assert "usage: l4e-agent lookout" in lookout.stdout and "serve" in lookout.stdout
    texts = [top.stdout, lookout.stdout]
    for command in ("lookout serve", "demo", "simulate", "run", "check", "discover", "discover opcua",
                    "discover modbus"):
        shown = cli(*command.split(), "--help")
        assert shown.returncode == 0, (command, shown.stderr)
        assert f"usage: l4e-agent {command}" in shown.stdout
        texts.append(shown.stdout)
    for text in texts:
        assert "`" not in text, text
    # a global option before a sub-program still reaches the sub-program's own parser
    late = cli("--log-level", "DEBUG", "simulate", "--help")
    assert late.returncode == 0 and "usage: l4e-agent simulate" in late.stdout, late.stderr


def test_simulate_logs_once_per_event(tmp_path):
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "simulate", "--opcua-port", "0", "--modbus-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert first, err
    logfmt_events(err)
