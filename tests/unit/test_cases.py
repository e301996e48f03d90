"""Runs every folder of tests/cases/: input.csv through spool → resample → CSV → store, compared byte for byte."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from agent.config import load
from agent.core.clock import parse_instant
from agent.core.errors import ConfigError
from agent.core.model import Reading
from agent.pipeline.closer import WindowCloser
from agent.pipeline.outbox import Outbox
from agent.pipeline.plan import plan_from_config
from agent.pipeline.spool import Spool
from agent.pipeline.store import FileStore
from agent.pipeline.upload import Uploader

CASES = Path(__file__).resolve().parents[1] / "cases"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "asset.toml").exists())


def readings_of(path: Path) -> list[Reading]:
    out = []
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows)
        for row in rows:
            ts = parse_instant(row[0])
            out += [Reading(name, float(cell), ts) for name, cell in zip(header[1:], row[1:], strict=True) if cell]
    return out


class FixedClock:
    speed = 1.0

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


@pytest.mark.parametrize("name", NAMES)
async def test_case(name, tmp_path):
    case = CASES / name
    if (case / "expected_error.txt").exists():
        with pytest.raises(ConfigError) as info:
            load(case / "asset.toml")
        assert (case / "expected_error.txt").read_text().strip() in str(info.value)
        return
    config = load(case / "asset.toml")
    plan = plan_from_config(config, case)
    spool = Spool(tmp_path / "spool", plan.frequency)
    outbox = Outbox(tmp_path / "outbox")
    closer = WindowCloser(plan, spool, outbox, tmp_path / "progress.json")
    readings = readings_of(case / "input.csv")
    spool.append(readings)
    spool.flush()
    now = max(r.ts for r in readings) + 10 * plan.frequency
    closer.close_due(now)
    store = FileStore(tmp_path / "store")
    uploader = Uploader(outbox, store, "", FixedClock(now), 60)
    await uploader.run_once()
    got = {key: store.get(key) for key in store.list()}
    expected = {p.name: p.read_bytes() for p in (case / "expected").iterdir()}
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key].decode() == expected[key].decode(), key
    assert outbox.entries() == []
    assert spool.windows() == []
