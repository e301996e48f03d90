"""Alembic migrations of the PostgreSQL state (``agent.lookout_local.migrate`` runs them)."""
