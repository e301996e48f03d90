"""Exit codes as systemd acts on them: a state folder on a full or read-only filesystem exits 75 (EX_TEMPFAIL,
restarted with a delay, forever), a configuration error exits 78 (EX_CONFIG, never restarted), and the agent
runs again once the space is back. ``status`` on a state folder it cannot read exits non-zero with the reason.

Real faults: the state folder lives on a small tmpfs mounted for the test (the suite runs as root), filled
with a file until ENOSPC, or remounted read-only. The restart decision is systemd's rule for Restart=on-failure
(systemd.service(5)) applied to the settings read from systemd/l4e-agent@.service as shipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.core.errors import ConfigError, StateError
from tests.ci_policy import require_or_skip

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "l4e-agent@.service"

ASSET = """\
asset = "pump-07"
[lookout]
upload_frequency = "PT5M"
delay_offset_minutes = 2
sampling_rate = "PT1M"
input = "file://{store}/"
[components]
pump = ["flow"]
[[sources]]
name = "history"
kind = "replay"
path = "history.csv"
"""

def require_root(why: str) -> None:
    """Only the tests that need root are skipped without it, and never under CI (the CI runs as root)."""
    require_or_skip(os.geteuid() == 0, f"{why} needs root")


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/fs, unmounted afterwards."""
    require_root("mounting a tmpfs")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)], check=True, timeout=10)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=10)


def fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the filesystem refuses (ENOSPC); returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: no failing flush at close
        chunk = b"\0" * 4096
        for _ in range(10_000):  # bounded: 40 MiB, far more than the 256 KiB tmpfs holds
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == 28  # ENOSPC
                break
        else:
            pytest.fail("the tmpfs never filled up")
    return filler


def asset(tmp_path: Path) -> Path:
    (tmp_path / "history.csv").write_text("Timestamp,flow\n2020-01-01T00:00:00Z,1.0\n")
    path = tmp_path / "asset.toml"
    path.write_text(ASSET.format(store=tmp_path / "store"))
    return path


def run_agent(config: Path, state_dir: Path, *, seconds: float = 0.0) -> subprocess.CompletedProcess[str]:
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds + 2))
    return subprocess.run([sys.executable, "-m", "agent", "run", str(config), "--state-dir", str(state_dir),
                           "--until", until], capture_output=True, text=True, timeout=90, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def read_unit(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def systemd_restarts(unit: dict[str, list[str]], code: int) -> bool:
    """Whether systemd restarts a service whose main process exited with ``code`` (systemd.service(5))."""
    def codes(key: str) -> set[int]:
        return {int(c) for value in unit.get(key, []) for c in value.split() if c.isdigit()}

    if code in codes("RestartForceExitStatus"):
        return True
    if code in codes("RestartPreventExitStatus"):
        return False
    clean = code == 0 or code in codes("SuccessExitStatus")
    policy = unit.get("Restart", ["no"])[-1]
    return {"always": True, "on-failure": not clean, "on-abnormal": False, "on-abort": False,
            "on-watchdog": False, "on-success": clean, "no": False}[policy]


def test_full_state_filesystem_exits_75_and_runs_once_space_returns(tmp_path, small_fs):
    config = asset(tmp_path)
    filler = fill(small_fs)
    full = run_agent(config, small_fs / "state")
    assert full.returncode == StateError.exit_code == 75, full.stderr
    assert "state directory unusable" in full.stderr and "No space left on device" in full.stderr
    assert "Traceback" not in full.stderr
    assert systemd_restarts(read_unit(UNIT), full.returncode)

    filler.unlink()  # the space comes back: the restarted agent runs and drains normally
    again = run_agent(config, small_fs / "state", seconds=1)
    assert again.returncode == 0, again.stderr
    assert (small_fs / "state" / "spool").is_dir()


def test_read_only_state_filesystem_exits_75(tmp_path, small_fs):
    config = asset(tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, timeout=10)
    proc = run_agent(config, small_fs / "state")
    assert proc.returncode == 75, proc.stderr
    assert "state directory unusable" in proc.stderr and "Read-only file system" in proc.stderr
    assert systemd_restarts(read_unit(UNIT), proc.returncode)


def test_configuration_error_exits_78_and_is_not_restarted(tmp_path):
    config = asset(tmp_path)
    config.write_text(config.read_text().replace('"PT5M"', '"PT7M"'))
    proc = run_agent(config, tmp_path / "state")
    assert proc.returncode == ConfigError.exit_code == 78, proc.stderr
    assert "lookout.upload_frequency" in proc.stderr
    assert not systemd_restarts(read_unit(UNIT), proc.returncode)


def test_unit_retries_a_temporary_failure_forever_with_a_delay():
    unit = read_unit(UNIT)
    assert unit["RestartPreventExitStatus"] == ["78"]  # only the configuration error stops the restarts
    assert "75" not in " ".join(unit.get("SuccessExitStatus", []))
    assert unit["StartLimitIntervalSec"] == ["0"]  # no start limit: never give up after a burst of failures
    assert int(unit["RestartSec"][-1]) >= 5  # spaced, not a tight loop
    for code, expected in [(0, False), (1, True), (75, True), (78, False)]:
        assert systemd_restarts(unit, code) is expected, code


def status(config: Path, state_dir: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "agent", "status", str(config), "--state-dir",
                           str(state_dir)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_status_refuses_a_state_dir_that_is_a_regular_file(tmp_path):
    config = asset(tmp_path)
    (tmp_path / "state").write_text("not a folder\n")
    proc = status(config, tmp_path / "state")
    assert proc.returncode == 78, proc.stdout  # a wrong path: like a typo in the asset file, no retry fixes it
    assert f"state directory unusable: {tmp_path / 'state'} is not a directory" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_status_refuses_an_unreadable_state_dir(tmp_path):
    """Run as an unprivileged user (root reads anything): the state folder is root's, mode 0700."""
    require_root("switching to an unprivileged user (setpriv --reuid)")
    folder = Path(tempfile.mkdtemp(prefix="l4e-status-"))
    try:
        folder.chmod(0o755)
        config = asset(folder)
        (folder / "state" / "outbox").mkdir(parents=True, mode=0o700)
        (folder / "state").chmod(0o700)
        proc = status(config, folder / "state", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        assert proc.returncode == 75, proc.stdout
        assert f"cannot read {folder / 'state'}: Permission denied" in proc.stderr
        (folder / "state").chmod(0o755)  # the folder readable, its outbox not
        proc = status(config, folder / "state", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        assert proc.returncode != 0 and f"cannot read {folder / 'state' / 'outbox'}" in proc.stderr
    finally:
        shutil.rmtree(folder)


def test_status_on_a_missing_or_good_state_dir_exits_0(tmp_path):
    config = asset(tmp_path)
    missing = status(config, tmp_path / "state")
    assert missing.returncode == 0, missing.stderr
    assert "does not exist yet" in missing.stdout
    (tmp_path / "state" / "outbox").mkdir(parents=True)
    good = status(config, tmp_path / "state")
    assert good.returncode == 0, good.stderr
    assert "upload backlog: 0 window(s)" in good.stdout and "does not exist" not in good.stdout
