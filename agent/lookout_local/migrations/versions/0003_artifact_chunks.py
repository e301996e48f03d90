"""Artifacts in bounded chunks: a file is a manifest row (size, sha256, chunk count) plus its chunks.

Before, a file was one ``bytea`` value, read and written whole: a 1 GB dataset took 1 GB (and more) of the
memory of the worker publishing or fetching it. The chunks are rows of ``lookout_artifact_chunks`` (plain
rows rather than large objects: they are deleted with a ``DELETE``, take part in the transaction that
publishes them, and cannot be orphaned). Stored without compression (``STORAGE EXTERNAL``): the files are
Parquet, already compressed. Existing artifacts are split here with the 4 MiB chunk the code writes.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CHUNK = 4 * 1024 * 1024  # frozen here: the code's chunk size may change, this migration's must not


def upgrade() -> None:
    op.execute("""
        CREATE TABLE lookout_artifact_chunks (
            kind TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, seq INTEGER NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (kind, name, version, path, seq))""")
    op.execute("ALTER TABLE lookout_artifact_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE lookout_artifacts ADD COLUMN size BIGINT, ADD COLUMN sha256 TEXT, "
               "ADD COLUMN chunks INTEGER")
    op.execute(f"""
        UPDATE lookout_artifacts SET size = octet_length(data), sha256 = encode(sha256(data), 'hex'),
            chunks = (octet_length(data) + {CHUNK} - 1) / {CHUNK}""")
    op.execute(f"""
        INSERT INTO lookout_artifact_chunks (kind, name, version, path, seq, data)
        SELECT a.kind, a.name, a.version, a.path, s.seq, substring(a.data FROM s.seq * {CHUNK} + 1 FOR {CHUNK})
        FROM lookout_artifacts a, generate_series(0, a.chunks - 1) AS s(seq)""")
    op.execute("ALTER TABLE lookout_artifacts DROP COLUMN data, ALTER COLUMN size SET NOT NULL, "
               "ALTER COLUMN sha256 SET NOT NULL, ALTER COLUMN chunks SET NOT NULL")


def downgrade() -> None:
    raise NotImplementedError("the state is not downgraded; restore a backup instead")
