"""``l4e-agent run``: one runner per asset file, under one Agent until SIGTERM (or ``--until``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agent.commands.common import DEFAULT_STATE_ROOT, discover_all, load_all, make_clock, state_dirs


def make_runner(config, path: Path, state_dir: Path, clock):
    from agent.runtime.asset import AssetRunner

    runner = AssetRunner(config, path, state_dir, clock)
    lk = config.lookout
    if lk.scheduler or lk.output:
        from agent.lookout.client import make_client
        from agent.lookout.results import ResultsPoller

        client = make_client(lk.endpoint_url, lk.region, lk.ca_bundle) if lk.scheduler else None
        runner.results_poller = ResultsPoller(config.asset, lk, state_dir, clock, client=client)
    return runner


def cmd_run(args) -> int:
    from agent.runtime.agent import Agent
    from agent.runtime.asset import AssetRunner

    # read once (a configuration tree is ~650 B per sensor and its reading peaks at ~1.5 KB: 13 and 31 MB at
    # 20,000 tags), then completed from the schedulers with the state directories it names
    configs = load_all(args.configs)
    dirs = state_dirs(args, configs)
    configs = discover_all(configs, args.configs, dirs)
    state_root = args.state_dir or DEFAULT_STATE_ROOT
    clock = make_clock(args, state_root)
    runners = [make_runner(c, p, d, clock) for p, c, d in zip(args.configs, configs, dirs, strict=True)]

    from agent.runtime.logs import configure_logging

    configure_logging(configs[0].log.format, configs[0].log.level)
    # asyncua logs every lost connection at ERROR with a traceback and pymodbus every timeout at ERROR; the
    # connectors log each transition once themselves (first failure WARNING, recovery INFO)
    for library in ("asyncua", "pymodbus"):
        logging.getLogger(library).setLevel(logging.CRITICAL)

    def reload() -> list[AssetRunner]:
        fresh = load_all(args.configs, dirs)  # raises ConfigError: the running configuration stays
        return [make_runner(c, p, d, clock) for p, c, d in zip(args.configs, fresh, dirs, strict=True)]

    metrics_config = configs[0].metrics
    # The Agent alone holds the runners (and through them the configurations): a reload replaces them, and
    # a reference left in this frame would keep the first ones (connectors, buffers, configuration trees)
    # alive for the life of the process.
    first = [runners]
    del runners, configs

    async def _main() -> int:
        agent = Agent(first.pop(), clock, metrics_config=metrics_config, reload=reload)
        return await agent.run(until=args.until)

    return asyncio.run(_main())
