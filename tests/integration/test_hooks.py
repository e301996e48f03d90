"""Alarm hooks against real peers: a program, an HTTP server, Modbus and OPC-UA servers, a killed process."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import stat
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from agent.alarms.config import AlarmsConfig
from agent.alarms.engine import AlarmEngine
from agent.alarms.hook_config import HookError
from agent.alarms.hooks import WebhookHook, build_hooks
from agent.core.clock import SystemClock
from agent.core.model import Alarm, Diagnostic
from tests.integration.hook_peers import (
    ROOT,
    connector_writer_factory,
    modbus_peer,
    opcua_peer,
    result_rows,
    webhook_peer,
)

pytestmark = pytest.mark.timeout(60)

ALARM = Alarm(
    id="0123456789abcdef",
    asset="pump",
    rule="anomaly",
    state="raised",
    ts=1_700_000_180.0,
    message="anomaly: 3 consecutive abnormal rows",
    score=0.93,
    window_start=1_700_000_000,
    window_end=1_700_000_300,
    diagnostics=(Diagnostic("pump\\flow", 0.7),),
)
RULE = {"name": "anomaly", "kind": "anomaly", "min_consecutive": 3, "clear_after": 2}


def hook(name: str, config: dict, base_dir: Path, writer_factory=None):
    cfg = AlarmsConfig.model_validate({"hooks": {name: config}})
    return build_hooks(cfg, base_dir, writer_factory)[name]


def script(path: Path, body: str) -> Path:
    """An executable Python script (shebang = this interpreter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---------------------------------------------------------------------------------------------- exec


RECORD = """
import json, os, sys
data = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith(("L4E_", "EXTRA"))}
with open(sys.argv[1], "w") as fh:
    json.dump({"stdin": data, "env": env, "args": sys.argv[2:]}, fh)
"""


async def test_exec_hook_gets_the_alarm_on_stdin_and_in_env(tmp_path: Path) -> None:
    script(tmp_path / "hooks" / "record.py", RECORD)
    out = tmp_path / "out.json"
    # a relative program path is taken from the asset file's folder (base_dir), not the agent's cwd
    exec_hook = hook(
        "horn", {"kind": "exec", "argv": ["hooks/record.py", str(out), "two words"], "env": {"EXTRA": "1"}}, tmp_path
    )
    await exec_hook.fire(ALARM)
    got = json.loads(out.read_text())
    assert got["args"] == ["two words"]  # no shell: arguments arrive as given
    assert got["stdin"]["id"] == ALARM.id and got["stdin"]["diagnostics"] == [{"name": "pump\\flow", "value": 0.7}]
    assert got["env"] == {
        "L4E_ALARM_ID": ALARM.id,
        "L4E_ALARM_STATE": "raised",
        "L4E_ALARM_RULE": "anomaly",
        "L4E_ASSET": "pump",
        "L4E_ALARM_SCORE": "0.93",
        "EXTRA": "1",
    }


async def test_exec_hook_non_zero_exit_is_a_failure(tmp_path: Path) -> None:
    bad = script(tmp_path / "bad.py", "import sys\nsys.stderr.write('no horn here')\nsys.exit(3)\n")
    with pytest.raises(HookError, match="exit status 3: no horn here"):
        await hook("horn", {"kind": "exec", "argv": [str(bad)]}, tmp_path).fire(ALARM)
    with pytest.raises(HookError, match="No such file"):
        await hook("horn", {"kind": "exec", "argv": ["./missing.py"]}, tmp_path).fire(ALARM)


DUMP_ENV = """
import json, os, sys
with open(sys.argv[1], "w") as fh:
    json.dump(dict(os.environ), fh)
"""

AGENT_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "agent-secret",
                 "AWS_SESSION_TOKEN": "agent-token", "L4E_AGENT_METRICS__ENABLED": "true",
                 "DATABASE_PASSWORD": "db-secret"}


async def test_exec_hook_environment_is_minimal(tmp_path: Path, monkeypatch) -> None:
    """Nothing of the agent's environment reaches the program but PATH, LANG and what the hook lists."""
    for name, value in AGENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PLANT_ZONE", "north")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    dump = script(tmp_path / "dump.py", DUMP_ENV)
    out = tmp_path / "env.json"
    exec_hook = hook("horn", {"kind": "exec", "argv": [str(dump), str(out)], "env": {"EXTRA": "1"},
                              "pass_env": ["PLANT_ZONE", "NOT_SET_ANYWHERE"]}, tmp_path)
    await exec_hook.fire(ALARM)
    env = json.loads(out.read_text())
    assert env == {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "PLANT_ZONE": "north",
        "EXTRA": "1",
        "L4E_ALARM_ID": ALARM.id,
        "L4E_ALARM_STATE": "raised",
        "L4E_ALARM_RULE": "anomaly",
        "L4E_ASSET": "pump",
        "L4E_ALARM_SCORE": "0.93",
    }
    assert not set(AGENT_SECRETS) & set(env)


def test_exec_hook_may_not_pass_on_the_agents_aws_credentials(tmp_path: Path) -> None:
    from agent.config import load
    from agent.core.errors import ConfigError

    path = tmp_path / "asset.toml"
    path.write_text(textwrap.dedent("""\
        asset = "pump"
        [lookout]
        upload_frequency = "PT5M"
        sampling_rate = "PT1M"
        input = "file:///tmp/in/"
        [components]
        pump = ["flow"]
        [alarms.hooks.horn]
        kind = "exec"
        argv = ["true"]
        pass_env = ["HTTPS_PROXY", "AWS_SECRET_ACCESS_KEY"]
        [[sources]]
        name = "history"
        kind = "replay"
        path = "history.csv"
        """))
    (tmp_path / "history.csv").write_text("Timestamp,flow\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "alarms.hooks.horn" in message and "AWS_SECRET_ACCESS_KEY" in message and "credentials" in message


async def test_exec_hook_stderr_is_bounded_and_truncated_in_the_log(tmp_path: Path) -> None:
    """A program writing 4 MiB to stderr: it is drained (no deadlock on a full pipe), the last 64 KiB kept,
    the failure's message carries at most 1,000 characters of it and says what was left out."""
    chatty = script(tmp_path / "chatty.py", "import sys\nfor i in range(4096):\n    sys.stderr.write('x' * 1023 + "
                                            "'\\n')\nsys.stderr.write('the real reason')\nsys.exit(2)\n")
    exec_hook = hook("horn", {"kind": "exec", "argv": [str(chatty)], "timeout_secs": 20}, tmp_path)
    with pytest.raises(HookError) as info:
        await exec_hook.fire(ALARM)
    assert len(exec_hook.last_stderr) == 64 * 1024 and exec_hook.last_stderr.endswith(b"the real reason")
    message = str(info.value)
    assert "exit status 2" in message and message.endswith("the real reason")
    assert len(message) < 1200
    assert f"its first {4096 * 1024 + len('the real reason') - 1000} bytes not shown" in message


HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(30)
"""


async def exited(pid: int, timeout_secs: float) -> bool:
    """Wait (via a pidfd, no polling) until ``pid`` has exited; a zombie counts as exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, timeout_secs)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_exec_hook_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    hang = script(tmp_path / "hang.py", HANG)
    pids = tmp_path / "pids"
    exec_hook = hook("horn", {"kind": "exec", "argv": [str(hang), str(pids)], "timeout_secs": 2}, tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HookError, match="killed"):
        await exec_hook.fire(ALARM)
    assert loop.time() - started < 10
    parent, child = map(int, pids.read_text().split())
    with pytest.raises(ProcessLookupError):
        os.kill(parent, 0)  # killed and reaped
    assert await exited(child, 5)  # SIGKILL went to the whole process group


async def test_exec_hook_runs_at_most_max_concurrency_at_once(tmp_path: Path) -> None:
    # Each run reads the alarm from stdin, takes an exclusive lock file (exit 1 if already held) and records
    # its stdin and its time span: with one slot the three runs all happen, one after the other.
    body = """
import json, os, sys, time
alarm = json.load(sys.stdin)
lock, log = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
start = time.monotonic()
time.sleep(0.2)
end = time.monotonic()
os.close(fd)
os.unlink(lock)
with open(log, "a") as fh:
    fh.write(json.dumps({"alarm": alarm, "start": start, "end": end}) + "\\n")
"""
    one = script(tmp_path / "one.py", body)
    runs = tmp_path / "runs.jsonl"
    exec_hook = hook(
        "horn", {"kind": "exec", "argv": [str(one), str(tmp_path / "lock"), str(runs)], "max_concurrency": 1},
        tmp_path,
    )
    await asyncio.gather(*(exec_hook.fire(replace(ALARM, id=f"alarm-{i}")) for i in range(3)))
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted(r["alarm"]["id"] for r in records) == ["alarm-0", "alarm-1", "alarm-2"]
    assert all(r["alarm"]["rule"] == "anomaly" and r["alarm"]["score"] == 0.93 for r in records)
    spans = sorted((r["start"], r["end"]) for r in records)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))  # never two at once


async def test_a_bug_in_a_hook_is_counted_and_logged_with_its_traceback(tmp_path: Path, caplog) -> None:
    class Broken:
        """A hook whose code is wrong (not a failed delivery): its exception must not reach the data path."""

        name, failures, delivered, deadline_secs = "broken", 0, 0, 5.0

        async def fire(self, alarm: Alarm) -> None:
            {}["missing"]  # the bug

    cfg = AlarmsConfig.model_validate({"rules": [{**RULE, "hooks": ["broken"]}],
                                       "hooks": {"broken": {"kind": "log"}}})
    broken = Broken()
    engine = AlarmEngine("pump", cfg, tmp_path / "state", {"broken": broken}, SystemClock())
    with caplog.at_level("WARNING", logger="l4e.alarms"):
        assert [a.state for a in await engine.on_results(result_rows([1, 1, 1]))] == ["raised"]
        assert await engine.drain(20)
    await engine.close()
    assert broken.failures == 1
    bug = [r for r in caplog.records if "a bug in the hook" in r.getMessage()]
    assert len(bug) == 1 and bug[0].exc_info is not None and bug[0].exc_info[0] is KeyError
    assert "KeyError" in bug[0].getMessage()


# ---------------------------------------------------------------------------------------------- webhook


def webhook_config(url: str, secret_file: Path | None, **kw) -> dict:
    config = {
        "kind": "webhook",
        "url": url,
        "timeout_secs": 2,
        "retries": 3,
        "backoff_initial_secs": 0.05,
        "backoff_max_secs": 0.2,
        "use_env_proxy": False,
        **kw,
    }
    if secret_file is not None:
        config["secret_file"] = str(secret_file.name)  # relative: resolved against base_dir
    return config


async def test_webhook_retries_5xx_and_signs_the_body(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("s3cret\n")
    with webhook_peer(secret=b"s3cret", fail_first=2) as peer:
        web = hook("ops", webhook_config(peer.url, tmp_path / "hook.secret"), tmp_path)
        assert isinstance(web, WebhookHook)
        await web.fire(ALARM)
        assert peer.attempts == 3 and peer.bad_signatures == 0
        assert len(peer.accepted) == 1
        delivery = peer.accepted[0]
        assert delivery.body["id"] == ALARM.id and delivery.body["score"] == 0.93
        assert delivery.headers["X-L4E-Alarm-Id"] == ALARM.id
        assert delivery.headers["X-L4E-Alarm-State"] == "raised"


async def test_webhook_gives_up(tmp_path: Path) -> None:
    with webhook_peer(fail_first=100) as peer:
        with pytest.raises(HookError, match="gave up after 2 attempts: HTTP 500"):
            await hook("ops", webhook_config(peer.url, None, retries=1), tmp_path).fire(ALARM)
        assert peer.attempts == 2
    with webhook_peer(fail_first=100, fail_status=400) as peer:
        with pytest.raises(HookError, match="HTTP 400"):
            await hook("ops", webhook_config(peer.url, None), tmp_path).fire(ALARM)
        assert peer.attempts == 1  # a client error is final
    with webhook_peer(secret=b"x") as peer:
        with pytest.raises(HookError, match="secret"):
            await hook("ops", webhook_config(peer.url, tmp_path / "absent.secret"), tmp_path).fire(ALARM)
        assert peer.attempts == 0  # never sent unsigned


async def test_webhook_to_nothing_listening_fails_within_its_deadline(tmp_path: Path) -> None:
    with webhook_peer() as peer:
        url = peer.url  # the port is free again once the peer stopped
    web = hook("ops", webhook_config(url, None, retries=2), tmp_path)
    with pytest.raises(HookError, match="gave up after 3 attempts"):
        await asyncio.wait_for(web.fire(ALARM), web.deadline_secs)


# ---------------------------------------------------------------------------------------------- file, log


async def test_file_and_log_hooks(tmp_path: Path, caplog) -> None:
    file_hook = hook("journal", {"kind": "file", "path": "out/alarms.jsonl"}, tmp_path)
    await file_hook.fire(ALARM)
    await file_hook.fire(replace(ALARM, state="cleared"))
    lines = [json.loads(line) for line in (tmp_path / "out" / "alarms.jsonl").read_text().splitlines()]
    assert [(x["id"], x["state"]) for x in lines] == [(ALARM.id, "raised"), (ALARM.id, "cleared")]
    with caplog.at_level("INFO", logger="l4e.alarms"):
        await hook("log", {"kind": "log"}, tmp_path).fire(ALARM)
    (record,) = [r for r in caplog.records if r.name == "l4e.alarms"]
    assert record.levelname == "WARNING" and record.alarm["id"] == ALARM.id
    assert record.getMessage().startswith("alarm raised {")


# ---------------------------------------------------------------------------------------------- write-back


def write_back_config(hooks: dict) -> AlarmsConfig:
    return AlarmsConfig.model_validate({"rules": [{**RULE, "hooks": list(hooks)}], "hooks": hooks})


async def run_raise_and_clear(engine: AlarmEngine, check_raised, check_cleared) -> None:
    assert [a.state for a in await engine.on_results(result_rows([1, 1, 1]))] == ["raised"]
    assert await engine.drain(20)
    await check_raised()
    assert [a.state for a in await engine.on_results(result_rows([0, 0], start=1_700_000_300))] == ["cleared"]
    assert await engine.drain(20)
    await check_cleared()


async def test_write_back_to_modbus_coil_and_register(tmp_path: Path) -> None:
    from connectors.modbus.config import ModbusSourceConfig

    async with modbus_peer() as plc:
        source = ModbusSourceConfig.model_validate(
            {
                "name": "plc",
                "kind": "modbus",
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": plc.port,
                "devices": [
                    {"device_id": 1, "points": [{"sensor": "flow", "table": "holding", "address": 0, "type": "uint16"}]}
                ],
            }
        )
        cfg = write_back_config(
            {
                "horn": {"kind": "write_back", "source": "plc", "table": "coil", "address": 12},
                "code": {
                    "kind": "write_back",
                    "source": "plc",
                    "table": "holding",
                    "address": 5,
                    "device_id": 1,
                    "raise_value": 42,
                    "clear_value": 7,
                },
            }
        )
        cfg.check_sources({"plc": "modbus"})
        hooks = build_hooks(cfg, tmp_path, connector_writer_factory({"plc": source}, tmp_path))
        engine = AlarmEngine("pump", cfg, tmp_path / "state", hooks, SystemClock())

        async def raised() -> None:
            assert await plc.coil(12) is True and await plc.register(5) == 42

        async def cleared() -> None:
            assert await plc.coil(12) is False and await plc.register(5) == 7

        assert await plc.coil(12) is False
        await run_raise_and_clear(engine, raised, cleared)
        assert hooks["horn"].failures == 0 and hooks["horn"].delivered == 2
        await engine.close()


async def test_write_back_to_opcua_node(tmp_path: Path) -> None:
    from connectors.opcua.config import OpcUaSourceConfig

    async with opcua_peer() as plc:
        source = OpcUaSourceConfig.model_validate(
            {
                "name": "ua",
                "kind": "opcua",
                "endpoint": plc.endpoint,
                "timeout_secs": 5,
                "nodes": [{"sensor": "alarm", "node_id": plc.node_id}],
            }
        )
        cfg = write_back_config(
            {
                "lamp": {
                    "kind": "write_back",
                    "source": "ua",
                    "node_id": plc.node_id,
                    "raise_value": True,
                    "clear_value": False,
                    "timeout_secs": 10,
                },
            }
        )
        cfg.check_sources({"ua": "opcua"})
        hooks = build_hooks(cfg, tmp_path, connector_writer_factory({"ua": source}, tmp_path))
        engine = AlarmEngine("pump", cfg, tmp_path / "state", hooks, SystemClock())

        async def raised() -> None:
            assert await plc.node.read_value() is True

        async def cleared() -> None:
            assert await plc.node.read_value() is False

        await run_raise_and_clear(engine, raised, cleared)
        assert hooks["lamp"].failures == 0
        await engine.close()


# ---------------------------------------------------------------------------------------------- kill/restart


async def test_killed_after_the_raise_decision_delivers_exactly_once_after_restart(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("k")
    with webhook_peer(secret=b"k") as peer:
        cfg = AlarmsConfig.model_validate(
            {
                "rules": [{**RULE, "hooks": ["journal", "ops"]}],
                "hooks": {
                    "journal": {"kind": "file", "path": "alarms.jsonl"},
                    "ops": webhook_config(peer.url, tmp_path / "hook.secret"),
                },
            }
        )
        state_dir = tmp_path / "state"
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "integration" / "hook_peers.py"),
            "raise-then-hang",
            cfg.model_dump_json(),
            str(state_dir),
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 30)
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        (raised_id,) = json.loads(line)
        assert not (tmp_path / "alarms.jsonl").exists() and peer.attempts == 0  # died before any delivery

        hooks = build_hooks(cfg, tmp_path)
        engine = AlarmEngine("pump", cfg, state_dir, hooks, SystemClock())
        await engine.start()  # re-sends the pending raise
        assert await engine.drain(20)
        # The restarted engine continues the episode: a further abnormal row is no second raise.
        assert await engine.on_results(result_rows([1], start=1_700_000_240)) == []
        cleared = await engine.on_results(result_rows([0, 0], start=1_700_000_300))
        assert [(a.id, a.state) for a in cleared] == [(raised_id, "cleared")]
        assert await engine.drain(20)
        await engine.close()

        journal = [json.loads(x) for x in (tmp_path / "alarms.jsonl").read_text().splitlines()]
        assert [(x["id"], x["state"]) for x in journal] == [(raised_id, "raised"), (raised_id, "cleared")]
        assert [(d.body["id"], d.body["state"]) for d in peer.accepted] == [
            (raised_id, "raised"),
            (raised_id, "cleared"),
        ]
        assert peer.attempts == 2 and peer.bad_signatures == 0
