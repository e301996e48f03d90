"""What an asset's connectors are wired to besides the spool: the write_back hooks' writers (through the
named source), the history backfill (OPC-UA ``backfill``), and the state a connector keeps itself.

Each protocol's write-back is imported when a hook needs it, and the backfill's re-closing only when a source
backfills: an asset without them never loads that code.
"""

from __future__ import annotations

from pathlib import Path

from agent.config import AssetConfig


def connector_writer_factory(config: AssetConfig, base_dir: Path, state_dir: Path | None = None):
    """The write_back hooks' writers, through the connectors of the named [[sources]] entry (and its trust)."""
    sources = {s.name: s for s in config.sources}

    def factory(hook):
        source = sources[hook.source]
        if hook.protocol == "modbus":
            from connectors.modbus.write_back import write_modbus

            device_id = 1 if hook.device_id is None else hook.device_id

            async def write(value) -> None:
                await write_modbus(source, device_id, hook.table, hook.address, value, type=hook.type,
                                   order=hook.order)
        else:
            from connectors.opcua.write_back import write_opcua

            async def write(value) -> None:
                await write_opcua(source, hook.node_id, value, base_dir, state_dir)

        return write

    return factory


def use_state_dir(connectors, state_dir: Path) -> None:
    """Give each connector that keeps state of its own (OPC-UA: the pinned server certificate) the directory."""
    for conn in connectors:
        if hasattr(conn, "use_state_dir"):
            conn.use_state_dir(state_dir)


def attach_backfill(connectors, state_dir: Path, spool, closer, now):
    """History backfill (OPC-UA ``backfill``): the connectors write through the spool and re-close windows
    already written (agent.pipeline.reclose). Returns the Keeper of those windows; None when no source
    backfills. ``now``: the clock's now (clock seconds)."""
    fillers = [c for c in connectors if getattr(c, "backfill", None) is not None]
    if not fillers:
        return None
    from agent.pipeline.reclose import Keeper, SpoolBackfillPort

    def reaches(_window) -> bool:  # could a backfill still bring readings of a window written now?
        return any(c.backfill.may_reach(c.stats.connected) for c in fillers)

    keeper = Keeper(state_dir / "kept", closer, reaches, max(c.backfill.settings.max_age_secs for c in fillers), now)
    port = SpoolBackfillPort(spool, closer, keeper)
    for conn in fillers:
        conn.use_backfill(port, state_dir)
    return keeper
