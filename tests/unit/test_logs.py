"""Log line shapes: logfmt and JSON, one line per event, journald-aware."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.runtime.logs import NOISY_LIBRARIES, LogConfig, LogFormat, LogLevel, configure_logging

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the next test."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {name: logging.getLogger(name).level for name in NOISY_LIBRARIES}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lib_level in library_levels.items():
        logging.getLogger(name).setLevel(lib_level)


def test_keyvalue_lines() -> None:
    out = io.StringIO()
    configure_logging("keyvalue", "info", stream=out)
    log = logging.getLogger("l4e.upload")
    log.debug("not shown")
    log.info("uploaded window", extra={"asset": "pump-7", "bytes": 1234, "ok": True})
    log.warning('store said "slow down" = throttled', extra={"key": "a b/c.csv", "empty": ""})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        rf"ts={TS} level=info logger=l4e.upload msg=\"uploaded window\" asset=pump-7 bytes=1234 ok=true", lines[0]
    )
    assert lines[1].endswith(
        'level=warning logger=l4e.upload msg="store said \\"slow down\\" = throttled" key="a b/c.csv" empty=""'
    )


def test_exception_stays_on_one_line() -> None:
    out = io.StringIO()
    configure_logging("keyvalue", "debug", stream=out, timestamps=False)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        logging.getLogger("l4e.spool").exception("append failed")
    (line,) = out.getvalue().splitlines()
    assert line.startswith(
        'level=error logger=l4e.spool msg="append failed" exc="Traceback (most recent call last):\\n'
    )
    assert line.endswith('RuntimeError: disk full"')


def test_json_lines() -> None:
    out = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.DEBUG, stream=out)
    log = logging.getLogger("l4e.alarms")
    log.debug("rule fired", extra={"rule": "high-vibration", "score": 0.93, "path": Path("/x"), "level": 9})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.error("hook failed", exc_info=True)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert re.fullmatch(TS, first.pop("ts"))
    assert first == {
        "level": "debug",
        "logger": "l4e.alarms",
        "msg": "rule fired",
        "rule": "high-vibration",
        "score": 0.93,
        "path": "/x",
        "level_": 9,  # an extra named like a core field is kept, renamed
    }
    assert second["level"] == "error" and "ZeroDivisionError" in second["exc"]


def test_under_journald_no_timestamp_and_priority_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("keyvalue", "info", stream=stream)
        logging.getLogger("l4e.service").warning("source lost", extra={"source": "plc1"})
        logging.getLogger("l4e.service").info("started")
    assert (tmp_path / "journal").read_text().splitlines() == [
        '<4>level=warning logger=l4e.service msg="source lost" source=plc1',
        "<6>level=info logger=l4e.service msg=started",
    ]


def test_inherited_journal_stream_for_another_file_keeps_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()  # no file descriptor: cannot be the journal
    configure_logging("keyvalue", "info", stream=out)
    logging.getLogger("x").info("hi")
    assert re.fullmatch(rf"ts={TS} level=info logger=x msg=hi", out.getvalue().strip())


def test_reconfiguring_replaces_the_handler_and_quiets_libraries() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("keyvalue", "debug", stream=first)
    configure_logging("json", "INFO", stream=second)
    logging.getLogger("l4e.x").info("once")
    logging.getLogger("botocore.endpoint").info("per-request noise")
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in second.getvalue().splitlines()] == ["once"]


def test_log_config_model() -> None:
    assert LogConfig() == LogConfig(format="keyvalue", level="info")
    assert LogConfig(level="WARNING").level is LogLevel.WARNING
    for name, field in LogConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError, match="'debug', 'info', 'warning' or 'error'"):
        LogConfig(level="verbose")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LogConfig(colour=True)
    with pytest.raises(ValueError):
        configure_logging("xml", "info", stream=io.StringIO())
