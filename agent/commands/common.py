"""What the asset commands share: the default state folder, the clock, and loading every asset file."""

from __future__ import annotations

from pathlib import Path

from agent.core.clock import Clock, ScaledClock, SystemClock
from agent.core.errors import ConfigError

DEFAULT_STATE_ROOT = Path("/var/lib/l4e-agent")


def make_clock(args, state_root: Path | None) -> Clock:
    if getattr(args, "clock_start", None) is None:
        if getattr(args, "speed", 1.0) != 1.0:
            raise ConfigError("--speed needs --clock-start")
        return SystemClock()
    if args.speed <= 0:
        raise ConfigError("--speed must be > 0")
    if state_root is None:
        return ScaledClock(args.clock_start, args.speed)
    return ScaledClock.persistent(args.clock_start, args.speed, state_root / "clock.json")


def discovered(config, path: Path, state_dir: Path):
    """Fill the [lookout] settings from the scheduler when the file names one (cached for outages)."""
    if config.lookout.scheduler is None:
        return config
    from agent.lookout.client import discover, make_client

    lk = config.lookout
    return discover(config, path, state_dir, make_client(lk.endpoint_url, lk.region, lk.ca_bundle))


def load_all(paths: list[Path], state_dirs: list[Path] | None = None):
    from agent.config import load

    configs = [load(p) for p in paths]  # every file validated before anything starts
    if state_dirs is not None:
        configs = discover_all(configs, paths, state_dirs)
    assets = [c.asset for c in configs]
    dupes = {a for a in assets if assets.count(a) > 1}
    if dupes:
        raise ConfigError(f"asset names must be unique across files, repeated: {sorted(dupes)}", key="asset")
    return configs


def discover_all(configs: list, paths: list[Path], state_dirs: list[Path]) -> list:
    """``configs`` (as ``load_all`` returned them) with their [lookout] settings filled from the schedulers."""
    return [discovered(c, p, d) for c, p, d in zip(configs, paths, state_dirs, strict=True)]


def state_dirs(args, configs) -> list[Path]:
    """One asset (as systemd runs it: StateDirectory=l4e-agent/%i): --state-dir is its own folder."""
    state_root = args.state_dir or DEFAULT_STATE_ROOT
    single = args.state_dir is not None and len(configs) == 1
    return [c.state_dir or (state_root if single else state_root / c.asset) for c in configs]
