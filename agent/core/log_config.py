"""The ``[log]`` table of an asset file: line format and level (a settings model, no logging machinery).

In agent.core so that agent.config (which validates it) imports nothing of agent.runtime; agent.runtime.logs
applies it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LogFormat(StrEnum):
    KEYVALUE = "keyvalue"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogConfig(BaseModel):
    """The ``[log]`` table of an asset file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: LogFormat = Field(
        LogFormat.KEYVALUE,
        description="Line format: 'keyvalue' (logfmt, for people and grep) or 'json' (for log shippers).",
    )
    level: LogLevel = Field(LogLevel.INFO, description="Lowest level written: 'debug', 'info', 'warning' or 'error'.")

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # "INFO" and "info" both appear in the wild (CLI flags, Python habits); accept either.
        return value.lower() if isinstance(value, str) else value
