"""A process that publishes or fetches one artifact and reports its peak memory, for test_artifacts.

    python -m tests.lookout_local.artifact_child publish DB_URL FOLDER KIND NAME CHUNK_BYTES
    python -m tests.lookout_local.artifact_child fetch DB_URL FOLDER KIND NAME [SLOW_SECS_PER_CHUNK]

Prints one JSON line: {"baseline_kib": VmHWM after imports and connecting, "peak_kib": VmHWM at the end,
"result": the version or the fetched folder}. ``SLOW_SECS_PER_CHUNK`` slows a fetch down (a sleep per chunk,
in the hash update) so that a test can kill it in the middle.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from agent.lookout_local import artifacts
from agent.lookout_local.pgstate import PgState


def vm_hwm_kib() -> int:
    """The process's peak resident set size (VmHWM of /proc/self/status), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


class SlowHash:
    """sha256 whose update sleeps: the download loop's pace, nothing else changed."""

    def __init__(self, secs: float) -> None:
        self._h = hashlib.sha256()
        self._secs = secs

    def update(self, data) -> None:
        time.sleep(self._secs)
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def main(argv: list[str]) -> None:
    action, db, folder, kind, name, *rest = argv
    state = PgState(db, pool_size=2)
    ctx = SimpleNamespace(state=state)
    state._query("SELECT 1")
    baseline = vm_hwm_kib()
    if action == "publish":
        result = artifacts.publish(ctx, kind, name, Path(folder), chunk_bytes=int(rest[0]))
    else:
        if rest:
            secs = float(rest[0])
            artifacts.hashlib = SimpleNamespace(sha256=lambda: SlowHash(secs))
        result = str(artifacts.fetch(ctx, kind, name, Path(folder)))
    print(json.dumps({"baseline_kib": baseline, "peak_kib": vm_hwm_kib(), "result": result}), flush=True)
    state.close()


if __name__ == "__main__":
    main(sys.argv[1:])
