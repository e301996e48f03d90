"""A process that runs only the fleet dispatcher (no task worker), for bench_fleet_scaling's dispatch phase:

    python tests/bench/dispatch_only.py DB_URL STATE_DIR STORE_URL CLOCK_START SPEED

prints ``dispatcher ready`` once running and stops on SIGTERM. The executions it creates stay queued."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.core.clock import ScaledClock, parse_instant  # noqa: E402
from agent.lookout_local.context import Context  # noqa: E402
from agent.lookout_local.dispatch import Dispatcher  # noqa: E402
from agent.lookout_local.fleet import deferrer  # noqa: E402
from agent.lookout_local.pgstate import PgState  # noqa: E402
from agent.lookout_local.stores import Stores  # noqa: E402


def main(db: str, state_dir: str, store: str, clock_start: str, speed: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    clock = ScaledClock.persistent(parse_instant(clock_start), float(speed), Path(state_dir) / "clock.json")
    state = PgState(db, pool_size=2)
    ctx = Context(state, Stores(store), clock, Path(state_dir))
    dispatcher = Dispatcher(ctx, deferrer(state), tick_secs=0.1)
    dispatcher.start()
    print("dispatcher ready", flush=True)
    stop.wait()
    dispatcher.stop()
    state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
