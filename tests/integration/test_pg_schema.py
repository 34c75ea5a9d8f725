"""The PostgreSQL schema (src/faasbox/store/postgres/sql) matches SQLite's after its
migrations: the same tables, the same columns in the same order, the same index names."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

try:
    from faasbox.store.sqlite import migrate
except ImportError:  # the SQLite store as a package
    from faasbox.store.sqlite.engine import migrate  # type: ignore[import-not-found,no-redef]

# made by code (schema_migrations) or only in PostgreSQL (multi-server work)
IGNORED_TABLES = {"schema_migrations", "servers", "code_blobs"}


def _sqlite_schema(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        columns = {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
                   for t in tables if t not in IGNORED_TABLES}
        indexes = {r[0] for r in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"
            " AND name NOT LIKE 'sqlite_autoindex_%'") if r[1] not in IGNORED_TABLES}
        return columns, indexes
    finally:
        conn.close()


def _pg_schema(url: str) -> tuple[dict[str, list[str]], set[str]]:
    with psycopg.connect(url) as conn:
        columns: dict[str, list[str]] = {}
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
            if table not in IGNORED_TABLES:
                columns.setdefault(table, []).append(column)
        # indexes that back a primary key or a unique constraint are SQLite's autoindexes
        indexes = {r[0] for r in conn.execute(
            "SELECT i.relname, t.relname FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = 'public'"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid"
            "                 AND c.contype IN ('p', 'u'))") if r[1] not in IGNORED_TABLES}
        return columns, indexes


def test_the_postgres_schema_has_sqlites_tables_columns_and_indexes(
        pg_url: str, tmp_path: Path) -> None:
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "faasbox.db")
    pg_columns, pg_indexes = _pg_schema(pg_url)
    assert sorted(pg_columns) == sorted(sqlite_columns)
    for table, columns in sqlite_columns.items():
        assert pg_columns[table] == columns, table
    assert pg_indexes == sqlite_indexes


def test_the_postgres_schema_has_the_multi_server_tables(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_name IN ('servers', 'code_blobs') ORDER BY table_name,"
            " ordinal_position").fetchall()
    assert [c for t, c in rows if t == "servers"] == [
        "id", "started_at", "heartbeat_at", "url", "info"]
    assert [c for t, c in rows if t == "code_blobs"] == ["sha", "data", "created_at"]


def test_the_postgres_schema_keeps_sqlites_constraints_and_defaults(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        # the default tenant exists, as after SQLite's 0004
        assert conn.execute("SELECT name FROM tenants").fetchall() == [("default",)]
        # audit ids are generated
        conn.execute("INSERT INTO audit (at, tenant, action, target) VALUES (1, 'a', 'x', 'y')")
        conn.execute("INSERT INTO audit (at, tenant, action, target) VALUES (2, 'a', 'x', 'y')")
        assert [r[0] for r in conn.execute("SELECT id FROM audit ORDER BY id")] == [1, 2]
        # the partial unique index: one task per (function, key), many without a key
        insert = ("INSERT INTO tasks (id, function, status, event, idempotency_key,"
                  " max_attempts, created_at, run_at, expires_at)"
                  " VALUES (%s, 'default/f', 'queued', %s, %s, 3, 0, 0, 9)")
        conn.execute(insert, ("t1", b"{}", None))
        conn.execute(insert, ("t2", b"{}", None))
        conn.execute(insert, ("t3", b"{}", "k"))
        row = conn.execute("SELECT source, priority, attempts, cancel_requested,"
                           " invocation_ids FROM tasks WHERE id = 't1'").fetchone()
        assert row == ("async", 0, 0, 0, "[]")
        conn.commit()
        try:
            conn.execute(insert, ("t4", b"{}", "k"))
        except psycopg.errors.UniqueViolation:
            conn.rollback()
        else:
            raise AssertionError("a second task with the same idempotency key was accepted")
