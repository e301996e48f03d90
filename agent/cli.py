"""Command line: ``l4e-agent run|check|probe|discover|config-example|simulate|demo|lookout serve|lookout worker|...``.

Exit codes (sysexits.h; systemd/l4e-agent@.service acts on them):

- 0 success (``run``: drained after SIGTERM or --until);
- 1 failure at run time (e.g. ``probe`` found a point it cannot read, an API or store error): restarted;
- 2 usage (unknown option);
- 75 EX_TEMPFAIL: the state directory is unusable right now (full, read-only, I/O error, unreadable); the unit
  restarts the agent with a delay, forever, so it comes back once space returns;
- 78 EX_CONFIG: a configuration error, and only that (the message names the file or the environment variable,
  the key and the allowed values; or the state directory path is a file, not a folder);
  RestartPreventExitStatus=78 stops the restart loop: restarting cannot fix it.

``discover`` (not run by systemd) uses 64 EX_USAGE (a bad command line), 65 EX_DATAERR (a pattern that matches
nothing, a malformed register map) and 69 EX_UNAVAILABLE (the endpoint unreachable or refusing to be browsed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.commands.common import DEFAULT_STATE_ROOT
from agent.core.clock import parse_instant
from agent.core.errors import ConfigError, L4EAgentError, StateError

log = logging.getLogger("l4e.cli")
EX_CONFIG = ConfigError.exit_code  # 78
EX_TEMPFAIL = StateError.exit_code  # 75


def _setup_logging(level: str = "INFO") -> None:
    """One handler, one line per event (agent.logs); ``run`` replaces it with the asset file's [log] format."""
    from agent.runtime.logs import configure_logging
    configure_logging("keyvalue", level)
    for library in ("asyncua", "pymodbus"):  # log every lost connection / timeout at ERROR; we log transitions
        logging.getLogger(library).setLevel(logging.CRITICAL)


def _instant(text: str) -> float:
    try:
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r} (e.g. 2026-01-01T00:00:00Z)") from None


def _fingerprint(text: str) -> str:
    from connectors.opcua.trust import parse_fingerprint

    try:
        return parse_fingerprint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_clock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock-start", type=_instant, help="run on a simulated clock starting at this ISO 8601 "
                   "instant (demo, tests)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated clock speed (with --clock-start)")


# Sub-programs with their own parsers: main() hands them the rest of the command line. They are declared in
# build_parser() too, so that --help lists them.
SUB_PROGRAMS = {
    "simulate": "run the simulated plant (OPC-UA and Modbus servers fed by a pump model)",
    "demo": "the whole loop on one machine on a scaled clock: plant, agent, local L4E service, alarms",
}
LOOKOUT_PROGRAMS = {  # l4e-agent lookout SUBCOMMAND, each with its own parser
    "serve": "serve the L4E API on HTTP until SIGTERM",
    "worker": "run fleet-mode workers on a PostgreSQL state (--db) until SIGTERM",
    "evaluate": "judge the detector on labelled runs: pooled F1, false and missed alarm rates, events",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l4e-agent", description=__doc__.splitlines()[0].replace("``", ""),
                                     epilog="l4e-agent COMMAND --help describes each command.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"l4e-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent for one or more asset files")
    p.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    p.add_argument("--state-dir", type=Path, help=f"state folder. With one CONFIG it is that asset's own "
                   f"folder; with several, each asset uses <state-dir>/<asset>/ (default {DEFAULT_STATE_ROOT}"
                   "/<asset>)")
    p.add_argument("--until", type=_instant, help="stop (drain, exit 0) when the clock reaches this instant")
    _add_clock_args(p)

    p = sub.add_parser("check", help="validate asset files and print the resolved plan (offline)")
    p.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    p.add_argument("--at", type=_instant, help="plan as of this instant (default: now)")
    p.add_argument("--online", action="store_true", help="also probe every source once")

    p = sub.add_parser("probe", help="connect to a source and read every configured point once; OPC-UA: show "
                       "the server certificate's fingerprint and whether it is trusted")
    p.add_argument("config", type=Path)
    p.add_argument("--source", help="source name (default: all)")
    p.add_argument("--state-dir", type=Path, help="the asset's state folder, where pinned OPC-UA server "
                   "certificates are kept (default /var/lib/l4e-agent/<asset>)")
    p.add_argument("--accept-certificate", type=_fingerprint, metavar="SHA256",
                   help="with --source: trust the OPC-UA server certificate with this SHA-256 fingerprint (as "
                   "probe or the refusal prints it), replacing the pinned one; a running agent uses it at its "
                   "next connection attempt")

    sub.add_parser("config-example", help="print the example asset file generated from the config models")

    _add_discover(sub)

    p = sub.add_parser("provision", help="history → dataset → ingestion → model → running inference scheduler")
    p.add_argument("config", type=Path)
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--history", type=Path, help="history CSV (default: the asset's replay source)")
    p.add_argument("--from-windows", action="store_true", help="train on the windows the agent already uploaded "
                   "to [lookout] input")
    p.add_argument("--labels", type=Path, help="two-column headerless CSV of anomalous (start, end) ranges")
    p.add_argument("--training-range", nargs=2, type=_instant, metavar=("START", "END"))
    p.add_argument("--evaluation-range", nargs=2, type=_instant, metavar=("START", "END"))

    p = sub.add_parser("status", help="scheduler state, last executions and scores, windows and backlog")
    p.add_argument("config", type=Path)
    p.add_argument("--state-dir", type=Path, help="the asset's state folder (default /var/lib/l4e-agent/<asset>)")

    p = sub.add_parser("opcua-cert", help="make a self-signed OPC-UA client certificate and key")
    p.add_argument("--cert", type=Path, required=True, help="certificate file to write (DER)")
    p.add_argument("--key", type=Path, required=True, help="private key file to write (PEM, mode 0600)")
    p.add_argument("--application-uri", help="default urn:l4e-agent:<hostname>")
    p.add_argument("--hostname")

    p = sub.add_parser("lookout", help="the local L4E-compatible service: lookout serve | lookout worker",
                       description="The local Amazon Lookout for Equipment compatible service.")
    lookout = p.add_subparsers(dest="lookout_command", required=True, metavar="SUBCOMMAND")
    for name, text in LOOKOUT_PROGRAMS.items():
        lookout.add_parser(name, add_help=False, help=f"{text} (options: l4e-agent lookout {name} --help)"
                           ).add_argument("rest", nargs=argparse.REMAINDER)
    for name, text in SUB_PROGRAMS.items():
        sub.add_parser(name, add_help=False, help=f"{text} (options: l4e-agent {name} --help)").add_argument(
            "rest", nargs=argparse.REMAINDER)
    return parser


class _UsageParser(argparse.ArgumentParser):
    """discover's parsers: a bad command line exits 64 (EX_USAGE), as the discover commands document."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def _add_discover(sub) -> None:
    """``discover opcua`` and ``discover modbus``: write a checked asset file from a server or a register map
    (exit 64 usage, 65 bad data, 69 unreachable; nothing written on error)."""
    p = sub.add_parser("discover", help="write a checked asset file from an OPC-UA server's address space or a "
                       "Modbus register map", description="Write an asset file that check accepts as it is. "
                       "Exit codes: 64 usage, 65 bad data (nothing matched, a malformed map), 69 unreachable; "
                       "nothing is written or changed on error.")
    kinds = p.add_subparsers(dest="discover_kind", required=True, metavar="KIND", parser_class=_UsageParser)
    o = kinds.add_parser("opcua", help="browse a server from Objects and keep the numeric variables matching "
                         "the patterns")
    o.add_argument("endpoint", metavar="ENDPOINT", help="opc.tcp://host:port[/path]")
    o.add_argument("--browse", nargs="+", required=True, metavar="PATTERN",
                   help="glob over browse paths below Objects, without namespace prefixes: * ? [..] within a "
                   "name, ** across levels (e.g. 'Site/Line1/Pump*/**')")
    o.add_argument("--merge", type=Path, metavar="FILE", help="add what is new to this asset file (comments and "
                   "order kept) and write it back (or to -o)")
    o.add_argument("--component-by", choices=["parent", "pattern"], default="parent",
                   help="one component per parent folder (default) or per pattern")
    o.add_argument("--max-depth", type=int, default=12, help="levels below Objects walked at most (default 12)")
    o.add_argument("--max-nodes", type=int, default=200_000, help="nodes walked at most (default 200000)")
    o.add_argument("--timeout", type=float, default=10, help="per-request timeout, seconds (default 10)")
    o.add_argument("--policy", choices=["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
    o.add_argument("--mode", choices=["Sign", "SignAndEncrypt"])
    o.add_argument("--certificate", type=Path, help="client certificate (with --policy)")
    o.add_argument("--private-key", type=Path, help="client private key (with --policy)")
    o.add_argument("--server-certificate", type=Path, help="trusted server certificate; without it the first "
                   "one seen is pinned in <state-dir>/trust/ as probe and run do")
    o.add_argument("--state-dir", type=Path, help="where a pinned server certificate is kept")
    o.add_argument("--username")
    o.add_argument("--password-file", type=Path)
    o.add_argument("--password-env", metavar="VARIABLE")
    m = kinds.add_parser("modbus", help="a vendor register map (CSV) → asset file, with the planner's request "
                         "count")
    m.add_argument("--register-map", type=Path, required=True, metavar="MAP.csv")
    m.add_argument("--host", default="127.0.0.1", help="Modbus TCP host (default 127.0.0.1)")
    m.add_argument("--port", type=int, default=502, help="Modbus TCP port (default 502)")
    m.add_argument("--device-id", type=int, default=1, help="device (unit) id (default 1)")
    m.add_argument("--column", action="append", default=[], metavar="FIELD=HEADER",
                   help="the map's header for a field (name, address, table, type, order, scale, offset, unit, "
                   "component), e.g. --column address=Register; repeatable")
    for q in (o, m):
        q.add_argument("--asset", help="asset name (default: from the pattern or the map's file name)")
        q.add_argument("--source", default="plc", help="source name (default plc)")
        q.add_argument("--input", metavar="URL", help="[lookout] input (default file:///var/lib/l4e-agent/store/"
                       "<asset>/input/)")
        q.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: print the file; "
                       "the summary goes to stderr)")


def _cmd_discover(args) -> int:
    if args.discover_kind == "opcua":
        from agent.commands.discover_opcua import cmd_discover_opcua

        return cmd_discover_opcua(args)
    from agent.commands.discover_modbus import cmd_discover_modbus

    return cmd_discover_modbus(args)


def _sub_program(argv: list[str]) -> int | None:
    """Run a sub-program with its own parser (``lookout serve``, ``simulate``, ``demo``), or None."""
    if argv[:2] == ["lookout", "serve"]:
        from agent.lookout_local import serve_main

        return serve_main(argv[2:])
    if argv[:2] == ["lookout", "worker"]:
        from agent.lookout_local.cli import worker_main

        return worker_main(argv[2:])
    if argv[:2] == ["lookout", "evaluate"]:
        from agent.commands.evaluate import evaluate_main

        return evaluate_main(argv[2:])
    if argv[:1] == ["simulate"]:
        from agent.demo.simulate import simulate_main

        _setup_logging("INFO")
        return simulate_main(argv[1:])
    if argv[:1] == ["demo"]:
        from agent.demo.run import demo_main

        _setup_logging("WARNING")
        logging.getLogger("l4e.alarms").setLevel(logging.ERROR)  # the demo prints alarm lines itself
        return demo_main(argv[1:])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = 0  # a sub-program after the global option: l4e-agent --log-level DEBUG simulate --help
    while first < len(argv) and argv[first].startswith("--log-level"):
        first += 1 if "=" in argv[first] else 2
    code = _sub_program(argv[first:])
    if code is not None:
        return code
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "probe" and args.accept_certificate and not args.source:
        parser.error("probe --accept-certificate needs --source NAME")
    _setup_logging(args.log_level)
    try:
        if args.command == "run":
            from agent.commands.run import cmd_run

            return cmd_run(args)
        if args.command == "check":
            from agent.commands.check import cmd_check

            return cmd_check(args)
        if args.command == "probe":
            from agent.commands.check import cmd_probe

            return cmd_probe(args)
        if args.command == "provision":
            return cmd_provision(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "opcua-cert":
            from connectors.opcua.certs import make_client_certificate

            make_client_certificate(args.cert, args.key, args.application_uri, args.hostname)
            print(f"wrote {args.cert} and {args.key}; make the server trust the certificate")
            return 0
        if args.command == "discover":
            from agent.commands.asset_writer import DiscoveryError

            try:
                return _cmd_discover(args)
            except DiscoveryError as exc:
                print(f"l4e-agent discover: {exc}", file=sys.stderr)
                return exc.exit_code
        if args.command == "config-example":
            from agent.config.example import render_example

            sys.stdout.write(render_example())
            return 0
    except ConfigError as exc:
        print(f"l4e-agent: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StateError as exc:
        if exc.wrong_path:  # a file where the folder should be: the path is wrong, no restart fixes it
            print(f"l4e-agent: configuration error: state directory unusable: {exc}", file=sys.stderr)
            return EX_CONFIG
        print(f"l4e-agent: state directory unusable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL  # not a configuration error: space may come back, a remount may end
    except L4EAgentError as exc:
        print(f"l4e-agent: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `l4e-agent check … | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


def cmd_provision(args) -> int:
    from agent.config import load
    from agent.lookout.client import make_client
    from agent.lookout.provision import provision

    config = load(args.config)
    client = make_client(config.lookout.endpoint_url, config.lookout.region, config.lookout.ca_bundle)
    result = provision(config, args.config, client, dry_run=args.dry_run, history=args.history, labels=args.labels,
                       from_windows=args.from_windows,
                       training_range=tuple(args.training_range) if args.training_range else None,
                       evaluation_range=tuple(args.evaluation_range) if args.evaluation_range else None)
    if not args.dry_run:
        print(f"scheduler {result['scheduler']}: {result['status']}")
    return 0


def cmd_status(args) -> int:
    from agent.config import load
    from agent.lookout.client import make_client
    from agent.lookout.status import status

    config = load(args.config)
    state_dir = args.state_dir or config.state_dir or DEFAULT_STATE_ROOT / config.asset
    lk = config.lookout
    client = make_client(lk.endpoint_url, lk.region, lk.ca_bundle) if lk.scheduler else None
    print(status(config, state_dir, client))
    return 0
