"""Which backend a store URL names: ``sqlite:///PATH`` (the default, in the data dir) or
``postgresql://USER:PASSWORD@HOST:PORT/DB``."""

from __future__ import annotations

from pathlib import Path

from faasbox import errors
from faasbox.store.database import Database


def default_url(data: Path) -> str:
    return f"sqlite:///{data / 'faasbox.db'}"


def database_for(url: str, data: Path, synchronous: str = "FULL") -> Database:
    """The engine for ``url`` (empty: SQLite in ``data``)."""
    url = url or default_url(data)
    if url.startswith("sqlite:///"):
        from faasbox.store.sqlite.engine import SqliteDatabase

        return SqliteDatabase(Path(url.removeprefix("sqlite:///")), synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from faasbox.store.postgres.engine import PostgresDatabase

        return PostgresDatabase(url)
    raise errors.InvalidRequest(
        "the store URL must start with sqlite:/// or postgresql:// (got"
        f" {url.split('://')[0]!r})")


def is_shared(url: str) -> bool:
    """Whether several servers may use the store ``url`` at once."""
    return url.startswith(("postgresql://", "postgres://"))
