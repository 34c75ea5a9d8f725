"""Which backend a store URL names: ``sqlite:///PATH`` or
``postgresql://USER:PASSWORD@HOST:PORT/DB``; none is SQLite in the data dir."""

from __future__ import annotations

from pathlib import Path

from faasbox import errors
from faasbox.store.database import Database


def database_for(url: str, data: Path, synchronous: str = "FULL") -> Database:
    """The engine for ``url`` (empty: SQLite in ``data``)."""
    if url.startswith("sqlite:///") or not url:
        from faasbox.store.sqlite.engine import SqliteDatabase

        # a file the URL names may be shared by several servers; the default is this one's
        path = Path(url.removeprefix("sqlite:///")) if url else data / "faasbox.db"
        return SqliteDatabase(path, synchronous, shared=bool(url))
    if url.startswith(("postgresql://", "postgres://")):
        from faasbox.store.postgres.engine import PostgresDatabase

        return PostgresDatabase(url)
    raise errors.InvalidRequest(
        "the store URL must start with sqlite:/// or postgresql:// (got"
        f" {url.split('://')[0]!r})")


def is_shared(url: str) -> bool:
    """Whether several servers may use the store ``url`` at once: PostgreSQL, or an SQLite
    file named by its URL (on one machine)."""
    return url.startswith(("postgresql://", "postgres://", "sqlite:///"))
