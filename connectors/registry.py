"""The connector kinds: each [[sources]] kind's config model and its connector class.

The config models come from ``connectors/<kind>/config.py`` (or connectors.replay), which import pydantic and
agent.core only, so agent.config validates any asset file without loading a protocol library. The connector
classes are imported by kind, when a source of that kind is built: an asset without OPC-UA (or Modbus) never
loads asyncua (or pymodbus), each of which costs start-up time and resident memory. One line per kind in each
table below; no plugin loader.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from connectors.modbus.config import ModbusSourceConfig
from connectors.opcua.config import OpcUaSourceConfig
from connectors.replay import ReplaySourceConfig

# kind → model
SOURCE_MODELS: dict[str, type] = {
    "replay": ReplaySourceConfig,
    "opcua": OpcUaSourceConfig,
    "modbus": ModbusSourceConfig,
}
SourceEntry = Annotated[ReplaySourceConfig | OpcUaSourceConfig | ModbusSourceConfig, Field(discriminator="kind")]


def connector_class(kind: str) -> type:
    """The connector class of a [[sources]] kind, imported now (not at module load; see the module docs).
    A KeyError for an unknown kind (agent.config has already refused it with a clear message)."""
    if kind == "replay":
        from connectors.replay import ReplayConnector

        return ReplayConnector
    if kind == "opcua":
        from connectors.opcua.connector import OpcUaConnector

        return OpcUaConnector
    if kind == "modbus":
        from connectors.modbus.connector import ModbusConnector

        return ModbusConnector
    raise KeyError(kind)
