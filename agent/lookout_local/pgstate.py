"""Durable service state in PostgreSQL (``--db postgresql://…``): the same interface as ``state.State``.

Shared by any number of API replicas and workers on any number of hosts, so nothing may rely on one process:

- a transaction is one database transaction on a connection of this process's pool (thread-local, nested
  uses join it); a ``get`` inside one takes a transaction-scoped advisory lock on (kind, name), so the
  read-modify-write cycles the operations, the worker and the dispatcher run on one resource are serialised
  fleet-wide, and two replicas creating the same name cannot both succeed; ``token`` does the same for
  (operation, ClientToken);
- ``create_execution`` is an INSERT that the (scheduler, data_start) primary key makes idempotent: exactly
  one caller, whichever process it runs in, gets True;
- ``finish_execution`` only moves an IN_PROGRESS execution, so a late duplicate never rewrites a result;
- ``due_at`` (schedulers) lets the dispatcher find work with an index instead of reading every scheduler;
  ``claim_due_scheduler`` hands each due scheduler to one dispatcher at a time (row lock, SKIP LOCKED).

The pool checks a connection before handing it out, so after a database restart the next call reconnects;
calls made while the database is down fail (the API answers 500, boto3 retries).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.lookout_local.state import executions_query
from agent.pipeline.windows import UPLOAD_FREQUENCIES

SCHEDULER = "inference-scheduler"


def scheduler_due_at(doc: dict) -> float | None:
    """When the dispatcher must look at a scheduler: now for a status change, the end + delay of the next
    window when RUNNING, never when STOPPED."""
    status = doc.get("Status")
    if status in ("PENDING", "STOPPING"):
        return 0.0
    if status != "RUNNING":
        return None
    step = UPLOAD_FREQUENCIES[doc["DataUploadFrequency"]]
    return float(int(doc["_last_end"]) + step + 60 * int(doc.get("DataDelayOffsetInMinutes") or 0))


class PgState:
    """The PostgreSQL store. ``pool_size`` bounds this process's connections (HTTP threads + worker)."""

    is_postgres = True

    def __init__(self, url: str, pool_size: int = 10, timeout: float = 10.0) -> None:
        from psycopg_pool import ConnectionPool

        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                                    check=ConnectionPool.check_connection, timeout=timeout, open=True,
                                    name="l4e-lookout")
        self._local = threading.local()

    def close(self) -> None:
        self._pool.close()

    @property
    def pool(self):
        return self._pool

    @property
    def connection(self):
        """The current transaction's connection (None outside one): deferring a task on it makes the task
        exist exactly when the transaction commits."""
        return getattr(self._local, "conn", None)

    @contextmanager
    def transaction(self) -> Iterator[PgState]:
        """One database transaction for everything inside (nested uses join the outer one)."""
        if self.connection is not None:
            yield self
            return
        with self._pool.connection() as conn, conn.transaction():
            self._local.conn = conn
            try:
                yield self
            finally:
                self._local.conn = None

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        conn = self.connection
        if conn is not None:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else []
        with self._pool.connection() as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def _count(self, sql: str, args: tuple) -> int:
        conn = self.connection
        if conn is not None:
            return conn.execute(sql, args).rowcount
        with self._pool.connection() as conn:
            return conn.execute(sql, args).rowcount

    def _lock(self, key: str) -> None:
        if self.connection is not None:
            self._query("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    def try_lock(self, kind: str, name: str) -> bool:
        """Inside a transaction: take (kind, name)'s lock unless another transaction holds it."""
        return bool(self._query("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                                (f"{kind}/{name}",))[0][0])

    # resources -----------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict | None:
        self._lock(f"{kind}/{name}")
        rows = self._query("SELECT doc FROM lookout_resources WHERE kind=%s AND name=%s", (kind, name))
        return json.loads(rows[0][0]) if rows else None

    def by_arn(self, arn: str) -> tuple[str, dict] | None:
        rows = self._query("SELECT kind, name FROM lookout_resources WHERE arn=%s", (arn,))
        if not rows:
            return None
        doc = self.get(rows[0][0], rows[0][1])  # locked like any other read-modify-write
        return (rows[0][0], doc) if doc is not None else None

    def put(self, kind: str, name: str, arn: str, created: float, doc: dict) -> None:
        due = scheduler_due_at(doc) if kind == SCHEDULER else None
        self._query("INSERT INTO lookout_resources (kind, name, arn, created, doc, due_at) VALUES (%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (kind, name) DO UPDATE SET arn=EXCLUDED.arn, created=EXCLUDED.created, "
                    "doc=EXCLUDED.doc, due_at=EXCLUDED.due_at", (kind, name, arn, created, json.dumps(doc), due))

    def delete(self, kind: str, name: str) -> None:
        self._query("DELETE FROM lookout_resources WHERE kind=%s AND name=%s", (kind, name))

    def all(self, kind: str) -> list[dict]:
        rows = self._query("SELECT doc FROM lookout_resources WHERE kind=%s ORDER BY name COLLATE \"C\"", (kind,))
        return [json.loads(r[0]) for r in rows]

    def claim_due_scheduler(self, now: float, passed: list[str]) -> str | None:
        """Inside a transaction: the most overdue scheduler due at ``now`` that no other transaction holds,
        row-locked until this transaction ends (``FOR UPDATE SKIP LOCKED``), leaving out ``passed``; None when
        there is none. Dispatchers claiming this way never look at the same scheduler at once, and one that
        was just dispatched is out of reach (its ``due_at`` moved on in the transaction that held it)."""
        rows = self._query("SELECT name FROM lookout_resources WHERE kind=%s AND due_at <= %s "
                           "AND NOT (name = ANY(%s)) ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                           (SCHEDULER, now, passed))
        return rows[0][0] if rows else None

    # ingestion jobs ------------------------------------------------------------------------------------
    def put_job(self, job_id: str, dataset: str, created: float, doc: dict) -> None:
        self._query("INSERT INTO lookout_jobs (job_id, dataset, created, doc) VALUES (%s,%s,%s,%s) "
                    "ON CONFLICT (job_id) DO UPDATE SET dataset=EXCLUDED.dataset, created=EXCLUDED.created, "
                    "doc=EXCLUDED.doc", (job_id, dataset, created, json.dumps(doc)))

    def get_job(self, job_id: str) -> dict | None:
        self._lock(f"job/{job_id}")
        rows = self._query("SELECT doc FROM lookout_jobs WHERE job_id=%s", (job_id,))
        return json.loads(rows[0][0]) if rows else None

    def jobs(self, dataset: str | None = None) -> list[dict]:
        if dataset is None:
            rows = self._query("SELECT doc FROM lookout_jobs ORDER BY created DESC, job_id COLLATE \"C\"")
        else:
            rows = self._query("SELECT doc FROM lookout_jobs WHERE dataset=%s ORDER BY created DESC, "
                               "job_id COLLATE \"C\"", (dataset,))
        return [json.loads(r[0]) for r in rows]

    def delete_jobs(self, dataset: str) -> None:
        self._query("DELETE FROM lookout_jobs WHERE dataset=%s", (dataset,))

    # inference executions ------------------------------------------------------------------------------
    def put_execution(self, scheduler: str, data_start: float, doc: dict) -> None:
        self._query("INSERT INTO lookout_executions (scheduler, data_start, status, doc) VALUES (%s,%s,%s,%s) "
                    "ON CONFLICT (scheduler, data_start) DO UPDATE SET status=EXCLUDED.status, doc=EXCLUDED.doc",
                    (scheduler, data_start, doc["Status"], json.dumps(doc)))

    def create_execution(self, scheduler: str, data_start: float, doc: dict) -> bool:
        """Record a new execution; False when (scheduler, data_start) exists already (someone else made it)."""
        return self._count("INSERT INTO lookout_executions (scheduler, data_start, status, doc) "
                           "VALUES (%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                           (scheduler, data_start, doc["Status"], json.dumps(doc))) == 1

    def finish_execution(self, scheduler: str, data_start: float, doc: dict) -> bool:
        """Record the outcome of an IN_PROGRESS execution; False when it was finished already."""
        return self._count("UPDATE lookout_executions SET status=%s, doc=%s WHERE scheduler=%s AND data_start=%s "
                           "AND status='IN_PROGRESS'", (doc["Status"], json.dumps(doc), scheduler, data_start)) == 1

    def get_execution(self, scheduler: str, data_start: float) -> dict | None:
        rows = self._query("SELECT doc FROM lookout_executions WHERE scheduler=%s AND data_start=%s",
                           (scheduler, data_start))
        return json.loads(rows[0][0]) if rows else None

    def executions(self, scheduler: str, *, start_after: float | None = None, start_before: float | None = None,
                   status: str | None = None, offset: int = 0, limit: int | None = None) -> list[dict]:
        """As ``State.executions``: filters, order and paging in SQL (the primary key's index serves them)."""
        sql, args = executions_query("lookout_executions", "%s", "status", scheduler, start_after, start_before,
                                     status)
        rows = self._query(sql + " LIMIT %s OFFSET %s", (*args, limit, offset))
        return [json.loads(r[0]) for r in rows]

    def prune_executions(self, before: float) -> int:
        """Delete finished executions whose window started before ``before`` (the retention rule)."""
        return self._count("DELETE FROM lookout_executions WHERE data_start < %s AND status <> 'IN_PROGRESS'",
                           (before,))

    def delete_executions(self, scheduler: str) -> None:
        self._query("DELETE FROM lookout_executions WHERE scheduler=%s", (scheduler,))

    # idempotency tokens --------------------------------------------------------------------------------
    def token(self, op: str, token: str) -> tuple[str, dict] | None:
        self._lock(f"token/{op}/{token}")
        rows = self._query("SELECT fingerprint, response FROM lookout_tokens WHERE op=%s AND token=%s", (op, token))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def put_token(self, op: str, token: str, fingerprint: str, response: dict) -> None:
        self._query("INSERT INTO lookout_tokens (op, token, fingerprint, response) VALUES (%s,%s,%s,%s) "
                    "ON CONFLICT (op, token) DO UPDATE SET fingerprint=EXCLUDED.fingerprint, "
                    "response=EXCLUDED.response", (op, token, fingerprint, json.dumps(response)))
