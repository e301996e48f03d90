"""What ``l4e-agent run`` keeps while it runs: one configuration tree and one runner per asset, also after a
reload (SIGHUP), and no pydantic-settings when no ``L4E_AGENT_*`` variable is set.

A configuration tree is ~650 B per sensor (13 MB at 20,000 tags) and a runner holds a source's connections and
buffers: a second copy kept by the command's own frame is memory the agent never gives back. Counted in the real
agent process (a replay asset into a folder store on a fast clock, a real SIGHUP), with the garbage collector.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, gc, json, os, signal, sys
from agent.config import AssetConfig
from agent.runtime.agent import Agent
from agent.runtime.asset import AssetRunner

created = []
original_init = AssetRunner.__init__
def counting_init(self, *args, **kwargs):
    created.append(1)
    original_init(self, *args, **kwargs)
AssetRunner.__init__ = counting_init

original_run = Agent.run
result = {}
async def run_and_count(self, until=None):
    # a real SIGHUP once the agent runs (its handlers are installed by run): the reload builds new runners
    asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGHUP)
    code = await original_run(self, until)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, (AssetRunner, AssetConfig))]
    result.update(code=code, created=len(created), runners=sum(isinstance(o, AssetRunner) for o in alive),
                  configs=sum(isinstance(o, AssetConfig) for o in alive),
                  settings="pydantic_settings" in sys.modules)
    return code
Agent.run = run_and_count

sys.argv = ["l4e-agent", "run", sys.argv[1], "--state-dir", sys.argv[2], "--clock-start", "2025-12-31T23:58:00Z",
            "--speed", "60", "--until", "2026-01-01T00:03:30Z"]  # ~5.5 s: the reload (~0.2 s) has 4 s of margin
from agent.cli import main
main()
print(json.dumps(result))
"""


def test_the_running_agent_keeps_one_configuration_and_one_runner_per_asset_also_after_a_reload(tmp_path):
    text = (ROOT / "config/replay/pump-07.toml").read_text()
    text = text.replace('input = "file:///var/lib/l4e-agent/store/plant-l4e/pump-07/input/"',
                        f'input = "file://{tmp_path}/store/"')
    text = text.replace('path = "history.csv"', f'path = "{ROOT / "config/replay/history.csv"}"')
    asset = tmp_path / "pump-07.toml"
    asset.write_text(text)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(asset), str(tmp_path / "state")], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reloading: 1 asset(s)" in proc.stderr  # the SIGHUP did replace the runner
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the first runner and the first configuration (and the first read of the file) are gone after the reload
    assert result == {"code": 0, "created": 2, "runners": 1, "configs": 1, "settings": False}
