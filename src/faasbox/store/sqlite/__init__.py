"""The embedded backend: SQLite in WAL mode (``store/sqlite/sql`` holds its migrations)."""

from faasbox.store.sqlite.engine import SqliteDatabase, migrate, migrations

__all__ = ["SqliteDatabase", "migrate", "migrations"]
