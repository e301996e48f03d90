"""Secrets from systemd credentials: ``password_file = "credential:NAME"`` and ``secret_file = "credential:NAME"``
read ``$CREDENTIALS_DIRECTORY/NAME`` (a real folder here, as systemd's LoadCredential= fills it); a missing one
is a configuration error naming the key and the credential; check and probe never print the secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sys
import textwrap
from pathlib import Path

from agent.alarms.hook_config import WebhookHookConfig
from agent.alarms.hooks import WebhookHook
from agent.cli import main
from agent.core.model import Alarm
from tests.connectors.opcua_peer import OpcUaPeer, PasswordUsers

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pa55-Credential-7x"


async def cli(*args: str, env: dict) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def asset(tmp_path: Path, endpoint: str, hook_secret: str = "credential:webhook-key") -> Path:
    path = tmp_path / "asset.toml"
    path.write_text(textwrap.dedent(f"""\
        asset = "pump-07"
        [lookout]
        upload_frequency = "PT5M"
        sampling_rate = "PT1M"
        input = "file://{tmp_path}/store/"
        [components]
        pump = ["flow"]
        [alarms.hooks.ops]
        kind = "webhook"
        url = "http://127.0.0.1:9/alarm"
        secret_file = "{hook_secret}"
        [[sources]]
        name = "plc"
        kind = "opcua"
        endpoint = "{endpoint}"
        username = "operator"
        password_file = "credential:opcua-password"
        security = {{ allow_credentials_over_none = true }}
        nodes = [{{ sensor = "flow", node_id = "ns=2;s=Pump07.Flow" }}]
        """))
    return path


async def test_password_and_hook_key_from_credentials(tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "opcua-password").write_text(SECRET + "\n")
    (creds / "webhook-key").write_text("hook-key-0123\n")
    peer = await OpcUaPeer(users=PasswordUsers("operator", SECRET)).start()
    try:
        path = asset(tmp_path, peer.endpoint)
        env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
        code, out, err = await cli("check", str(path), env=env)
        assert code == 0, err
        assert "OK" in out
        code, probe_out, probe_err = await cli("probe", str(path), env=env)
        assert code == 0, probe_out + probe_err
        assert "value=1.5" in probe_out  # the server took the password from the credential
        assert SECRET not in out + err + probe_out + probe_err
        (creds / "opcua-password").write_text("not-the-password\n")  # read at connect: a rotated secret is used
        code, wrong_out, wrong_err = await cli("probe", str(path), env=env)
        assert code == 1
        assert "not-the-password" not in wrong_out + wrong_err
    finally:
        await peer.stop()


def check(path: Path, capsys) -> tuple[int, str]:
    """``l4e-agent check`` in process (as the config corpus runs it): fast, same code path."""
    code = main(["check", str(path)])
    return code, capsys.readouterr().err


def test_missing_credentials_are_configuration_errors(tmp_path, monkeypatch, capsys):
    path = asset(tmp_path, "opc.tcp://127.0.0.1:4840")
    empty = tmp_path / "credentials"
    empty.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(empty))
    code, err = check(path, capsys)
    assert code == 78
    assert f"{path}: sources[0].password_file: credential 'opcua-password': not in $CREDENTIALS_DIRECTORY " \
           f"({empty}): it has no such file; the unit needs LoadCredential=opcua-password:/path/to/secret" in err
    assert '(source "plc")' in err
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")  # not under systemd at all
    code, err = check(path, capsys)
    assert code == 78
    assert "sources[0].password_file: credential 'opcua-password': $CREDENTIALS_DIRECTORY is not set" in err
    (empty / "opcua-password").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(empty))
    code, err = check(path, capsys)
    assert code == 78
    assert "alarms.hooks.ops.secret_file: credential 'webhook-key': not in $CREDENTIALS_DIRECTORY" in err
    path = asset(tmp_path, "opc.tcp://127.0.0.1:4840", hook_secret="credential:../x")
    code, err = check(path, capsys)
    assert code == 78
    assert "alarms.hooks.ops.secret_file: credential '../x': not a systemd credential name" in err
    assert SECRET not in err


def test_webhook_signs_with_the_credential(tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "webhook-key").write_text("hook-key-0123\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    hook = WebhookHook("ops", WebhookHookConfig(kind="webhook", url="http://127.0.0.1:9/",
                                                secret_file="credential:webhook-key"), tmp_path)
    assert hook.secret_path == creds / "webhook-key"
    alarm = Alarm(id="a1", asset="pump-07", rule="anomaly", state="raised", ts=0.0)
    body = b'{"x": 1}'
    headers = hook._headers(alarm, body)
    expected = hmac.new(b"hook-key-0123", body, hashlib.sha256).hexdigest()
    assert headers["X-L4E-Signature"] == f"sha256={expected}"
