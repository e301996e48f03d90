"""Durable service state: one SQLite file (``<state dir>/lookout.sqlite3``).

Resources (datasets, models, inference schedulers) are JSON documents keyed by (kind, name); ingestion
jobs and inference executions have their own tables because they are listed per parent and in time order.
Documents hold the API fields under their AWS names (times as epoch seconds) plus internal fields whose
names start with ``_``; the protocol layer drops those when answering.

One connection, shared by the HTTP threads, the worker and the scheduler, serialised by a lock: the load
is a handful of small writes per second, and a single writer avoids SQLite's busy errors. WAL mode with
``synchronous=NORMAL`` keeps each commit durable across a process crash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, arn TEXT NOT NULL UNIQUE, created REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    scheduler TEXT NOT NULL, data_start REAL NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (scheduler, data_start));
CREATE TABLE IF NOT EXISTS tokens (
    op TEXT NOT NULL, token TEXT NOT NULL, fingerprint TEXT NOT NULL, response TEXT NOT NULL,
    PRIMARY KEY (op, token));
"""


def executions_query(table: str, mark: str, status_expr: str, scheduler: str, start_after: float | None,
                     start_before: float | None, status: str | None) -> tuple[str, list]:
    """SELECT of a scheduler's execution documents, newest first, with the optional filters; ``mark`` is the
    driver's placeholder, ``status_expr`` where the backend keeps the status. Both backends use it."""
    sql, args = f"SELECT doc FROM {table} WHERE scheduler={mark}", [scheduler]
    for clause, value in (("data_start >=", start_after), ("data_start <", start_before), (f"{status_expr} =", status)):
        if value is not None:
            sql, args = f"{sql} AND {clause} {mark}", [*args, value]
    return sql + " ORDER BY data_start DESC", args


class State:
    """The SQLite store. Every method is atomic; ``transaction()`` groups several into one."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.dir / "lookout.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[State]:
        """Hold the lock and commit everything inside at once (nested uses join the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # resources -----------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict | None:
        rows = self._query("SELECT doc FROM resources WHERE kind=? AND name=?", (kind, name))
        return json.loads(rows[0][0]) if rows else None

    def by_arn(self, arn: str) -> tuple[str, dict] | None:
        rows = self._query("SELECT kind, doc FROM resources WHERE arn=?", (arn,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def put(self, kind: str, name: str, arn: str, created: float, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO resources (kind, name, arn, created, doc) VALUES (?,?,?,?,?)",
                             (kind, name, arn, created, json.dumps(doc)))

    def delete(self, kind: str, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name))

    def all(self, kind: str) -> list[dict]:
        """Every resource of ``kind``, by name (the order pagination walks)."""
        rows = self._query("SELECT doc FROM resources WHERE kind=? ORDER BY name", (kind,))
        return [json.loads(r[0]) for r in rows]

    # ingestion jobs ------------------------------------------------------------------------------------
    def put_job(self, job_id: str, dataset: str, created: float, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO jobs (job_id, dataset, created, doc) VALUES (?,?,?,?)",
                             (job_id, dataset, created, json.dumps(doc)))

    def get_job(self, job_id: str) -> dict | None:
        rows = self._query("SELECT doc FROM jobs WHERE job_id=?", (job_id,))
        return json.loads(rows[0][0]) if rows else None

    def jobs(self, dataset: str | None = None) -> list[dict]:
        """Jobs newest first."""
        if dataset is None:
            rows = self._query("SELECT doc FROM jobs ORDER BY created DESC, job_id")
        else:
            rows = self._query("SELECT doc FROM jobs WHERE dataset=? ORDER BY created DESC, job_id", (dataset,))
        return [json.loads(r[0]) for r in rows]

    def delete_jobs(self, dataset: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE dataset=?", (dataset,))

    # inference executions ------------------------------------------------------------------------------
    def put_execution(self, scheduler: str, data_start: float, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO executions (scheduler, data_start, doc) VALUES (?,?,?)",
                             (scheduler, data_start, json.dumps(doc)))

    def executions(self, scheduler: str, *, start_after: float | None = None, start_before: float | None = None,
                   status: str | None = None, offset: int = 0, limit: int | None = None) -> list[dict]:
        """Executions of a scheduler, newest DataStartTime first: DataStartTime >= ``start_after`` and
        < ``start_before``, of ``status``; ``offset``/``limit`` page through them (in SQL, not in Python)."""
        sql, args = executions_query("executions", "?", "json_extract(doc, '$.Status')", scheduler, start_after,
                                     start_before, status)
        rows = self._query(sql + " LIMIT ? OFFSET ?", (*args, -1 if limit is None else limit, offset))
        return [json.loads(r[0]) for r in rows]

    def prune_executions(self, before: float) -> int:
        """Delete finished executions whose window started before ``before`` (the retention rule)."""
        with self._lock:
            return self._db.execute("DELETE FROM executions WHERE data_start < ? AND "
                                    "json_extract(doc, '$.Status') <> 'IN_PROGRESS'", (before,)).rowcount

    def delete_executions(self, scheduler: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM executions WHERE scheduler=?", (scheduler,))

    # idempotency tokens --------------------------------------------------------------------------------
    def token(self, op: str, token: str) -> tuple[str, dict] | None:
        rows = self._query("SELECT fingerprint, response FROM tokens WHERE op=? AND token=?", (op, token))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def put_token(self, op: str, token: str, fingerprint: str, response: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tokens (op, token, fingerprint, response) VALUES (?,?,?,?)",
                             (op, token, fingerprint, json.dumps(response)))
