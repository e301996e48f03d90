"""Datasets' and models' files, readable by every host (agent.lookout_local.artifacts).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE lookout_artifacts (
            kind TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, data BYTEA NOT NULL,
            PRIMARY KEY (kind, name, path))""")


def downgrade() -> None:
    raise NotImplementedError("the state is not downgraded; restore a backup instead")
