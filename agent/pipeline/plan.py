"""The closer's plan from an asset's configuration: what ``l4e-agent check`` shows and the runtime builds on.

Kept in the data path (not the runtime) so that checking a file imports neither the connectors nor the
scheduler.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from agent.pipeline.closer import WindowPlan

if TYPE_CHECKING:
    from agent.config import AssetConfig


def holds_from_config(config: AssetConfig, base_dir: Path) -> dict[str, float]:
    """Sensor → seconds a reading holds (rule 2a): unlimited (or the sensor's ``max_age_secs``) for sources that
    hold values; sensors of sampled sources are absent (they do not hold)."""
    holds: dict[str, float] = {}
    for src in config.sources:
        if not src.holds_values:
            continue
        for sensor in src.sensors(base_dir):
            cfg = config.sensors.get(sensor)
            holds[sensor] = cfg.max_age_secs if cfg is not None and cfg.max_age_secs else math.inf
    return holds


def plan_from_config(config: AssetConfig, base_dir: Path) -> WindowPlan:
    """The closer's plan; ``base_dir`` is the asset file's folder (relative source paths resolve there)."""
    lk = config.lookout
    return WindowPlan(
        asset=config.asset, frequency=lk.frequency_secs, rate=lk.rate_secs,
        components={c: list(s) for c, s in config.components.items()},
        aggs={s: config.agg_for(s) for s in config.all_sensors()}, fill_limit=config.window.fill_limit,
        grace_secs=config.window.grace_secs, delimiter=lk.delimiter, timestamp_format=lk.timestamp_format,
        offset_secs=lk.offset_secs, timestamp_column=lk.timestamp_column,
        budget_bytes=config.spool.budget_bytes, when_full=config.spool.when_full,
        holds=holds_from_config(config, base_dir))
