"""``l4e-agent check`` (validate asset files, print the resolved plan; offline unless --online) and
``l4e-agent probe`` (connect to a source and read every configured point once)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.commands.common import DEFAULT_STATE_ROOT, discovered, load_all
from agent.core.clock import SystemClock, iso_utc
from agent.core.errors import ConfigError, L4EAgentError


def cmd_check(args) -> int:
    from agent.config import base_dir_of
    from agent.pipeline.plan import plan_from_config
    from agent.pipeline.store import parse_location
    from agent.pipeline.windows import iso_window, object_key, window_containing, windows_between

    configs = load_all(args.configs)
    now = args.at if args.at is not None else time.time()
    for path, config in zip(args.configs, configs, strict=True):
        if config.lookout.scheduler and args.online:
            from agent.lookout.client import make_client, scheduler_status

            client = make_client(config.lookout.endpoint_url, config.lookout.region, config.lookout.ca_bundle)
            config = discovered(config, path, DEFAULT_STATE_ROOT / config.asset)
            state = scheduler_status(client, config.lookout.scheduler)
            print(f"{path}: scheduler {state.name}: {state.status}")
            if state.warning:
                print(f"  WARNING: {state.warning}")
        elif config.lookout.upload_frequency is None:
            print(f"{path}: OK (settings come from scheduler {config.lookout.scheduler}: use --online to read "
                  "them and print the plan)")
            continue
        plan = plan_from_config(config, base_dir_of(path))
        lk = config.lookout
        scheme, where, prefix = parse_location(lk.input)
        print(f"{path}: OK")
        print(f"  asset {config.asset}: {len(plan.components)} component(s), {len(plan.sensors)} sensor(s), "
              f"{len(config.sources)} source(s)")
        print(f"  windows: {lk.upload_frequency} (start, end] on the UTC hour grid, rows every "
              f"{lk.sampling_rate}, written at end + {config.window.grace_secs:g}s, scheduler wakes at end + "
              f"{lk.delay_offset_minutes} min")
        print(f"  input: {lk.input} ({'folder' if scheme == 'file' else 'bucket'} {where}, prefix {prefix!r})")
        if lk.delay_offset_minutes == 0:
            print("  WARNING: delay_offset_minutes = 0: the scheduler wakes the instant a window ends, before "
                  "the agent can have written it; every window will be late. Set it to at least 1.")
        elif config.window.grace_secs >= 60 * lk.delay_offset_minutes:
            print(f"  WARNING: grace_secs ({config.window.grace_secs:g}) ≥ the delay offset: windows are "
                  "written after the scheduler has run.")
        current = window_containing(now, plan.frequency)
        print(f"  now {iso_utc(now)}: current window {iso_window(current)}")
        for window in list(windows_between(current.start, current.start + 3 * plan.frequency, plan.frequency)):
            write_at = window.end + config.window.grace_secs
            deadline = window.end + 60 * lk.delay_offset_minutes
            names = ", ".join(repr(object_key(prefix, comp, lk.delimiter, window.start, lk.timestamp_format,
                                              lk.offset_secs)) for comp in plan.components)
            print(f"  window {iso_window(window)}: written at {iso_utc(write_at)}, deadline {iso_utc(deadline)}: "
                  f"{names}")
        for comp, sensors in plan.components.items():
            print(f"  component {comp}: Timestamp,{','.join(sensors)}")
        if args.online:
            code = probe(config, path, None)
            if code:
                return code
    return 0


def probe(config, path: Path, source: str | None, state_dir: Path | None = None, accept: str | None = None) -> int:
    from agent.config import base_dir_of
    from connectors.registry import connector_class

    selected = [s for s in config.sources if source is None or s.name == source]
    if not selected:
        raise ConfigError(f"no source named {source!r}; sources: {[s.name for s in config.sources]}",
                          file=str(path), key="sources")
    if accept is not None and selected[0].kind != "opcua":
        raise L4EAgentError(f"--accept-certificate: source {source} is a {selected[0].kind} source; only OPC-UA "
                            "sources have a server certificate")
    state_dir = state_dir or config.state_dir or DEFAULT_STATE_ROOT / config.asset
    ok = True

    async def _run():
        nonlocal ok
        for src in selected:
            conn = connector_class(src.kind)(src, SystemClock(), base_dir_of(path))
            if hasattr(conn, "use_state_dir"):
                conn.use_state_dir(state_dir)
            if accept is not None:
                print(await conn.accept_certificate(accept))
            report = await conn.probe()
            ok = ok and report.ok
            print(report.format().replace("<asset file>", str(path)))  # the accept hint, ready to paste

    asyncio.run(_run())
    return 0 if ok else 1


def cmd_probe(args) -> int:
    from agent.config import load

    config = load(args.config)
    return probe(config, args.config, args.source, args.state_dir, args.accept_certificate)

