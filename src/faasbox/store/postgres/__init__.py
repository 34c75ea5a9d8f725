"""Several servers on one PostgreSQL (``store/postgres/sql`` holds its migrations)."""

from faasbox.store.postgres.engine import PostgresDatabase

__all__ = ["PostgresDatabase"]
