"""Who may read the status page: loopback by default; any other address only with a token from a file.

A configuration binding elsewhere without a token never starts (exit 78 naming the key); with one, a
running agent answers 401 to a missing or wrong token and the page to the right one, and the token itself
never appears in what it serves.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pandas as pd

from tests.conftest import free_port
from tests.helpers import ROOT, T0, asset_file, start_agent, write_history

TOKEN = "s3cr3t-status-token-0123456789"


def request(url: str, authorization: str | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def agent_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_exposed_without_a_token_is_a_config_error(tmp_path):
    write_history(tmp_path / "history.csv", minutes=6)
    path = asset_file(tmp_path, f"file://{tmp_path}/store/", extra='\n[metrics]\nenabled = true\nhost = "0.0.0.0"\n')
    done = agent_cli("check", str(path))
    assert done.returncode == 78, done.stderr
    assert "metrics" in done.stderr and "token_file is required" in done.stderr and "0.0.0.0" in done.stderr

    for content, why in (("", "is empty"), (None, "cannot read token file")):
        if content is not None:
            (tmp_path / "token").write_text(content)
        extra = '\n[metrics]\nenabled = true\nhost = "0.0.0.0"\ntoken_file = "token"\n'
        path = asset_file(tmp_path, f"file://{tmp_path}/store/", extra=extra)
        if content is None:
            (tmp_path / "token").unlink()
        done = agent_cli("check", str(path))
        assert done.returncode == 78, done.stderr
        assert "metrics.token_file" in done.stderr and why in done.stderr

    # loopback needs none
    path = asset_file(tmp_path, f"file://{tmp_path}/store/", extra='\n[metrics]\nenabled = true\nhost = "127.0.0.1"\n')
    assert agent_cli("check", str(path)).returncode == 0


def test_a_running_agent_bound_elsewhere_wants_the_token(tmp_path):
    write_history(tmp_path / "history.csv", minutes=12)
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    port = free_port()
    extra = f'\n[metrics]\nenabled = true\nhost = "0.0.0.0"\nport = {port}\ntoken_file = "token"\n'
    path = asset_file(tmp_path, f"file://{tmp_path}/store/", grace=5, extra=extra)
    agent = start_agent(path, tmp_path / "state", clock_start=(T0 - pd.Timedelta(minutes=1)).isoformat(), speed=60)
    base = f"http://127.0.0.1:{port}"
    basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                code, _, body = request(base + "/api/status", f"Bearer {TOKEN}")
            except (urllib.error.URLError, ConnectionError):
                code = 0
            if code == 200 and json.loads(body)["assets"][0]["windows"]["written_total"] >= 1:
                break
            assert time.monotonic() < deadline and agent.poll() is None, "the agent did not serve the status"
            time.sleep(0.2)
        for path_ in ("/", "/api/status", "/metrics", "/healthz"):
            for auth in (None, "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Token " + TOKEN,
                         "Basic " + base64.b64encode(b"anyone:nope").decode()):
                code, headers, body = request(base + path_, auth)
                assert code == 401, (path_, auth, code)
                assert headers["WWW-Authenticate"].startswith("Basic realm=")
                assert TOKEN not in body
        code, headers, page = request(base + "/", f"Bearer {TOKEN}")
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "asset pump-07" in page and TOKEN not in page
        code, _, doc = request(base + "/api/status", basic)  # what a browser sends after asking
        assert code == 200 and TOKEN not in doc
        assert json.loads(doc)["assets"][0]["sensors"][0]["name"] == "flow"
        assert request(base + "/metrics", f"bearer {TOKEN}")[0] == 200  # the scheme is case-insensitive
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err[-2000:]
    assert TOKEN not in err
