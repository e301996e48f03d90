"""Fleet processes for the tests: API replicas and workers as real subprocesses (``python -m
agent.lookout_local``), started and killed by the test; every start and wait is bounded."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spawn(args: list[str], ready: str, log_path: Path, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``python -m agent.lookout_local ARGS`` and wait for a stdout line starting with ``ready``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; closed when the test kills the child
    proc = subprocess.Popen([sys.executable, "-m", "agent.lookout_local", *args], stdout=subprocess.PIPE,
                            stderr=log, env=env, cwd=ROOT)
    log.close()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith(ready):
                return proc, line.strip()
    finally:
        sel.close()
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"{args[:1]} did not become ready within {timeout}s; see {log_path}:\n"
                         f"{log_path.read_text()[-3000:]}")


class Fleet:
    """Workers and replicas over one database, state folder, store and scaled clock."""

    def __init__(self, db_url: str, state_dir: Path, store_url: str, clock_start: str, speed: float,
                 lease_secs: float = 4.0) -> None:
        self.common = ["--db", db_url, "--state-dir", str(state_dir), "--store", store_url,
                       "--clock-start", clock_start, "--speed", str(speed), "--lease-secs", str(lease_secs)]
        self.logs = state_dir.parent
        self.procs: list[subprocess.Popen] = []

    def worker(self) -> subprocess.Popen:
        proc, _line = spawn(["worker", *self.common, "--tick-secs", "0.1", "--log-level", "INFO"], "worker ",
                            self.logs / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def replica(self) -> tuple[subprocess.Popen, str]:
        proc, line = spawn([*self.common, "--port", "0", "--workers", "0", "--log-level", "INFO"], "listening on ",
                           self.logs / f"replica-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc, line.split()[-1]

    def stop(self, proc: subprocess.Popen) -> int:
        proc.terminate()
        return proc.wait(30)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
