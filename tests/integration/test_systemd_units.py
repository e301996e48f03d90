"""The systemd units: `systemd-analyze verify` is clean, the exposure score stays low, the settings the
agent relies on are there, and the hardening does not break the Python stack.

How verify is pointed at the units: it refuses a unit whose ExecStart binary does not exist and needs the
standard targets (sysinit.target, ...). The test builds a throw-away root with the host's unit folder
copied into ``usr/lib/systemd/system``, our units in ``etc/systemd/system`` and an executable stand-in at
the real ExecStart path, then runs ``systemd-analyze verify --root=ROOT``: the unit files are checked
exactly as shipped, nothing rewritten. verify exits 0 even on unknown keys, so any stderr output fails.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from tests.ci_policy import require_or_skip

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SECURITY_SCRIPT = REPO / ".ci" / "systemd-security.sh"
EXEC_PATH = "opt/l4e-agent/venv/bin/l4e-agent"
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
MAX_EXPOSURE = 2.0



@pytest.fixture(autouse=True)
def systemd_analyze() -> None:
    """Every test here needs systemd-analyze. The CI installs it (Makefile system-deps), so under CI its
    absence is a broken install step and fails; on a developer's machine without it the tests are skipped."""
    require_or_skip(shutil.which("systemd-analyze"),
                    "systemd-analyze missing (Debian package: systemd; `make system-deps` installs it)")


def make_verify_root(root: Path, units: Path = UNITS) -> Path:
    """A root folder systemd-analyze can verify our units in (see the module docstring)."""
    host_units = next(d for d in HOST_UNIT_DIRS if d.is_dir())
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in ("l4e-agent@.service", "l4e-lookout.service"):
        shutil.copy(units / unit, root / "etc/systemd/system" / unit)
    return root


def add_stand_in_binary(root: Path) -> None:
    binary = root / EXEC_PATH
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def read_unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` settings of a unit file (all sections), values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_units_verify_without_any_message(tmp_path: Path) -> None:
    root = make_verify_root(tmp_path)
    add_stand_in_binary(root)
    result = verify(root, "l4e-agent@pump-7.service", "l4e-lookout.service")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10, check=False)
    return int(out.stdout.split()[1])


def test_restart_backoff_drop_in_verifies(tmp_path: Path) -> None:
    """The drop-in install.sh adds on systemd >= 254 is clean there; on an older systemd the only complaint is
    about exactly its two keys (so nothing else in it is wrong), which is why install.sh skips it there."""
    root = make_verify_root(tmp_path)
    add_stand_in_binary(root)
    dropins = root / "etc/systemd/system/l4e-agent@.service.d"
    dropins.mkdir()
    shutil.copy(UNITS / "restart-backoff.conf", dropins / "10-restart-backoff.conf")
    result = verify(root, "l4e-agent@pump-7.service")
    if systemd_version() >= 254:
        assert (result.returncode, result.stderr) == (0, "")
    else:
        unknown = re.findall(r"Unknown key '(\w+)'", result.stderr)
        assert sorted(unknown) == ["RestartMaxDelaySec", "RestartSteps"]
        assert len(result.stderr.strip().splitlines()) == 2, result.stderr


def test_verify_harness_catches_mistakes(tmp_path: Path) -> None:
    """The clean result above means something: a typo or a missing binary does produce stderr."""
    broken = tmp_path / "src"
    broken.mkdir()
    agent_unit = (UNITS / "l4e-agent@.service").read_text().replace("WatchdogSec=", "WatchdogSecs=")
    (broken / "l4e-agent@.service").write_text(agent_unit)
    shutil.copy(UNITS / "l4e-lookout.service", broken)
    root = make_verify_root(tmp_path / "root", broken)
    result = verify(root, "l4e-agent@pump-7.service", "l4e-lookout.service")
    assert "Unknown key 'WatchdogSecs'" in result.stderr
    assert "l4e-agent is not executable" in result.stderr  # no stand-in binary in this root


def exposure_scores(output: str) -> dict[str, float]:
    """{unit: score} from systemd-analyze's "Overall exposure level for UNIT: SCORE ..." lines."""
    found = re.findall(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)", output)
    return {unit: float(score) for unit, score in found}


def test_exposure_scores_within_limit() -> None:
    result = subprocess.run([str(SECURITY_SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    scores = exposure_scores(result.stdout)
    assert set(scores) == {"l4e-agent@i.service", "l4e-lookout.service"}
    assert scores["l4e-agent@i.service"] <= MAX_EXPOSURE
    assert scores["l4e-lookout.service"] <= MAX_EXPOSURE


def test_security_script_fails_above_limit() -> None:
    result = subprocess.run(
        [str(SECURITY_SCRIPT), "--max", "0.1", str(UNITS / "l4e-agent@.service")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "is above 0.1" in result.stderr
    assert len(exposure_scores(result.stdout)) == 1


def test_agent_unit_settings() -> None:
    unit = read_unit(UNITS / "l4e-agent@.service")
    assert unit["ExecStart"] == [
        "/opt/l4e-agent/venv/bin/l4e-agent run /etc/l4e-agent/%i.toml --state-dir /var/lib/l4e-agent/%i"
    ]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "StateDirectory": "l4e-agent/%i",
        "User": "l4e-agent",
        "Group": "l4e-agent",
        "SupplementaryGroups": "dialout",
        "DevicePolicy": "closed",
        "UMask": "0027",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    assert {key: unit[key][-1] for key in expected} == expected
    # The CLI exits with ConfigError.exit_code on an invalid asset file; systemd must not restart then.
    assert unit["RestartPreventExitStatus"] == [str(ConfigError.exit_code)]
    assert int(unit["WatchdogSec"][0]) >= 30
    assert sorted(unit["DeviceAllow"]) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert "PrivateDevices" not in unit  # it would hide the serial ports


def test_lookout_unit_settings() -> None:
    unit = read_unit(UNITS / "l4e-lookout.service")
    assert unit["ExecStart"] == [
        "/opt/l4e-agent/venv/bin/l4e-agent lookout serve --host 127.0.0.1 --port 8765 "
        "--state-dir /var/lib/l4e-lookout --store file:///var/lib/l4e-lookout/store/"
    ]
    assert unit["Type"] == ["simple"]
    assert unit["StateDirectory"] == ["l4e-lookout"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # linux/prctl.h; what MemoryDenyWriteExecute= applies (≥ 6.3)

MDWE_PROBE = f"""
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0, ctypes.get_errno()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("W+X mapping allowed: MDWE not in force")
except PermissionError:
    pass
import numpy, pandas, pyarrow, pyarrow.csv, asyncua, pymodbus, boto3, pydantic, serial, apscheduler
from cryptography.hazmat.primitives.asymmetric import ec
frame = pandas.DataFrame({{"v": numpy.arange(600.0)}}, index=pandas.date_range("2026-01-01", periods=600, freq="s"))
assert len(frame.resample("1min").mean()) == 10 and pyarrow.table(frame).num_rows == 600
ec.generate_private_key(ec.SECP256R1())
assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # libffi closures
import agent.runtime.logs, agent.runtime.httpd, agent.runtime.metrics, agent.runtime.sdnotify
print("ok")
"""


def _kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_GET_MDWE = 66
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


def test_python_stack_runs_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes is only safe if nothing we import needs W+X memory (a JIT would)."""
    require_or_skip(_kernel_has_mdwe(), "kernel without PR_SET_MDWE (Linux < 6.3)")
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_missing_systemd_analyze_fails_under_ci_and_skips_elsewhere(tmp_path) -> None:
    """The guard above, run for real: this module in a child pytest whose PATH has no systemd-analyze."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    base.update(PATH=str(bare), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "verify"]
    ci = subprocess.run(command, env={**base, "CI": "true"}, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ci.returncode == 1 and "under CI=true this is a failure, not a skip" in ci.stdout, ci.stdout[-2000:]
    local = subprocess.run(command, env=base, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0 and "skipped" in local.stdout and "failed" not in local.stdout, local.stdout[-2000:]
