"""Log lines for machines and people: one line per event, ``key=value`` (logfmt) or JSON.

``configure_logging(format, level)`` installs one handler on the root logger. Each record becomes::

    ts=2026-11-26T22:30:12.123Z level=warning logger=l4e.upload msg="store unavailable" asset=pump-7

or, with ``format="json"``, ``{"ts": "...", "level": "warning", "logger": "l4e.upload", "msg": "...",
"asset": "pump-7"}``. Fields passed with ``log.info("...", extra={"asset": "pump-7"})`` follow ``msg``; an
exception becomes an ``exc`` field holding the traceback, newlines escaped, so an event stays one line.

Under systemd, when stderr is the journal stream (``JOURNAL_STREAM`` names our stderr's device:inode),
the timestamp is left out (journald stamps every line) and each line starts with a ``<N>`` syslog
priority prefix, which journald strips and records, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.core.log_config import LogConfig, LogFormat, LogLevel  # the [log] model; applied here

# Libraries that log per request or per poll at INFO; they are held at WARNING (see configure_logging).
NOISY_LIBRARIES = ("asyncua", "pymodbus", "botocore", "boto3", "s3transfer", "urllib3", "apscheduler")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written as a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE_FIELDS = ("ts", "level", "logger", "msg", "exc")
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _level_name(levelno: int) -> str:
    return logging.getLevelName(levelno).lower()


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-26T22:30:12.123Z."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _EventFormatter(logging.Formatter):
    """Turns a record into an ordered field list; subclasses write the list as one line."""

    def __init__(self, *, timestamps: bool, syslog_prefix: bool) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_prefix = syslog_prefix

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self.timestamps:
            out.append(("ts", _timestamp(record.created)))
        out += [("level", _level_name(record.levelno)), ("logger", record.name), ("msg", record.getMessage())]
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                # An extra named like a core field would make the line ambiguous; keep both.
                out.append((key + "_" if key in _CORE_FIELDS else key, value))
        if record.exc_info:
            out.append(("exc", "".join(traceback.format_exception(*record.exc_info)).rstrip()))
        elif record.stack_info:
            out.append(("exc", record.stack_info))
        return out

    def format(self, record: logging.LogRecord) -> str:
        line = self.render(self.fields(record))
        if self.syslog_prefix:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line

    def render(self, fields: list[tuple[str, Any]]) -> str:
        raise NotImplementedError


def _logfmt_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in key) or "_"


def _logfmt_value(value: Any) -> str:
    """A logfmt value: bare when safe, else double-quoted with \\ \" \\n \\r \\t escaped."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text and all(c > " " and c not in '="\\' and c.isprintable() for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


class KeyValueFormatter(_EventFormatter):
    """``key=value`` pairs separated by spaces (logfmt)."""

    def render(self, fields: list[tuple[str, Any]]) -> str:
        return " ".join(f"{_logfmt_key(key)}={_logfmt_value(value)}" for key, value in fields)


class JsonFormatter(_EventFormatter):
    """One JSON object per line; values JSON cannot hold are written with ``str()``."""

    def render(self, fields: list[tuple[str, Any]]) -> str:
        return json.dumps(dict(fields), default=str, ensure_ascii=False)


def under_journald(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd set up (``JOURNAL_STREAM=<dev>:<inode>``).

    Comparing device and inode, as systemd.exec(5) advises, avoids a false positive when the variable was
    inherited but the output was redirected (``l4e-agent ... > file`` from a unit's shell).
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure_logging(
    format: LogFormat | str = LogFormat.KEYVALUE,
    level: LogLevel | str = LogLevel.INFO,
    *,
    stream: TextIO | None = None,
    timestamps: bool | None = None,
    quiet_libraries: bool = True,
) -> logging.Handler:
    """Send every log record to ``stream`` (default: stderr) as one line in ``format``, from ``level`` up.

    ``timestamps`` defaults to "not under journald" (see :func:`under_journald`), which also turns on the
    ``<N>`` priority prefix. ``quiet_libraries`` holds :data:`NOISY_LIBRARIES` at WARNING whatever the level.
    Calling again replaces the handler the previous call installed; other root handlers (pytest's
    capture) are left alone. Returns the installed handler. Raises ValueError for an unknown format/level.
    """
    config = LogConfig(format=format, level=level)
    stream = sys.stderr if stream is None else stream
    journald = under_journald(stream)
    formatter_class = JsonFormatter if config.format is LogFormat.JSON else KeyValueFormatter
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        formatter_class(timestamps=not journald if timestamps is None else timestamps, syslog_prefix=journald)
    )
    handler._l4e_installed = True  # type: ignore[attr-defined]  # marks the handler a later call replaces

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_l4e_installed", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    if quiet_libraries:
        for name in NOISY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler
