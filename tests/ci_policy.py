"""What the environment may excuse: on a developer's machine a test that needs root or a Debian tool (socat,
systemd-analyze, a kernel feature) may be skipped; under CI=true (.ci/run exports it, as GitHub Actions and
GitLab do) the CI machine is set up for every test, so such a skip would only hide a test that never ran.

``require_or_skip(condition, why)`` is the one way a test says "this environment cannot run me": a skip
locally, a failure under CI. The hooks below (imported into tests/conftest.py) are the backstop: under CI a run
with any skipped test, whatever skipped it, ends with a non-zero exit status and names the skipped tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """CI=true (or 1/yes): every tool and privilege a test needs is installed, nothing may be skipped."""
    return environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_or_skip(condition: object, why: str) -> None:
    """Go on if ``condition`` holds; otherwise skip the test with ``why``, or fail it under CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{why}: under CI=true this is a failure, not a skip", pytrace=False)
    pytest.skip(why)


def _skipped(config: pytest.Config) -> list[str]:
    """Node ids of the tests (and modules) skipped so far, as the terminal reporter counted them."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return [report.nodeid for report in (reporter.stats.get("skipped", []) if reporter else [])]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a run that skipped anything fails (exit status 1), even if every test that ran passed."""
    if in_ci() and _skipped(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if in_ci() and skipped:
        terminalreporter.section("skipped under CI=true (the run fails)", sep="=", red=True, bold=True)
        for nodeid in skipped:
            terminalreporter.line(f"SKIPPED {nodeid}")
