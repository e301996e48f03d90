"""``l4e-agent discover opcua``: a real server's tree → an asset file that `check` accepts and `run` runs.

Peers: an asyncua server with a nested tree (tests/connectors/opcua_tree_peer.py) and node-opcua with a
5,000-variable tree (tests/peers/node_opcua/tree_server.js)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path

import pytest

from agent.config import load
from agent.core.clock import ScaledClock, parse_instant
from agent.pipeline.store import FileStore
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner
from tests.connectors.node_opcua_peer import PEER_DIR
from tests.connectors.opcua_tree_peer import OpcUaTreePeer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
T0 = parse_instant("2026-01-01T00:00:00Z")


async def cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``l4e-agent ARGS`` in a child process (the peer keeps serving in this event loop)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def tree():
    peer = await OpcUaTreePeer().start()
    yield peer
    await peer.stop()


async def test_discover_check_run(tree, tmp_path):
    """Nested tree → file (numeric scalars kept, strings/arrays/unreadable skipped with reasons, comments with
    path, type and unit) → `check` passes → `run` writes windows holding the server's values."""
    out = tmp_path / "plant.toml"
    store = tmp_path / "store"
    code, stdout, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/**", "--asset", "line",
                                     "--input", f"file://{store}/", "-o", str(out))
    assert code == 0, stderr
    assert stdout == ""
    assert "9 sensor(s) kept, 4 skipped" in stderr
    assert "skipped Site/Line1/Pump1/Label: String (a string)" in stderr
    assert "skipped Site/Line1/Pump1/Curve: not a scalar (ValueRank 1: an array)" in stderr
    assert "skipped Site/Line1/Pump1/Secret: no read access" in stderr
    assert "skipped Site/Line2/Tank/Config/Mode: String (a string)" in stderr
    text = out.read_text()
    assert '# Site/Line1/Pump1/Flow · Double · m³/h' in text
    assert '# Site/Line2/Pump1/Temp · UInt16' in text
    doc = tomllib.loads(text)
    nodes = {n["node_id"]: n["sensor"] for n in doc["sources"][0]["nodes"]}
    assert nodes == {
        "ns=2;s=Site.Line1.Pump1.Flow": "Line1_Pump1_Flow", "ns=2;s=Site.Line1.Pump1.Pressure": "Pump1_Pressure",
        "ns=2;s=Site.Line1.Pump1.Run": "Run", "ns=2;s=Site.Line1.Pump2.Flow": "Pump2_Flow",
        "ns=2;s=Site.Line1.Pump2.Pressure": "Pump2_Pressure", "ns=2;s=Site.Line1.Pump2.Count": "Count",
        "ns=2;s=Site.Line2.Pump1.Flow": "Line2_Pump1_Flow", "ns=2;s=Site.Line2.Pump1.Temp": "Temp",
        "ns=2;s=Site.Line2.Tank.Level": "Level"}
    assert doc["components"] == {"Line1_Pump1": ["Line1_Pump1_Flow", "Pump1_Pressure", "Run"],
                                 "Pump2": ["Pump2_Flow", "Pump2_Pressure", "Count"],
                                 "Line2_Pump1": ["Line2_Pump1_Flow", "Temp"], "Tank": ["Level"]}

    code, stdout, stderr = await cli("check", str(out), "--at", "2026-01-01T00:00:00Z")
    assert code == 0, stderr
    assert "asset line: 4 component(s), 9 sensor(s), 1 source(s)" in stdout

    clock = ScaledClock(T0 - 90, 60.0)
    runner = AssetRunner(load(out), out, tmp_path / "state", clock)
    await asyncio.wait_for(Agent([runner], clock).run(until=T0 + 5 * 60 + 30), 60)
    files = FileStore(store)
    expected = {"Line1_Pump1": [1.5, 2.25, 1.0], "Pump2": [3.5, 4.5, 7.0], "Line2_Pump1": [5.5, 60.0],
                "Tank": [0.75]}
    for component, values in expected.items():
        rows = list(csv.reader(io.StringIO(files.get(f"{component}_20260101000000.csv").decode())))
        assert rows[0] == ["Timestamp", *doc["components"][component]]
        assert len(rows) == 6  # (00:00, 00:05] on a PT1M grid
        # the session is up within the 90 s of clock before the window on any sane machine; on a loaded one
        # the first rows may precede the first reading: empty, never wrong
        filled = [row for row in rows[1:] if row[1:] != [""] * len(values)]
        assert filled and filled == rows[len(rows) - len(filled):], (component, rows)
        for row in filled:
            assert [float(v) for v in row[1:]] == values, (component, row)


async def test_merge_keeps_what_the_engineer_wrote(tree, tmp_path):
    out = tmp_path / "plant.toml"
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/Pump1/*",
                                "--input", f"file://{tmp_path}/store/", "-o", str(out))
    assert code == 0, stderr
    edited = out.read_text().replace(
        "\n[lookout]\n", "\n# lookout settings of scheduler pump-07, checked with ops\n[lookout]\n").replace(
        '"Run"]', '"Run"]  # keep Run last')
    edited = edited.replace('sampling_rate = "PT1M"', 'sampling_rate = "PT5M"')
    out.write_text(edited)
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/**", "--merge", str(out))
    assert code == 0, stderr
    assert "3 sensor(s) added" in stderr
    merged = out.read_text()
    lines = iter(merged.splitlines())
    assert all(line in lines for line in edited.splitlines())  # every line kept, in its order
    assert "# lookout settings of scheduler pump-07, checked with ops" in merged
    assert '"Run"]  # keep Run last' in merged
    doc = tomllib.loads(merged)
    assert doc["lookout"]["sampling_rate"] == "PT5M"
    assert doc["components"]["Pump2"] == ["Pump2_Flow", "Pump2_Pressure", "Count"]
    assert [n["sensor"] for n in doc["sources"][0]["nodes"]][:3] == ["Flow", "Pressure", "Run"]
    assert len(doc["sources"][0]["nodes"]) == 6
    code, _, stderr = await cli("check", str(out))
    assert code == 0, stderr
    # nothing new: the file is written back unchanged
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/**", "--merge", str(out))
    assert code == 0, stderr
    assert out.read_text() == merged


async def test_component_by_pattern_and_bad_input(tree, tmp_path):
    code, stdout, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/*/Flow",
                                     "Site/Line2/**", "--component-by", "pattern")
    assert code == 0, stderr
    assert "5 sensor(s) kept, 1 skipped" in stderr  # Site/Line2/Tank/Config/Mode is a string
    doc = tomllib.loads(stdout)  # without -o: the file on stdout, the summary on stderr
    assert doc["components"] == {"Site_Line1_Flow": ["Line1_Pump1_Flow", "Pump2_Flow"],
                                 "Site_Line2": ["Line2_Pump1_Flow", "Temp", "Level"]}
    assert [p.name for p in tmp_path.iterdir()] == []

    out = tmp_path / "plant.toml"
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/Pmp1/*", "-o", str(out))
    assert code == 65
    near = re.search(r"nearest paths that exist: (.*)", stderr).group(1)
    assert "Site/Line1/Pump1" in near.split(", ")
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Line1/Pump1/Label",
                                "-o", str(out))
    assert code == 65
    assert "no numeric or boolean scalar" in stderr and "Site/Line1/Pump1/Label (String (a string))" in stderr
    code, _, stderr = await cli("discover", "opcua", f"opc.tcp://127.0.0.1:{free_port()}/", "--browse", "**",
                                "-o", str(out), "--timeout", "2")
    assert code == 69
    assert "cannot reach" in stderr and "connection refused" in stderr
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "Site/Pump**", "-o", str(out))
    assert code == 64
    assert "'**' must be a whole segment" in stderr
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "-o", str(out))
    assert code == 64
    assert not out.exists()
    out.write_text("asset = 'x'\n# mine\n")
    code, _, stderr = await cli("discover", "opcua", tree.endpoint, "--browse", "**", "--merge", str(out))
    assert code == 65  # the merged file lacks [lookout]: it would not pass check
    assert "would not pass check" in stderr
    assert out.read_text() == "asset = 'x'\n# mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plant.toml"]  # no temporary file left behind


async def test_a_server_that_refuses_browsing(tmp_path):
    peer = await OpcUaTreePeer(refuse_browsing=True).start()
    try:
        out = tmp_path / "plant.toml"
        code, _, stderr = await cli("discover", "opcua", peer.endpoint, "--browse", "**", "-o", str(out))
    finally:
        await peer.stop()
    assert code == 69
    assert f"{peer.endpoint} refuses to be browsed: BadUserAccessDenied" in stderr
    assert "password" not in stderr  # not mistaken for a rejected identity
    assert not out.exists()


@pytest.mark.skipif(not (PEER_DIR / "node_modules" / "node-opcua-server").is_dir() or not shutil.which("node"),
                    reason="node-opcua is installed by `make system-deps`")
async def test_node_opcua_5000_variables(tmp_path):
    """node-opcua, 5,100 numeric variables in nested folders (one folder of 1,100: paged with BrowseNext),
    a string, an array, five unreadable: discovery is well within 10 s on loopback and `check` passes."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(shutil.which("node"), str(PEER_DIR / "tree_server.js"), str(port),
                                                cwd=PEER_DIR, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async def ready() -> None:  # node-opcua may print warnings (e.g. about the node version) first
            while not (line := await proc.stdout.readline()).startswith(b"READY"):
                assert line, "the node-opcua server ended before READY"

        await asyncio.wait_for(ready(), 60)
        out = tmp_path / "plant.toml"
        started = time.monotonic()
        code, _, stderr = await cli("discover", "opcua", f"opc.tcp://127.0.0.1:{port}/l4e", "--browse", "Site/**",
                                    "--input", f"file://{tmp_path}/store/", "-o", str(out))
        whole = time.monotonic() - started
        # past --max-nodes (inside the 1,100-reference folder, its continuation point open): exit 65, no file
        code_limit, _, stderr_limit = await cli("discover", "opcua", f"opc.tcp://127.0.0.1:{port}/l4e", "--browse",
                                                "Site/Line5/**", "--max-nodes", "600", "-o", str(tmp_path / "x.toml"))
    finally:
        proc.kill()
        await proc.wait()
    assert code_limit == 65 and "more than 600 nodes" in stderr_limit, stderr_limit
    assert not (tmp_path / "x.toml").exists()
    assert code == 0, stderr
    summary = stderr.splitlines()[0]
    measured = float(re.search(r"([\d.]+) s$", summary).group(1))
    print(f"\n{summary}\nwhole command (start-up, discovery, check, write): {whole:.2f} s")
    assert "5101 sensor(s) kept, 7 skipped" in summary
    assert re.search(r"\((\d+) BrowseNext\)", summary).group(1) != "0"
    assert measured <= 10.0
    assert "skipped Site/Line1/Unit01/Name: String (a string)" in stderr
    assert "skipped Site/Line1/Unit01/Curve: not a scalar (ValueRank 1: an array)" in stderr
    assert "skipped Site/Locked/L3: no read access" in stderr
    text = out.read_text()
    assert "# Site/Line1/Unit01/Flow · Double · %" in text
    doc = tomllib.loads(text)
    assert len(doc["components"]["Bulk"]) == 1100
    assert doc["components"]["Line1_Unit07"][:2] == ["Line1_Unit07_T000", "Line1_Unit07_T001"]
    code, stdout, stderr = await cli("check", str(out))
    assert code == 0, stderr
    assert "5101 sensor(s)" in stdout


async def test_asyncua_2000_nodes(tmp_path):
    """An asyncua server with 2,000 variables in 20 folders besides the plant tree: all discovered, one
    component per folder, in a bounded number of batched requests."""
    peer = await OpcUaTreePeer(bulk=2000).start()
    try:
        out = tmp_path / "bulk.toml"
        code, _, stderr = await cli("discover", "opcua", peer.endpoint, "--browse", "Bulk/**", "-o", str(out))
    finally:
        await peer.stop()
    assert code == 0, stderr
    summary = stderr.splitlines()[0]
    print(f"\n{summary}")
    # 2,000 tags + 20 groups + Bulk + Site (listed under Objects, not walked: no pattern reaches into it)
    assert summary.startswith("discover: 2000 sensor(s) kept, 0 skipped, 2022 node(s) walked")
    assert int(re.search(r"in (\d+) browse request", summary).group(1)) <= 20  # batched, not one per node
    doc = tomllib.loads(out.read_text())
    assert len(doc["components"]) == 20 and doc["components"]["Group07"][0] == "Tag00700"
