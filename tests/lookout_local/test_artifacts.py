"""Fleet-mode artifacts (agent.lookout_local.artifacts) on a real PostgreSQL server: a file far bigger than a
chunk is published and fetched by separate processes whose peak memory (VmHWM) stays bounded, arrives
byte-identical, and a download cut in the middle, or failing its checks, never leaves a copy taken as complete.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from agent.lookout_local import artifacts
from agent.lookout_local.pgstate import PgState

from .pg import pg_bin

ROOT = Path(__file__).resolve().parents[2]
BIG_MIB = 200
CHUNK = 2 * 1024 * 1024
# holding the big file whole costs BIG_MIB MiB at least (plus its copy in the driver's buffers); streamed, a
# process holds a few chunks
BOUND_MIB = 48

pytestmark = pytest.mark.skipif(pg_bin() is None, reason="needs PostgreSQL server binaries (make system-deps)")


def run_child(*args: str, timeout: float = 120.0) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.lookout_local.artifact_child", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_random(path: Path, mib: int) -> None:
    """``mib`` MiB of random bytes, written 1 MiB at a time (the test never holds the file either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1024 * 1024))


def visible(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def same_tree(a: Path, b: Path) -> bool:
    """Same relative file names and byte-identical contents (compared in small blocks), hidden names aside."""
    files = visible(a)
    return files == visible(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


@pytest.fixture(scope="module")
def big(pg_server, tmp_path_factory):
    """A database with dataset ``big`` published by a child process: a BIG_MIB MiB file, a small one in a
    subfolder, an empty one (and hidden leftovers, which are not published)."""
    db = pg_server.new_database()
    src = tmp_path_factory.mktemp("writer") / "datasets" / "big"
    write_random(src / "c0.parquet", BIG_MIB)
    (src / "sub").mkdir()
    (src / "sub" / "small.bin").write_bytes(os.urandom(100_000))
    (src / "empty.bin").write_bytes(b"")
    (src / ".c0.parquet.tmp").write_bytes(b"a temporary a crash left")  # hidden: never published
    (src / ".c0.staging.x").mkdir()
    (src / ".c0.staging.x" / "rows.arrow").write_bytes(b"staging a killed ingestion left")
    report = run_child("publish", db, str(src), "dataset", "big", str(CHUNK))
    return SimpleNamespace(db=db, src=src, version=report["result"], publish=report)


def test_publish_streams_a_file_bigger_than_memory_bound(big):
    grew = (big.publish["peak_kib"] - big.publish["baseline_kib"]) / 1024
    assert grew < BOUND_MIB, f"publishing {BIG_MIB} MiB grew the process by {grew:.0f} MiB"
    with psycopg.connect(big.db) as conn:
        manifest = conn.execute("SELECT path, size, chunks FROM lookout_artifacts WHERE kind='dataset' AND "
                                "name='big' AND version=%s ORDER BY path", (big.version,)).fetchall()
        biggest = conn.execute("SELECT max(octet_length(data)) FROM lookout_artifact_chunks").fetchone()[0]
    assert manifest == [("c0.parquet", BIG_MIB << 20, (BIG_MIB << 20) // CHUNK), ("empty.bin", 0, 0),
                        ("sub/small.bin", 100_000, 1)]
    assert biggest == CHUNK


def test_fetch_streams_into_an_identical_copy(big, tmp_path):
    folder = tmp_path / "datasets" / "big"  # another host's state folder: nothing there yet
    report = run_child("fetch", big.db, str(folder), "dataset", "big")
    copy = Path(report["result"])
    assert copy == folder.with_name(f"big@{big.version}")
    assert same_tree(big.src, copy)
    grew = (report["peak_kib"] - report["baseline_kib"]) / 1024
    assert grew < BOUND_MIB, f"fetching {BIG_MIB} MiB grew the process by {grew:.0f} MiB"
    assert sorted(p.name for p in folder.parent.iterdir()) == [copy.name]  # no temporary left


def test_a_fetch_killed_midway_leaves_no_copy_and_the_next_fetch_completes(big, tmp_path):
    folder = tmp_path / "datasets" / "big"
    copy = folder.with_name(f"big@{big.version}")
    child = subprocess.Popen([sys.executable, "-m", "tests.lookout_local.artifact_child", "fetch", big.db,
                              str(folder), "dataset", "big", "0.05"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        partial = None
        while partial is None and time.monotonic() < deadline and child.poll() is None:
            for tmp in folder.parent.glob(".big@*"):
                part = tmp / "c0.parquet"
                if part.exists() and part.stat().st_size >= 10 * CHUNK:
                    partial = part
            time.sleep(0.01)
        assert partial is not None, "the download never got 10 chunks in"
        child.kill()
        assert child.wait(30) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        child.stdout.close()
        child.stderr.close()
    assert not copy.exists()
    assert partial.exists() and partial.stat().st_size < BIG_MIB << 20  # what a cut leaves: hidden and partial

    state = PgState(big.db, pool_size=2)
    try:
        got = artifacts.fetch(SimpleNamespace(state=state), "dataset", "big", folder)
    finally:
        state.close()
    assert got == copy and same_tree(big.src, copy)
    assert sorted(p.name for p in folder.parent.iterdir()) == [copy.name]  # the dead process's folder removed


@pytest.mark.parametrize("damage", [
    "UPDATE lookout_artifact_chunks SET data = overlay(data PLACING '\\x00'::bytea FROM 5) WHERE seq = 1",
    "DELETE FROM lookout_artifact_chunks WHERE seq = 1",
    "DELETE FROM lookout_artifact_chunks WHERE seq = 2",  # the last chunk: the count and size tell
])
def test_a_damaged_artifact_is_refused_and_leaves_nothing(pg_server, tmp_path, damage):
    db = pg_server.new_database()
    src = tmp_path / "writer" / "models" / "m"
    src.mkdir(parents=True)
    (src / "model.bin").write_bytes(os.urandom(2500))
    state = PgState(db, pool_size=2)
    ctx = SimpleNamespace(state=state)
    try:
        artifacts.publish(ctx, "model", "m", src, chunk_bytes=1000)
        with psycopg.connect(db, autocommit=True) as conn:
            assert conn.execute(damage).rowcount == 1
        folder = tmp_path / "reader" / "models" / "m"
        with pytest.raises(artifacts.ArtifactError, match=r"model 'm' model\.bin"):
            artifacts.fetch(ctx, "model", "m", folder)
    finally:
        state.close()
    assert list(folder.parent.iterdir()) == []


def test_migration_splits_artifacts_stored_whole(pg_server, tmp_path):
    """A database from before the chunks (revision 0002: one bytea per file) upgrades into chunks that fetch
    back byte-identical."""
    from alembic import command
    from alembic.config import Config

    from agent.lookout_local import migrate

    name = "m_" + os.urandom(6).hex()
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db = pg_server.url(name)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", migrate.sqlalchemy_url(db))
    command.upgrade(cfg, "0002")
    src = tmp_path / "writer" / "m"
    src.mkdir(parents=True)
    files = {"model.bin": os.urandom(9 * 1024 * 1024 + 7), "empty.bin": b"", "meta.json": b'{"a": 1}'}
    with psycopg.connect(db, autocommit=True) as conn:
        for path, data in files.items():
            (src / path).write_bytes(data)
            conn.execute("INSERT INTO lookout_artifacts (kind, name, version, path, data) VALUES "
                         "('model', 'm', 'v1', %s, %b)", (path, data))
    migrate.upgrade(db)
    with psycopg.connect(db) as conn:
        chunks = conn.execute("SELECT path, count(*) FROM lookout_artifact_chunks GROUP BY path "
                              "ORDER BY path").fetchall()
    assert chunks == [("meta.json", 1), ("model.bin", 3)]
    state = PgState(db, pool_size=2)
    try:
        got = artifacts.fetch(SimpleNamespace(state=state), "model", "m", tmp_path / "reader" / "m")
    finally:
        state.close()
    assert got.name == "m@v1" and same_tree(src, got)
