"""``l4e-agent lookout serve`` / ``python -m agent.lookout_local``: run the service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from agent.clock import ScaledClock, SystemClock, parse_instant
from agent.errors import ConfigError
from agent.lookout_local.server import LocalLookoutService
from agent.lookout_local.sigv4 import parse_access_keys

DEFAULT_PORT = 8765
DEFAULT_STATE_DIR = "/var/lib/l4e-lookout"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l4e-agent lookout serve",
                                     description="Local Amazon Lookout for Equipment compatible service")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = any)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="SQLite state, ingested data, models")
    parser.add_argument("--store", default=None,
                        help="file:///root/ (bucket b = folder root/b) or s3 (default file://<state-dir>/store/)")
    parser.add_argument("--clock-start", default=None, help="ISO 8601 start of a simulated timeline")
    parser.add_argument("--speed", type=float, default=None, help="simulated seconds per wall second")
    parser.add_argument("--access-key", action="append", default=[], metavar="ID:SECRET",
                        help="require SigV4 signatures made with this key pair (repeatable)")
    parser.add_argument("--access-keys-file", default=None, metavar="PATH",
                        help="ID:SECRET pairs, one per line (keeps secrets out of the process list)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def serve_main(argv: list[str]) -> int:
    """Run until SIGTERM/SIGINT. Exit codes: 0 after a signal, 78 (EX_CONFIG) for bad options, 1 when the
    port cannot be bound."""
    args = build_parser().parse_args(argv)
    from agent.logs import configure_logging

    configure_logging("keyvalue", args.log_level)  # one line per event, as every other command
    try:
        pairs = list(args.access_key)
        if args.access_keys_file:
            try:
                text = Path(args.access_keys_file).read_text()
            except OSError as exc:
                raise ConfigError(f"--access-keys-file: {exc}") from None
            pairs += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        keys = parse_access_keys(pairs)
        state_dir = Path(args.state_dir)
        store = args.store or (state_dir / "store").resolve().as_uri() + "/"
        if (args.clock_start is None) != (args.speed is None):
            raise ConfigError("--clock-start and --speed go together")
        if args.clock_start is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            # persisted anchor: a restart with the same options continues the same simulated timeline
            clock = ScaledClock.persistent(parse_instant(args.clock_start), args.speed, state_dir / "clock.json")
        else:
            clock = SystemClock()
        service = LocalLookoutService(state_dir, store, host=args.host, port=args.port, clock=clock,
                                      access_keys=keys)
    except (ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return ConfigError.exit_code
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            service.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
            return 1
        print(f"listening on {service.endpoint_url}", flush=True)
        print(f"serving {service.store_description}", flush=True)
        stop.wait()
        return 0
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
