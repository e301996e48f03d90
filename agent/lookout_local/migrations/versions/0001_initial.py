"""The service's tables and procrastinate's job schema.

Revision ID: 0001
Revises:
"""

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE lookout_resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, arn TEXT NOT NULL UNIQUE, created DOUBLE PRECISION NOT NULL,
    doc TEXT NOT NULL,
    -- schedulers only: when the dispatcher must look at it next (epoch seconds on the service clock);
    -- NULL when it has nothing to do (STOPPED)
    due_at DOUBLE PRECISION,
    PRIMARY KEY (kind, name));
CREATE INDEX lookout_resources_due ON lookout_resources (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE lookout_jobs (
    job_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL);
CREATE INDEX lookout_jobs_dataset ON lookout_jobs (dataset, created);
-- one execution per (scheduler, window): the primary key is what makes creation idempotent across
-- every replica and worker
CREATE TABLE lookout_executions (
    scheduler TEXT NOT NULL, data_start DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (scheduler, data_start));
CREATE TABLE lookout_tokens (
    op TEXT NOT NULL, token TEXT NOT NULL, fingerprint TEXT NOT NULL, response TEXT NOT NULL,
    PRIMARY KEY (op, token));
"""


def upgrade() -> None:
    # procrastinate's schema for the pinned minor version (pyproject pins it); a procrastinate upgrade adds a
    # revision that runs its migration scripts (procrastinate.schema.migrations_path) for that step.
    # Both go through the driver connection: psycopg takes the SQL verbatim ('%' and '::' untouched).
    raw = op.get_bind().connection.driver_connection
    raw.execute(SchemaManager.get_schema())
    raw.execute(TABLES)


def downgrade() -> None:
    raise NotImplementedError("the state is not downgraded; restore a backup instead")
