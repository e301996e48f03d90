"""tests/ci_policy.py run for real: a child pytest with its hooks loaded, on a module with an environment skip
(require_or_skip) and a plain pytest.skip, once under CI=true and once without."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODULE = """
import pytest
from tests.ci_policy import require_or_skip

def test_passes():
    assert True

def test_needs_a_tool():
    require_or_skip(False, "frobnicate missing")

def test_skips_itself():
    pytest.skip("no reason a CI would accept")
"""


def child(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(MODULE)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                           "tests.ci_policy", str(tmp_path / "test_sample.py"), *args],
                          env={**base, "PYTHONPATH": str(REPO), **env}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_under_ci_an_environment_skip_fails_and_any_skip_fails_the_run(tmp_path: Path) -> None:
    run = child(tmp_path, CI="true")
    assert run.returncode == 1, run.stdout[-2000:]
    assert "frobnicate missing: under CI=true this is a failure, not a skip" in run.stdout, run.stdout[-2000:]
    assert "1 failed, 1 passed, 1 skipped" in run.stdout, run.stdout[-2000:]
    assert "SKIPPED test_sample.py::test_skips_itself" in run.stdout, run.stdout[-2000:]


def test_a_run_whose_only_fault_is_a_skip_fails_under_ci(tmp_path: Path) -> None:
    run = child(tmp_path, "-k", "passes or itself", CI="true")
    assert "1 passed, 1 skipped" in run.stdout, run.stdout[-2000:]
    assert "skipped under CI=true (the run fails)" in run.stdout, run.stdout[-2000:]
    assert run.returncode == 1, run.stdout[-2000:]


def test_without_ci_both_are_skips_and_the_run_passes(tmp_path: Path) -> None:
    run = child(tmp_path)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "1 passed, 2 skipped" in run.stdout, run.stdout[-2000:]
    assert "frobnicate missing" in run.stdout and "skipped under CI=true" not in run.stdout
