"""``l4e-agent lookout serve`` / ``python -m agent.lookout_local``: run the service until SIGTERM/SIGINT;
``l4e-agent lookout worker`` / ``python -m agent.lookout_local worker``: a fleet worker (PostgreSQL only)."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading
from pathlib import Path

from agent.core.clock import ScaledClock, SystemClock, parse_instant
from agent.core.errors import ConfigError
from agent.lookout_local.server import LocalLookoutService, tls_context
from agent.lookout_local.sigv4 import parse_access_keys
from agent.runtime.metrics_config import is_loopback

DEFAULT_PORT = 8765
DEFAULT_STATE_DIR = "/var/lib/l4e-lookout"
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")  # us-east-1, eu-central-2, us-gov-west-1, …
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
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="off loopback, serve without access keys anyway (anyone reaching the port may "
                             "delete models; a warning is logged at every start)")
    parser.add_argument("--tls-cert", default=None, metavar="PEM",
                        help="serve HTTPS with this certificate (chain); with --tls-key")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--region", default="us-east-1",
                        help="the region this service is (ARNs; signatures must be scoped to it; default us-east-1)")
    parser.add_argument("--log-level", default="INFO")
    _fleet_options(parser)
    parser.add_argument("--workers", type=int, choices=(0, 1), default=1,
                        help="with --db: 1 runs a worker in this process too (default), 0 serves the API only")
    return parser


def _fleet_options(parser: argparse.ArgumentParser, *, worker: bool = False) -> None:
    parser.add_argument("--db", default=None, metavar="postgresql://USER@HOST:PORT/DB",
                        help="PostgreSQL state, queue and leases shared by every replica and worker "
                             + ("(required: a worker has no state of its own)" if worker
                                else "(default: SQLite in --state-dir)"))
    parser.add_argument("--lease-secs", type=float, default=None,
                        help="with --db: a worker silent this long loses its task to another (default 30)")
    parser.add_argument("--keep-executions-days", type=float, default=None, metavar="DAYS",
                        help="delete finished inference executions older than DAYS (default: keep them all; "
                             "the results objects stay in the bucket)")


def build_worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l4e-agent lookout worker",
                                     description="A fleet worker of the local L4E service: ingestion, training and "
                                                 "scheduled inference tasks from PostgreSQL")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="this host's copies of the datasets and models (fetched from PostgreSQL)")
    parser.add_argument("--store", default=None, help="as for serve")
    parser.add_argument("--clock-start", default=None, help="as for serve (the same anchor file in --state-dir)")
    parser.add_argument("--speed", type=float, default=None, help="as for serve")
    parser.add_argument("--tick-secs", type=float, default=0.2, help="dispatcher period in wall seconds")
    parser.add_argument("--log-level", default="INFO")
    _fleet_options(parser, worker=True)
    return parser


def _clock_and_store(args) -> tuple[object, str]:
    """The clock and store URL the options name; also checks the fleet options (ConfigError)."""
    if args.lease_secs is not None and not args.lease_secs > 0:
        raise ConfigError(f"--lease-secs {args.lease_secs}: must be > 0 seconds")
    if args.keep_executions_days is not None and not args.keep_executions_days > 0:
        raise ConfigError(f"--keep-executions-days {args.keep_executions_days}: must be > 0 days")
    if getattr(args, "tick_secs", 1.0) <= 0:
        raise ConfigError(f"--tick-secs {args.tick_secs}: must be > 0 seconds")
    state_dir = Path(args.state_dir)
    store = args.store or (state_dir / "store").resolve().as_uri() + "/"
    if (args.clock_start is None) != (args.speed is None):
        raise ConfigError("--clock-start and --speed go together")
    if args.clock_start is None:
        return SystemClock(), store
    state_dir.mkdir(parents=True, exist_ok=True)
    # persisted anchor: a restart with the same options continues the same simulated timeline
    return ScaledClock.persistent(parse_instant(args.clock_start), args.speed, state_dir / "clock.json"), store


def _until_signal() -> tuple[threading.Event, dict]:
    """An event set by SIGTERM/SIGINT, and the handlers it replaced (to put back)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    return stop, previous


def worker_main(argv: list[str]) -> int:
    """Run a FleetWorker until SIGTERM/SIGINT (the running task finishes first). Exit 0 after a signal, 78
    for bad options (--db is required)."""
    args = build_worker_parser().parse_args(argv)
    from agent.runtime.logs import configure_logging
    configure_logging("keyvalue", args.log_level)  # one line per event, as every other command
    from agent.lookout_local import fleet, migrate
    from agent.lookout_local.context import Context
    from agent.lookout_local.pgstate import PgState
    from agent.lookout_local.stores import Stores

    try:
        if not args.db:
            raise ConfigError("lookout worker: --db postgresql://… is required (workers share PostgreSQL state)")
        migrate.sqlalchemy_url(args.db)  # refuses another scheme with the allowed form
        clock, store = _clock_and_store(args)
        stores = Stores(store)
    except (ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return ConfigError.exit_code
    try:
        migrate.upgrade(args.db)
    except migrate.database_errors() as exc:  # unreachable or refusing: nothing started yet, the unit restarts us
        log.error("cannot prepare the database: %s: %s", type(exc).__name__, exc)
        return 1
    stop, previous = _until_signal()
    state = PgState(args.db, pool_size=4)
    ctx = Context(state, stores, clock, Path(args.state_dir), keep_executions_days=args.keep_executions_days)
    worker = fleet.FleetWorker(ctx, args.db, tick_secs=args.tick_secs,
                               lease_secs=args.lease_secs or fleet.DEFAULT_LEASE_SECS).start()
    print(f"worker {worker.name} running", flush=True)
    try:
        stop.wait()
        return 0
    finally:
        worker.stop()
        state.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _tls(args):
    """The server TLS context --tls-cert/--tls-key name, or None without them (ConfigError for one alone)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return tls_context(args.tls_cert, args.tls_key)


def _exposure(args, keys: dict[str, str], tls: bool) -> None:
    """Who may call the service. Off loopback: access keys are required (ConfigError naming the flags) unless
    --allow-anonymous, which warns at every start; keys over plain HTTP off loopback warn once, at start."""
    if is_loopback(args.host):
        return
    if not keys and not args.allow_anonymous:
        raise ConfigError(f"--host {args.host!r} is reachable from the network: give --access-key ID:SECRET or "
                          "--access-keys-file PATH (clients then sign with them), or --allow-anonymous to let "
                          "anyone who reaches the port read, change and delete datasets, models and schedulers")
    if not keys:
        log.warning("serving %s without access keys (--allow-anonymous): anyone who reaches this port may read, "
                    "change and delete datasets, models and schedulers", args.host)
    elif not tls:
        log.warning("access keys in use over plain HTTP on %s: requests and responses travel readable on the "
                    "network (the secrets do not, but a captured request can be replayed for 15 min); "
                    "serve TLS with --tls-cert and --tls-key", args.host)


def serve_main(argv: list[str]) -> int:
    """Run until SIGTERM/SIGINT. Exit codes: 0 after a signal, 78 (EX_CONFIG) for bad options, 1 when the
    port cannot be bound."""
    args = build_parser().parse_args(argv)
    from agent.runtime.logs import configure_logging
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
        if not _REGION.match(args.region):
            raise ConfigError(f"--region {args.region!r}: expected a region name such as us-east-1 or eu-west-1")
        tls = _tls(args)
        _exposure(args, keys, tls is not None)
        if args.db:
            from agent.lookout_local.migrate import sqlalchemy_url

            sqlalchemy_url(args.db)  # refuses another scheme with the allowed form
        clock, store = _clock_and_store(args)
        service = LocalLookoutService(Path(args.state_dir), store, host=args.host, port=args.port, clock=clock,
                                      access_keys=keys, region=args.region, db_url=args.db,
                                      embedded_worker=args.workers == 1, lease_secs=args.lease_secs,
                                      keep_executions_days=args.keep_executions_days, tls=tls)
    except (ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return ConfigError.exit_code
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    database_errors: tuple[type[Exception], ...] = ()
    if args.db:
        from agent.lookout_local.migrate import database_errors as fleet_errors

        database_errors = fleet_errors()
    try:
        try:
            service.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
            return 1
        except database_errors as exc:  # --db: the database unreachable at start
            log.error("cannot prepare the database: %s: %s", type(exc).__name__, exc)
            return 1
        print(f"listening on {service.endpoint_url}", flush=True)
        print(f"serving {service.store_description}", flush=True)
        stop.wait()
        return 0
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
