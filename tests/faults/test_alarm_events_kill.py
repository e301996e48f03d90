"""kill -9 between an event and the alarm engine's next run: the alarm is still raised, and still cleared.

The agent (a real `l4e-agent run` process) replays a history with a hole of one whole window; the alarm job
runs once at start and then every hour of clock time (``[alarms] check_interval_secs``), so the gap between
"the window is closed and its window_missing event handed over" and "the engine took it" is wide. The agent is
killed with SIGKILL in that gap, restarted, killed again in the same gap after the next window is written
(its window_written event clears the alarm), and restarted once more.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pandas as pd

from tests.connectors.modbus_peer import sim_device, start_tcp
from tests.helpers import (
    T0,
    asset_file,
    asset_header,
    eventually,
    journal_alarms,
    kill_9,
    modbus_tcp_source,
    start_agent,
    wait_for,
    write_history,
)

SPEED = 120.0  # a PT5M window every 2.5 s of wall time; the alarm job every 30 s
MISSING = T0 + pd.Timedelta(minutes=5)  # the window (5 min, 10 min] has no reading at all

ALARMS = "\n[alarms]\ncheck_interval_secs = 3600\n"


def start_replay(path: Path, state: Path, until: pd.Timestamp):
    return start_agent(path, state, clock_start=(T0 - pd.Timedelta(minutes=1)).isoformat(), speed=SPEED,
                       until=until.isoformat())


def last_written(state: Path) -> float:
    try:
        return json.loads((state / "progress.json").read_text()).get("last_written") or 0
    except (FileNotFoundError, ValueError):
        return 0


def journal_states(journal: Path) -> list[tuple[str, str]]:
    """(state, alarm id) per delivery, a repeated delivery counted once: hooks are at-least-once, and a kill -9
    between a delivery and its record delivers it again after the restart (same alarm, same state)."""
    lines = journal.read_text().splitlines() if journal.exists() else []
    out: list[tuple[str, str]] = []
    for entry in ((a["state"], a["id"]) for a in map(json.loads, lines)):
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def engine_saw_missing(state: Path) -> bool:
    """Whether the alarm engine's saved state has an open window_missing alarm."""
    try:
        return bool(json.loads((state / "alarms.json").read_text())["events"].get("data-health"))
    except (FileNotFoundError, ValueError, KeyError):
        return False


def test_kill_9_between_an_event_and_the_alarm_engine(tmp_path):
    frame = write_history(tmp_path / "history.csv", minutes=25, step_secs=10)
    hole = (frame.index > MISSING) & (frame.index <= MISSING + pd.Timedelta(minutes=5))
    kept = frame.loc[~hole].copy()
    kept.index = kept.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    kept.to_csv(tmp_path / "history.csv")
    journal = tmp_path / "alarms.jsonl"
    path = asset_file(tmp_path, f"file://{tmp_path}/store/", grace=5,
                      extra=ALARMS + journal_alarms(journal, ("data-health", "window_missing")))
    state = tmp_path / "state"
    until = T0 + pd.Timedelta(minutes=40)

    # 1. the missing window is closed (progress saved past it) and its event handed over; kill before the
    #    alarm engine's next run (an hour of clock time away)
    first = start_replay(path, state, until)
    try:
        closed = wait_for(lambda: last_written(state) >= (MISSING + pd.Timedelta(minutes=5)).timestamp(), 60,
                          every=0.02)
    finally:
        err = kill_9(first)
    assert closed, err[-3000:]
    assert not engine_saw_missing(state), "the kill missed the gap: the engine had run"
    assert journal_states(journal) == []

    # 2. restart: the alarm is raised from what was on disk; the next window is written (its event would clear
    #    the alarm) and the agent is killed again before the engine's next run
    second = start_replay(path, state, until)
    try:
        raised = wait_for(lambda: [s for s, _ in journal_states(journal)] == ["raised"], 30, every=0.02)
        written = wait_for(lambda: last_written(state) >= (MISSING + pd.Timedelta(minutes=10)).timestamp(), 60,
                           every=0.02)
    finally:
        err = kill_9(second)
    assert raised and written, err[-3000:]
    assert [s for s, _ in journal_states(journal)] == ["raised"]  # the clearing event was not taken yet

    # 3. restart: the window_written event from before the kill clears the alarm
    third = start_replay(path, state, until)
    try:
        cleared = wait_for(lambda: len(journal_states(journal)) == 2, 30, every=0.02)
    finally:
        third.send_signal(signal.SIGTERM)
        _, err = third.communicate(timeout=60)
    assert cleared, err[-3000:]
    assert third.returncode == 0, err[-3000:]
    (raised_state, raised_id), (cleared_state, cleared_id) = journal_states(journal)
    assert (raised_state, cleared_state) == ("raised", "cleared") and raised_id == cleared_id
    alarm = json.loads(journal.read_text().splitlines()[0])
    assert alarm["rule"] == "data-health" and alarm["window_start"] == int(MISSING.timestamp())


SILENT = "[health]\nsource_silent_secs = 30\n"
FLOW = '{ sensor = "flow", table = "holding", address = 0, type = "float32" }'


async def test_a_source_that_came_back_while_the_agent_was_killed_clears_its_alarm(tmp_path):
    """The condition flags survive kill -9: a source silent when the agent died and answering when it comes back
    gets its source_recovered (the alarm clears) instead of an alarm left open for ever."""
    device = sim_device(1, holding={0: [0x4148, 0x0000]})  # 12.5
    peer = await start_tcp(device)
    journal = tmp_path / "alarms.jsonl"
    path = tmp_path / "asset.toml"
    path.write_text(asset_header("pump", f"file://{tmp_path}/store/", 'pump = ["flow"]') + SILENT
                    + journal_alarms(journal, ("plc-silent", "source_silent"))
                    + modbus_tcp_source("plc", peer.port, [FLOW], timeout_secs=0.5))
    state = tmp_path / "state"

    def start():  # 10x: the silence bound is 3 s of wall time, a poll every 0.2 s
        return start_agent(path, state, clock_start=T0.isoformat(), speed=10)

    first = start()
    try:
        await asyncio.sleep(1.0)  # connected and polling
        await peer.stop()
        raised = await eventually(lambda: [s for s, _ in journal_states(journal)] == ["raised"], 30)
    finally:
        err = kill_9(first)
    assert raised, err[-3000:]
    peer = await start_tcp(device, port=peer.port)  # the PLC is back while the agent is down
    second = start()
    try:
        cleared = await eventually(lambda: len(journal_states(journal)) == 2, 30)
    finally:
        second.send_signal(signal.SIGTERM)
        err = await asyncio.to_thread(lambda: second.communicate(timeout=60)[1])
        await peer.stop()
    assert cleared, err[-3000:]
    (first_state, first_id), (second_state, second_id) = journal_states(journal)
    assert (first_state, second_state) == ("raised", "cleared") and first_id == second_id
