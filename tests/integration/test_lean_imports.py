"""The resident agent holds only what its data path needs: a replay asset writing to a folder store never
imports pandas (pyarrow would pull it in through its pandas shim), boto3 (no S3 location), asyncua nor pymodbus
(no OPC-UA or Modbus source: connectors.registry imports a connector by kind, and the config models are light)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
sys.argv = ["l4e-agent", "run", sys.argv[1], "--state-dir", sys.argv[2], "--clock-start", "2025-12-31T23:58:00Z",
            "--speed", "240", "--until", "2026-01-01T00:10:30Z"]
from agent.cli import main
code = main()
heavy = ("pandas", "boto3", "botocore", "asyncua", "pymodbus", "cryptography")
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(heavy))}))
"""


def test_a_replay_asset_into_a_folder_store_runs_without_pandas_boto3_or_protocol_libraries(tmp_path):
    store = tmp_path / "store"
    env = {"PATH": "/usr/bin:/bin", "L4E_AGENT_LOOKOUT__INPUT": f"file://{store}/"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "config/replay/pump-07.toml"),
                           str(tmp_path / "state")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    assert len(list(store.glob("pump_*.csv"))) >= 2  # it did the work: windows were written


LOAD = """
import json, sys
import agent.config
protocols = ("asyncua", "pymodbus", "cryptography")
after_import = sorted({m.split(".")[0] for m in sys.modules} & set(protocols))
config = agent.config.load(sys.argv[1])
after_load = sorted({m.split(".")[0] for m in sys.modules} & set(protocols))
print(json.dumps({"import": after_import, "load": after_load, "kinds": [s.kind for s in config.sources]}))
"""


def test_config_validation_loads_no_protocol_library_for_a_replay_asset():
    """agent.config knows every kind's model (connectors.registry) without importing asyncua or pymodbus."""
    proc = subprocess.run([sys.executable, "-c", LOAD, str(ROOT / "config/replay/pump-07.toml")], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"import": [], "load": [], "kinds": ["replay"]}
