"""Bring a PostgreSQL database to the current schema with Alembic (idempotent; safe from many processes)."""

from __future__ import annotations

from pathlib import Path

from agent.core.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(db_url: str) -> str:
    """``postgresql://…`` → ``postgresql+psycopg://…`` (SQLAlchemy picks the psycopg 3 driver by name)."""
    scheme, sep, rest = db_url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"--db {db_url!r}: allowed: postgresql://user@host:port/database (or omit for SQLite)")
    return "postgresql+psycopg://" + rest


def database_errors() -> tuple[type[Exception], ...]:
    """What a database that is unreachable or refuses us raises at start (connection refused, no such role or
    database, a migration that fails): psycopg's, SQLAlchemy's and Alembic's errors, and OSError beneath them.
    Anything else is a bug and keeps its traceback."""
    import psycopg
    import sqlalchemy.exc
    from alembic.util.exc import CommandError

    return (OSError, psycopg.Error, sqlalchemy.exc.SQLAlchemyError, CommandError)


def upgrade(db_url: str) -> None:
    """Apply every pending revision (``alembic upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(db_url).replace("%", "%%"))
    command.upgrade(cfg, "head")
