"""Ingestion reads and writes in chunks (agent.lookout_local.ingest + staging) with the results of the
whole-frame path it replaced: random layouts of real CSV files in a folder store, tiny chunks so every file
spans many, compared with that path (kept here as the reference) value for value, count for count; and a
process ingesting a CSV far bigger than a chunk stays within a bounded peak memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from agent.lookout_local import csv_blocks
from agent.lookout_local.ingest import Quality, component_prefix, ingest, read_component_chunks, read_component_csv
from agent.lookout_local.schema import Component
from agent.pipeline.store import FileStore

ROOT = Path(__file__).resolve().parents[2]
SHORT_RANGE_SECS = 14 * 86400


def reference_ingest(store, prefix, components, out_dir):
    """The whole-frame ingestion (every file read whole, one concat, one stable sort, to_parquet)."""
    quality = Quality()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = end = None
    for comp in components:
        frames = []
        for key in store.list(component_prefix(prefix, comp.name, None)):
            quality.total_files += 1
            try:
                data = store.get(key)
                quality.size_bytes += len(data)
                frames.append(read_component_csv(data, comp, quality))
                quality.ingested_files += 1
            except (ValueError, pd.errors.ParserError, UnicodeDecodeError, KeyError):
                quality.discarded.append({"Bucket": "b", "Key": key})
        frame = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")
        dup = frame["timestamp"].duplicated(keep="last")
        quality.duplicate_timestamps += int(dup.sum())
        frame = frame[~dup].reset_index(drop=True)
        for sensor in comp.sensors:
            present = frame["timestamp"][frame[sensor].notna()]
            if present.empty:
                quality.all_missing_sensors += 1
            elif (present.iloc[-1] - present.iloc[0]).total_seconds() < SHORT_RANGE_SECS:
                quality.short_range_sensors += 1
        frame.to_parquet(out_dir / f"{comp.name}.parquet", index=False)
        first, last = frame["timestamp"].iloc[0].timestamp(), frame["timestamp"].iloc[-1].timestamp()
        start = first if start is None else min(start, first)
        end = last if end is None else max(end, last)
    return quality, float(start), float(end)


def cell(rng, value: float) -> str:
    r = rng.random()
    if r < 0.03:
        return ""
    if r < 0.04:
        return rng.choice(["err", " ", "inf", "-inf", "nan", "1e400", "  2.5", '"3.25"', '"x\ny"', '"q""\n"'])
    return repr(value) if r < 0.7 else f"{value:.4f}"


def write_files(rng, store: FileStore, comp: Component, shuffled: bool) -> None:
    """3–6 CSVs of 0–300 rows: overlapping ranges, duplicates, bad timestamps, blanks, text (quoted, with
    newlines and quotes inside), one file lacking a column, one broken half-way (a row with an extra field)."""
    base = pd.Timestamp("2026-01-01")
    files = int(rng.integers(3, 7))
    for f in range(files):
        rows = int(rng.integers(0, 300))
        offset = int(rng.integers(0, 400)) if shuffled else f * 250
        minutes = offset + np.arange(rows)
        if shuffled:
            rng.shuffle(minutes)
        lines = [",".join([comp.timestamp, *comp.sensors])]
        for m in minutes:
            stamp = (base + pd.Timedelta(minutes=int(m))).strftime("%Y-%m-%d %H:%M:%S")
            if rng.random() < 0.02:
                stamp = rng.choice(["", "not a time", "2026-13-45 99:00:00"])
            lines.append(",".join([stamp, *(cell(rng, v) for v in rng.normal(50, 20, len(comp.sensors)))]))
        if f == 1 and rows > 20:
            lines[rows // 2] += ",extra"  # the C parser refuses it when it gets there
        if f == 2:
            lines[0] = ",".join([comp.timestamp, *comp.sensors[:-1]])
        store.put(f"in/{comp.name}/{'zyx'[f % 3]}{f:02d}.csv", ("\n".join(lines) + "\n").encode())


@pytest.mark.parametrize("seed", range(12))
def test_chunked_ingestion_gives_the_whole_frame_results(tmp_path, seed):
    rng = np.random.default_rng(seed)
    store = FileStore(tmp_path / "store")
    comps = [Component("pump", "Timestamp", ("s1", "s2", "s3")), Component("fan", "ts", ("a",))]
    for comp in comps:
        write_files(rng, store, comp, shuffled=seed % 2 == 1)
    expected = reference_ingest(store, "in/", comps, tmp_path / "old")
    got = ingest(store, "b", "in/", None, comps, tmp_path / "new", block_bytes=1500, out_cells=40)
    assert got[1:] == expected[1:]
    assert got[0].data_quality_summary() == expected[0].data_quality_summary()
    assert got[0].files_summary() == expected[0].files_summary()
    assert got[0].size_bytes == expected[0].size_bytes
    for comp in comps:
        old, new = tmp_path / "old" / f"{comp.name}.parquet", tmp_path / "new" / f"{comp.name}.parquet"
        assert pq.read_schema(new).equals(pq.read_schema(old), check_metadata=True)
        a, b = pd.read_parquet(old), pd.read_parquet(new)
        pd.testing.assert_frame_equal(b, a, check_exact=True)
        assert np.array_equal(a[list(comp.sensors)].to_numpy().view(np.int64),
                              b[list(comp.sensors)].to_numpy().view(np.int64))  # bit for bit, NaN too
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["fan.parquet", "pump.parquet"]  # no staging


def test_seeds_cover_discards_duplicates_and_disorder(tmp_path):
    """The layouts above do exercise what they are meant to (else their equality proves little)."""
    seen = {"discarded": 0, "duplicates": 0, "invalid": 0, "unsupported": 0}
    for seed in range(12):
        rng = np.random.default_rng(seed)
        store = FileStore(tmp_path / f"s{seed}")
        comps = [Component("pump", "Timestamp", ("s1", "s2", "s3")), Component("fan", "ts", ("a",))]
        for comp in comps:
            write_files(rng, store, comp, shuffled=seed % 2 == 1)
        quality = ingest(store, "b", "in/", None, comps, tmp_path / f"o{seed}")[0]
        summary = quality.data_quality_summary()
        seen["discarded"] += len(quality.discarded) > len(comps)  # a broken file beside the header one
        seen["duplicates"] += summary["DuplicateTimestamps"]["TotalNumberOfDuplicateTimestamps"] > 0
        seen["invalid"] += summary["InvalidSensorData"]["TotalNumberOfInvalidValues"] > 0
        seen["unsupported"] += summary["UnsupportedTimestamps"]["TotalNumberOfUnsupportedTimestamps"] > 0
    assert all(count >= 3 for count in seen.values()), seen


def test_a_file_broken_after_its_first_blocks_is_discarded_whole_and_stale_staging_removed(tmp_path):
    store = FileStore(tmp_path / "store")
    comp = Component("pump", "ts", ("a",))
    good = "ts,a\n" + "".join(f"2026-01-01 00:{m:02d}:00,{m}\n" for m in range(30))
    store.put("in/pump/a.csv", good.encode())
    broken = "ts,a\n" + "".join(f"2026-01-02 00:{m:02d}:00,{m}\n" for m in range(50)) + "2026-01-03 00:00:00,1,2\n"
    store.put("in/pump/b.csv", broken.encode())
    stale = tmp_path / "out" / ".pump.staging.k1ll3d"  # the staging of an ingestion killed in the middle
    stale.mkdir(parents=True)
    (stale / "rows.arrow").write_bytes(b"partial")
    quality, _, end = ingest(store, "b", "in/", None, [comp], tmp_path / "out", block_bytes=60, out_cells=10)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pump.parquet"]
    assert quality.files_summary()["DiscardedFiles"] == [{"Bucket": "b", "Key": "in/pump/b.csv"}]
    assert quality.missing_by_sensor == {"pump\\a": 0}
    frame = pd.read_parquet(tmp_path / "out" / "pump.parquet")
    assert frame["a"].tolist() == [float(m) for m in range(30)]
    assert end == pd.Timestamp("2026-01-01 00:29:00").timestamp()


def test_ingesting_a_csv_far_bigger_than_a_chunk_keeps_memory_bounded(tmp_path):
    """A 64 MiB CSV (one component, 20 sensors, one file), rows in order: a child process ingests it; its
    peak memory grows by far less than the file (the whole-frame path took several times the file)."""
    rows, sensors = 300_000, 20
    path = tmp_path / "store" / "in" / "pump" / "all.csv"
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(3)
    values = rng.normal(50, 20, (20_000, sensors))
    tails = ["," + ",".join(f"{v:.6f}" for v in row) + "\n" for row in values]  # reused by every block
    with open(path, "w") as fh:  # written in blocks: the test never holds the file
        fh.write(",".join(["ts", *(f"s{i}" for i in range(sensors))]) + "\n")
        base = pd.Timestamp("2026-01-01").value
        for a in range(0, rows, len(tails)):
            stamps = pd.to_datetime(base + np.arange(a, a + len(tails)) * 60_000_000_000).strftime("%Y-%m-%dT%H:%M:%S")
            fh.writelines(stamp + tail for stamp, tail in zip(stamps, tails, strict=True))
    size_mib = path.stat().st_size / 2**20
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from agent.lookout_local.ingest import ingest\n"
        "from agent.lookout_local.schema import Component\n"
        "from agent.pipeline.store import FileStore\n"
        "from tests.lookout_local.artifact_child import vm_hwm_kib\n"
        "base = vm_hwm_kib()\n"
        f"comp = Component('pump', 'ts', tuple(f's{{i}}' for i in range({sensors})))\n"
        "q, start, end = ingest(FileStore(sys.argv[1]), 'b', 'in/', None, [comp], Path(sys.argv[2]))\n"
        "print(json.dumps({'baseline_kib': base, 'peak_kib': vm_hwm_kib(), 'files': q.ingested_files}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store"), str(tmp_path / "out")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    grew = (report["peak_kib"] - report["baseline_kib"]) / 1024
    assert report["files"] == 1
    assert pq.ParquetFile(tmp_path / "out" / "pump.parquet").metadata.num_rows == rows
    # streamed: ~50 MiB whatever the size (parser, a few blocks, the allocators' pools) + 8 bytes a row; the
    # whole-frame path grew by 4.6 times the CSV (874 MiB for 189 MiB)
    assert grew < 100, f"ingesting {size_mib:.0f} MiB of CSV grew the process by {grew:.0f} MiB"


QUOTED = ('ts,a,b\n'
          '2026-01-01 00:00:00,1.5,"x\ny"\n'
          '2026-01-01 00:01:00,"2,5",3\n'
          '\n'
          '2026-01-01 00:02:00,"q""\n""",4.25\n'
          '2026-01-01 00:03:00, 7,\n'
          '2026-01-01 00:04:00,8,"9"\n')


@pytest.mark.parametrize("block_bytes", [1, 7, 13, 29, 41, 64, 1000])
def test_blocks_cut_only_between_records(block_bytes):
    """Quoted fields holding newlines, commas and quotes, a blank line: every block size gives the rows and
    counts of the whole-file read."""
    comp = Component("c", "ts", ("a", "b"))
    whole_q, chunk_q = Quality(), Quality()
    whole = read_component_csv(QUOTED.encode(), comp, whole_q)
    parts = list(read_component_chunks(io.BytesIO(QUOTED.encode()), comp, chunk_q, block_bytes=block_bytes))
    pd.testing.assert_frame_equal(pd.concat(parts).reset_index(drop=True), whole.reset_index(drop=True))
    assert chunk_q == whole_q
    assert b"".join(csv_blocks.blocks(io.BytesIO(QUOTED.encode()), block_bytes)) == QUOTED.encode()


@pytest.mark.parametrize("bad_row", range(1, 12))
def test_a_row_with_an_extra_field_is_refused_wherever_a_block_starts(bad_row):
    """pandas' own chunked reader drops the extra field of a chunk's first row silently; here it is the
    ParserError a whole read gives, for every row position against every block boundary."""
    comp = Component("c", "ts", ("a",))
    rows = [f"2026-01-01 00:{m:02d}:00,{m}" for m in range(12)]
    rows[bad_row] += ",extra"
    data = ("ts,a\n" + "\n".join(rows) + "\n").encode()
    with pytest.raises(pd.errors.ParserError):  # (a first row with one more field is an index column)
        read_component_csv(data, comp)
    for block_bytes in range(1, 90, 3):
        with pytest.raises((pd.errors.ParserError, ValueError)):
            list(read_component_chunks(io.BytesIO(data), comp, Quality(), block_bytes=block_bytes))

