"""Which backend a store URL names: ``sqlite:///PATH`` or
``postgresql://USER:PASSWORD@HOST:PORT/DB``; none is SQLite in the data dir."""

from __future__ import annotations

import re
from pathlib import Path

from faasbox import errors
from faasbox.store.database import Database


def database_for(url: str, data: Path, synchronous: str = "FULL") -> Database:
    """The engine for ``url`` (empty: SQLite in ``data``)."""
    if url.startswith("sqlite:///") or not url:
        from faasbox.store.sqlite.engine import SqliteDatabase

        # a file the URL names may be shared by several servers; the default is this one's
        named = url.removeprefix("sqlite:///")
        if url and not named.startswith("/"):
            raise errors.InvalidRequest(
                f"an SQLite store URL names an absolute path: sqlite:////PATH, not {url!r}")
        # the real file: its lock files and sockets sit beside it, whatever link names it
        path = Path(named).resolve() if url else data / "faasbox.db"
        return SqliteDatabase(path, synchronous, shared=bool(url))
    if url.startswith(("postgresql://", "postgres://")):
        from faasbox.store.postgres.engine import PostgresDatabase

        return PostgresDatabase(url)
    raise errors.InvalidRequest(
        "the store URL must start with sqlite:/// or postgresql:// (got"
        f" {url.split('://')[0]!r})")


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)
