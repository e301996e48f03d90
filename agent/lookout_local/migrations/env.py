"""Alembic environment: online migrations only, over the URL that ``migrate.upgrade`` puts in the config.

A session-level advisory lock serialises concurrent upgrades: every ``lookout serve`` replica and every
``lookout worker`` migrates at start, and several may start at the same moment.
"""

from alembic import context
from sqlalchemy import create_engine, pool

MIGRATION_LOCK = 0x4C34_4501  # "L4E" + 1: any constant shared by all processes

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
    try:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        connection.commit()
