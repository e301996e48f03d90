"""``l4e-agent simulate``: serve the simulated pump (agent.demo.simulator) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.core.clock import Clock, ScaledClock, SystemClock, iso_utc, parse_instant
from agent.demo.pump_model import BEARING_WEAR_RAMP_SECS, FAULT_KINDS, PumpModel
from agent.demo.simulator import (
    DEFAULT_MODBUS_PORT,
    DEFAULT_OPCUA_PORT,
    MODBUS_DEVICE_ID,
    MODBUS_FAULT_COILS,
    PlantSimulator,
)


def _parse_fault(text: str) -> tuple[str, float, float | None]:
    """``KIND@START[/END]`` (ISO 8601 instants, UTC if no zone) → (kind, start_ts, end_ts or None)."""
    kind, sep, span = text.partition("@")
    if not sep or kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND@START[/END] with KIND in {', '.join(FAULT_KINDS)}")
    start, _, end = span.partition("/")
    try:
        return kind, parse_instant(start), parse_instant(end) if end else None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad instant in {text!r}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="l4e-agent simulate",
        description="Serve a simulated pump over OPC-UA and Modbus TCP until SIGINT/SIGTERM.",
        epilog="Faults can also be switched while running: write 1/0 to Modbus coil "
        + ", ".join(f"{coil} ({kind})" for kind, coil in MODBUS_FAULT_COILS.items())
        + f" of device {MODBUS_DEVICE_ID}.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--opcua-port", type=int, default=DEFAULT_OPCUA_PORT, help="0 picks a free port")
    p.add_argument("--modbus-port", type=int, default=DEFAULT_MODBUS_PORT, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=7, help="signal model seed (same seed, same plant)")
    p.add_argument("--clock-start", help="ISO 8601 instant the simulated timeline starts at (default: now)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    p.add_argument("--clock-state", type=Path, help="file keeping the scaled clock's anchor, so processes "
                   "given the same file, --clock-start and --speed share one timeline")
    p.add_argument("--update-interval-secs", type=float, help="clock seconds between value updates "
                   "(default: 1, or speed/10 when faster)")
    p.add_argument("--wear-ramp-hours", type=float, default=BEARING_WEAR_RAMP_SECS / 3600,
                   help="clock hours from a bearing_wear start to full severity (default %(default)g)")
    p.add_argument("--fault", type=_parse_fault, action="append", default=[], metavar="KIND@START[/END]",
                   help=f"schedule a fault ({', '.join(FAULT_KINDS)}); repeatable")
    return p


def _clock_from(args: argparse.Namespace) -> Clock:
    if args.clock_start is None and args.speed == 1.0 and args.clock_state is None:
        return SystemClock()
    start = parse_instant(args.clock_start) if args.clock_start else datetime.now(UTC).timestamp()
    if args.clock_state is not None:
        return ScaledClock.persistent(start, args.speed, args.clock_state)
    return ScaledClock(start, args.speed)


async def _serve(sim: PlantSimulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
        print(f"simulator: OPC-UA {sim.opcua_endpoint}  Modbus tcp://{sim.host}:{sim.modbus_port} device "
              f"{MODBUS_DEVICE_ID}  clock {iso_utc(sim.clock.now())} ×{sim.clock.speed:g}", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def simulate_main(argv: Sequence[str] | None = None) -> int:
    """``l4e-agent simulate``: run the plant until SIGINT/SIGTERM. Returns 0, or 1 if a port is taken.

    Bad arguments exit with status 2 through argparse. Faults: ``--fault bearing_wear@2026-11-27T00:00Z``
    (open-ended) or ``--fault cavitation@START/END``.
    """
    args = _parser().parse_args(argv)
    if args.speed <= 0:
        _parser().error("--speed must be > 0")
    if args.update_interval_secs is not None and args.update_interval_secs <= 0:
        _parser().error("--update-interval-secs must be > 0")
    if args.wear_ramp_hours <= 0:
        _parser().error("--wear-ramp-hours must be > 0")
    model = PumpModel(args.seed, bearing_wear_ramp_secs=args.wear_ramp_hours * 3600)
    for kind, start, end in args.fault:
        model.schedule_fault(kind, start, end)
    sim = PlantSimulator(model, _clock_from(args), host=args.host, opcua_port=args.opcua_port,
                         modbus_port=args.modbus_port, update_interval_secs=args.update_interval_secs)
    try:
        asyncio.run(_serve(sim))
    except OSError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0
