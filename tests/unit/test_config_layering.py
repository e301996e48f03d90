"""Configuration does not reach into the runtime: loading and validating an asset file imports no module of
agent.runtime (the [log] and [metrics] models live in agent.core)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from agent.config import load
load(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m == "agent.runtime" or m.startswith("agent.runtime."))))
"""


def test_config_imports_no_runtime_module():
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "config" / "example.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
