"""systemd/install.sh staged into a temporary root (``--root``): the tree, re-runs, uninstall and purge.

Most tests use ``--no-venv`` on a copy of the script and units, so they take milliseconds and can change
the "source" freely. One test builds the real venv from this repository with ``--pip-args --no-deps``
(the project itself is pip-installed, its dependencies are not): a few seconds, and the console script
at the unit's ExecStart path is pip's own, which ``systemd-analyze verify`` then checks in that root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci_policy import require_or_skip

REPO = Path(__file__).resolve().parents[2]
UNITS = ("l4e-agent@.service", "l4e-lookout.service")
EXAMPLE = "# example asset file for the install test\nasset = 'pump-7'\n"
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def run_install(
    source: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(source / "systemd" / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def install_ok(source: Path, *args: str, **kwargs) -> str:
    result = run_install(source, *args, **kwargs)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A minimal source tree: the script, the units and an example asset file."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "systemd", src / "systemd")
    (src / "config").mkdir()
    (src / "config" / "example.toml").write_text(EXAMPLE)
    return src


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_staged_install_tree(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install_ok(source, "--root", str(root), "--no-venv")
    assert f"staging into {root}" in out
    for unit in UNITS:
        installed = root / "etc/systemd/system" / unit
        assert installed.read_text() == (source / "systemd" / unit).read_text()
        assert mode(installed) == 0o644
    assert (root / "etc/l4e-agent/example.toml").read_text() == EXAMPLE
    assert mode(root / "etc/l4e-agent") == 0o750
    assert mode(root / "etc/l4e-agent/example.toml") == 0o640
    assert mode(root / "var/lib/l4e-agent") == 0o750
    assert (root / "opt/l4e-agent").is_dir()
    assert not (root / "opt/l4e-agent/venv").exists()  # --no-venv


def test_destdir_works_like_root(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "destdir"
    install_ok(source, "--no-venv", env={"DESTDIR": str(root)})
    assert (root / "etc/systemd/system/l4e-agent@.service").is_file()


def test_rerun_upgrades_units_and_keeps_configuration(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    install_ok(source, "--root", str(root), "--no-venv")
    edited = "asset = 'pump-7'  # edited on the gateway\n"
    (root / "etc/l4e-agent/example.toml").write_text(edited)
    new_unit = (source / "systemd/l4e-agent@.service").read_text() + "# release 2\n"
    (source / "systemd/l4e-agent@.service").write_text(new_unit)

    out = install_ok(source, "--root", str(root), "--no-venv")
    assert "keeping existing /etc/l4e-agent/example.toml" in out
    assert (root / "etc/l4e-agent/example.toml").read_text() == edited
    assert (root / "etc/systemd/system/l4e-agent@.service").read_text() == new_unit


def test_uninstall_keeps_data_and_purge_removes_it(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    install_ok(source, "--root", str(root), "--no-venv")
    # What a running gateway accumulates: an asset file, instance state, an enabled instance.
    (root / "etc/l4e-agent/pump-7.toml").write_text("asset = 'pump-7'\n")
    (root / "var/lib/l4e-agent/pump-7").mkdir()
    (root / "var/lib/l4e-agent/pump-7/spool.arrow").write_bytes(b"data")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "l4e-agent@pump-7.service").symlink_to("/etc/systemd/system/l4e-agent@.service")
    (root / "opt/l4e-agent/venv/bin").mkdir(parents=True)

    out = install_ok(source, "--root", str(root), "--uninstall")
    assert "kept /etc/l4e-agent" in out
    for unit in UNITS:
        assert not (root / "etc/systemd/system" / unit).exists()
    assert not (wants / "l4e-agent@pump-7.service").is_symlink()
    assert not (root / "opt/l4e-agent").exists()
    assert (root / "etc/l4e-agent/pump-7.toml").is_file()
    assert (root / "var/lib/l4e-agent/pump-7/spool.arrow").read_bytes() == b"data"

    install_ok(source, "--root", str(root), "--uninstall")  # twice is fine
    install_ok(source, "--root", str(root), "--uninstall", "--purge")
    assert not (root / "etc/l4e-agent").exists()
    assert not (root / "var/lib/l4e-agent").exists()


def test_usage_errors(source: Path, tmp_path: Path) -> None:
    result = run_install(source, "--root", str(tmp_path / "r"), "--frobnicate")
    assert result.returncode == 1 and "unknown argument: --frobnicate" in result.stderr
    result = run_install(source, "--root", str(tmp_path / "r"), "--purge")
    assert result.returncode == 1 and "--purge only goes with --uninstall" in result.stderr
    result = run_install(source, "--root", str(tmp_path / "r"), "--python", "/nonexistent/python3")
    assert result.returncode == 1 and "no pyproject.toml" in result.stderr
    (source / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    result = run_install(source, "--root", str(tmp_path / "r"), "--python", "/nonexistent/python3")
    assert result.returncode == 1 and "older than Python 3.11" in result.stderr
    assert not (tmp_path / "r").exists()  # checked before anything was written
    assert "--root DIR" in install_ok(source, "--help")


def test_restart_backoff_drop_in_only_where_systemd_knows_it(source: Path, tmp_path: Path) -> None:
    """RestartSteps=/RestartMaxDelaySec= exist from systemd 254: installed there, never on older ones."""
    root = tmp_path / "root"
    dropin = root / "etc/systemd/system/l4e-agent@.service.d/10-restart-backoff.conf"
    out = install_ok(source, "--root", str(root), "--no-venv", "--systemd-version", "254")
    assert "restart delay grows" in out
    assert dropin.read_text() == (source / "systemd/restart-backoff.conf").read_text()
    assert mode(dropin) == 0o644
    out = install_ok(source, "--root", str(root), "--no-venv", "--systemd-version", "252")  # a downgrade
    assert "fixed restart delay" in out and not dropin.exists()
    install_ok(source, "--root", str(root), "--no-venv", "--systemd-version", "255")
    install_ok(source, "--root", str(root), "--uninstall")
    assert not dropin.parent.exists()  # ours removed; the folder held nothing of the administrator's


def test_missing_example_is_reported_not_fatal(source: Path, tmp_path: Path) -> None:
    (source / "config" / "example.toml").unlink()
    out = install_ok(source, "--root", str(tmp_path / "root"), "--no-venv")
    assert "no config/example.toml" in out
    assert list((tmp_path / "root/etc/l4e-agent").iterdir()) == []


def test_real_venv_install_and_upgrade(tmp_path: Path) -> None:
    """pip-installs this repository (without dependencies) into the staged venv, twice."""
    root = tmp_path / "root"
    had_build_dir = (REPO / "build").exists()
    args = ("--root", str(root), "--python", sys.executable, "--pip-args", "--no-deps")
    out = install_ok(REPO, *args, timeout=180)
    assert "installed l4e-agent 0.1.0 into /opt/l4e-agent/venv" in out

    venv = root / "opt/l4e-agent/venv"
    script = venv / "bin/l4e-agent"
    assert os.access(script, os.X_OK)
    # The shebang, or distlib's /bin/sh trampoline for paths longer than the kernel allows, names the venv.
    assert f"{venv}/bin/python" in script.read_text()
    assert "from agent.cli import main" in script.read_text()
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent, importlib.metadata as m; "
         "print(m.version('l4e-agent'), agent.__file__)"],
        capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path,
    )  # fmt: skip
    version, location = probe.stdout.split()
    assert version == "0.1.0" and location.startswith(str(venv))
    assert (REPO / "build").exists() == had_build_dir  # built from a copy, the checkout stays clean

    has_verify = shutil.which("systemd-analyze") is not None
    if has_verify:
        host_units = next(d for d in HOST_UNIT_DIRS if d.is_dir())
        shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
        verify = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", "l4e-agent@pump-7.service", "l4e-lookout.service"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (verify.returncode, verify.stderr) == (0, "")

    out = install_ok(REPO, *args, timeout=180)  # upgrade in place
    assert "created venv" not in out and "installed l4e-agent 0.1.0" in out
    # everything else ran; the verify step did not: said as a skip locally, a failure under CI
    require_or_skip(has_verify, "systemd-analyze missing: the installed units were not verified")
