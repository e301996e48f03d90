"""A new user's first hour: what a fresh clone shows them is true (version, help, ports, files named, what is
installed passes check)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from agent import __version__
from agent.lookout_local.cli import DEFAULT_PORT

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, **kwargs)


def test_version():
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"l4e-agent {__version__}"


def test_worker_help_says_db_is_required():
    result = cli("lookout", "worker", "--help")
    text = " ".join(result.stdout.split())
    assert "(required: a worker has no state of its own)" in text
    assert "default: SQLite" not in text
    assert cli("lookout", "worker").returncode == 78  # as the help says: no --db, no worker


def _shipped_text() -> dict[Path, str]:
    paths = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "systemd").iterdir()),
             *sorted((REPO / "config").rglob("*.toml")), *sorted((REPO / "agent").rglob("*.py"))]
    return {p: p.read_text() for p in paths if p.is_file()}


def test_the_local_service_port_is_the_same_everywhere():
    ports = []
    for path, text in _shipped_text().items():
        for match in re.finditer(r"lookout serve[^\n]*?--port (\d+)", text):
            ports.append((path.name, int(match.group(1))))
        for line in text.splitlines():  # an address given for the local service (the agent's endpoint_url)
            if "local service" in line or "endpoint_url" in line or "l4e-lookout" in line:
                ports.extend((path.name, int(p)) for p in re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)", line))
    assert ("l4e-lookout.service", DEFAULT_PORT) in ports
    assert ("example.toml", DEFAULT_PORT) in ports
    assert [p for p in ports if p[1] != DEFAULT_PORT] == []


def test_every_config_file_named_exists():
    named = set()
    for text in _shipped_text().values():
        named.update(re.findall(r"\bconfig/[\w./-]+\.(?:toml|csv)\b", text))
    assert "config/example.toml" in named
    assert sorted(n for n in named if not (REPO / n).is_file()) == []


def test_readme_lists_what_make_test_installs():
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("system-deps:", 1)[1].split("\n\n", 1)[0]
    packages = set(re.findall(r'missing="\$\$missing (\S+)"', target))
    assert {"socat", "chromium", "postgresql", "nodejs", "npm"} <= packages
    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = readme.split("`make test` also installs", 1)[1].split(").", 1)[0]
    assert sorted(p for p in packages if f"`{p}`" not in sentence) == []
    assert "node-opcua" in sentence  # the npm part of system-deps


def test_example_config_is_tracked_not_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return  # an unpacked release: nothing to ask git
    ignored = subprocess.run(["git", "check-ignore", "-q", "config/example.toml"], cwd=REPO)
    assert ignored.returncode == 1  # not ignored


def test_what_install_sh_installs_passes_check(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "systemd", src / "systemd")
    shutil.copytree(REPO / "config", src / "config")
    root = tmp_path / "root"
    result = subprocess.run(["bash", str(src / "systemd" / "install.sh"), "--root", str(root), "--no-venv"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    installed = root / "etc/l4e-agent/example.toml"
    assert installed.is_file() and (root / "etc/l4e-agent/replay/history.csv").is_file()
    check = cli("check", str(installed), "--at", "2026-01-01T00:00:00Z")
    assert check.returncode == 0, check.stderr
    assert f"{installed}: OK" in check.stdout
