"""Functions, versions and invocation records in SQL, on either backend's engine.

:class:`SqlStore` is the :class:`~faasbox.store.base.Store` of both backends; the other
relational stores (tasks, triggers, tenancy, delivery, usage) write and read through it.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from typing import Any, TypeVar

from faasbox.spec import FunctionSpec
from faasbox.store.base import FunctionRow, InvocationRecord, Store, VersionRow
from faasbox.store.database import Conn, Database, Dialect, Row
from faasbox.store.groupcommit import WriteFn
from faasbox.tenancy.names import prefix_range

T = TypeVar("T")


class SqlStore(Store):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._records: list[tuple[WriteFn, asyncio.Future[Any]]] = []

    @property
    def dialect(self) -> Dialect:
        return self.db.dialect

    @property
    def shared(self) -> bool:
        return self.db.shared

    # -- code packages (shared stores) ------------------------------------------------------
    async def put_code(self, sha: str, data: bytes, now: float) -> None:
        def tx(conn: Conn) -> None:
            conn.execute("INSERT INTO code_blobs (sha, data, created_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (sha) DO NOTHING", (sha, data, now))

        await self.write(tx)

    async def get_code(self, sha: str) -> bytes | None:
        def q(conn: Conn) -> bytes | None:
            row = conn.execute("SELECT data FROM code_blobs WHERE sha = ?", (sha,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self.read(q)

    # -- the engine's calls -----------------------------------------------------------------
    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    @property
    def commits(self) -> int:
        return self.db.commits

    # every write goes after the records queued before it (a task's end after its record)
    def submit(self, fn: Callable[[Any], T], durable: bool = True,
               single: bool = False) -> asyncio.Future[T]:
        if self._records:
            self._send_records()
        return self.db.submit(fn, durable, single)

    async def write(self, fn: Callable[[Any], T], durable: bool = True,
                    single: bool = False) -> T:
        return await self.submit(fn, durable, single)

    async def write_aside(self, fn: Callable[[Any], T]) -> T:
        """A one-statement write that goes before the queued ones (a heartbeat)."""
        return await self.db.write_aside(fn)

    def write_later(self, fn: WriteFn, durable: bool = True,
                    single: bool = False) -> asyncio.Future[Any]:
        if self._records:
            self._send_records()
        return self.db.write_later(fn, durable, single)

    async def flush(self) -> None:
        await self.db.flush()

    async def read(self, fn: Callable[[Any], T]) -> T:
        return await self.db.read(fn)

    # -- functions and versions -------------------------------------------------------------
    async def put_version(
        self, function: str, spec: FunctionSpec, code_sha: str, packages_key: str | None,
        now: float,
    ) -> VersionRow:
        spec_text = spec.model_dump_json()

        def tx(conn: Conn) -> VersionRow:
            row = conn.execute(
                "SELECT latest_version FROM functions WHERE name = ?", (function,)
            ).fetchone()
            version = 1 if row is None else row[0] + 1
            conn.execute(
                "INSERT INTO versions (function, version, created_at, code_sha, packages_key,"
                " spec) VALUES (?, ?, ?, ?, ?, ?)",
                (function, version, now, code_sha, packages_key, spec_text),
            )
            conn.execute(
                "INSERT INTO functions (name, created_at, updated_at, latest_version)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " updated_at = excluded.updated_at, latest_version = excluded.latest_version",
                (function, now, now, version),
            )
            return VersionRow(function, version, now, code_sha, packages_key, spec)

        return await self.write(tx)

    async def get_function(self, name: str) -> FunctionRow | None:
        def q(conn: Conn) -> FunctionRow | None:
            row = conn.execute(
                "SELECT name, created_at, updated_at, latest_version FROM functions"
                " WHERE name = ?", (name,),
            ).fetchone()
            return FunctionRow(*row) if row else None

        return await self.read(q)

    async def list_functions(self, tenant: str | None = None) -> list[FunctionRow]:
        clause, args = where_clause(*tenant_range("name", tenant))

        def q(conn: Conn) -> list[FunctionRow]:
            rows = conn.execute(
                "SELECT name, created_at, updated_at, latest_version FROM functions"
                f" {clause} ORDER BY name", args).fetchall()
            return [FunctionRow(*r) for r in rows]

        return await self.read(q)

    async def get_version(self, function: str, version: int) -> VersionRow | None:
        def q(conn: Conn) -> VersionRow | None:
            row = conn.execute(
                "SELECT function, version, created_at, code_sha, packages_key, spec FROM versions"
                " WHERE function = ? AND version = ?", (function, version),
            ).fetchone()
            return _version(row) if row else None

        return await self.read(q)

    async def list_versions(self, function: str) -> list[VersionRow]:
        def q(conn: Conn) -> list[VersionRow]:
            rows = conn.execute(
                "SELECT function, version, created_at, code_sha, packages_key, spec FROM versions"
                " WHERE function = ? ORDER BY version", (function,),
            ).fetchall()
            return [_version(r) for r in rows]

        return await self.read(q)

    async def purge_tenant(self, tenant: str) -> None:
        lo, hi = prefix_range(tenant)

        def tx(conn: Conn) -> None:
            conn.execute("DELETE FROM delivery_attempts WHERE delivery_id IN"
                         " (SELECT id FROM deliveries WHERE tenant = ?)", (tenant,))
            for table in ("deliveries", "webhook_secrets", "workflows"):
                conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (tenant,))
            for table, column in (("invocations", "function"), ("tasks", "function"),
                                  ("jobs", "function"), ("triggers", "function"),
                                  ("task_policies", "function"), ("queue_state", "function"),
                                  ("subscriptions", "topic"), ("subscriptions", "function"),
                                  ("topics", "name"), ("workflow_definitions", "name"),
                                  ("versions", "function"), ("functions", "name")):
                conn.execute(f"DELETE FROM {table} WHERE {column} >= ? AND {column} < ?",
                             (lo, hi))

        await self.write(tx)

    async def delete_function(self, name: str) -> bool:
        def tx(conn: Conn) -> bool:
            conn.execute("DELETE FROM versions WHERE function = ?", (name,))
            return conn.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount > 0

        return await self.write(tx)

    # -- invocation records -----------------------------------------------------------------
    def record_invocation(self, record: InvocationRecord) -> asyncio.Future[None]:
        values = record_values(record)

        def tx(conn: Conn) -> None:
            conn.execute(INSERT_RECORD, values)

        # the records of one turn of the event loop go to the writer together (one wakeup)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._records.append((tx, fut))
        if len(self._records) == 1:
            loop.call_soon(self._send_records)
        return self.db.track(fut)

    def _send_records(self) -> None:
        records, self._records = self._records, []
        if not records:  # sent already, ahead of another write
            return
        try:
            # outlives a crash of the server; a crash of the machine may lose the last ones
            self.db.submit_all(records, durable=False, single=True)
        except RuntimeError as exc:  # the store was closed meanwhile
            for _, fut in records:
                fut.set_exception(exc)

    async def get_invocation(self, invocation_id: str) -> InvocationRecord | None:
        def q(conn: Conn) -> InvocationRecord | None:
            row = conn.execute(
                f"SELECT {_INV_COLUMNS} FROM invocations WHERE id = ?", (invocation_id,)
            ).fetchone()
            return _invocation(row) if row else None

        return await self.read(q)

    async def list_invocations(
        self, function: str | None = None, limit: int = 50, before: float | None = None,
        tenant: str | None = None,
    ) -> list[InvocationRecord]:
        clause, args = where_clause(("function = ?", function), ("started_at < ?", before),
                                    *tenant_range("function", tenant))
        sql = (f"SELECT {_INV_COLUMNS} FROM invocations {clause}"
               " ORDER BY started_at DESC LIMIT ?")

        def q(conn: Conn) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.read(q)

    async def list_invocations_since(
        self, function: str | None, since: float, limit: int = 100, tenant: str | None = None,
    ) -> list[InvocationRecord]:
        clause, args = where_clause(("started_at > ?", since), ("function = ?", function),
                                    *tenant_range("function", tenant))
        sql = (f"SELECT {_INV_COLUMNS} FROM invocations {clause}"
               " ORDER BY started_at ASC LIMIT ?")

        def q(conn: Conn) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.read(q)

    async def list_invocations_by_trace(self, trace_id: str,
                                        limit: int = 1000) -> list[InvocationRecord]:
        def q(conn: Conn) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(
                f"SELECT {_INV_COLUMNS} FROM invocations WHERE trace_id = ?"
                " ORDER BY started_at ASC LIMIT ?", (trace_id, limit)).fetchall()]

        return await self.read(q)


_INV_FIELDS = tuple(InvocationRecord.__dataclass_fields__)
_INV_COLUMNS = ", ".join(_INV_FIELDS)
INSERT_RECORD = (f"INSERT INTO invocations ({_INV_COLUMNS})"
                 f" VALUES ({', '.join('?' * len(_INV_FIELDS))})")


_ROW = operator.attrgetter(*_INV_FIELDS)  # one C call for the whole tuple


def record_values(record: InvocationRecord) -> tuple[Any, ...]:
    """The row of ``record`` for :data:`INSERT_RECORD`."""
    row: tuple[Any, ...] = _ROW(record)
    return row


def tenant_range(column: str, tenant: str | None) -> list[tuple[str, Any]]:
    """Conditions that keep one tenant's rows (``column`` holds qualified names)."""
    if tenant is None:
        return []
    lo, hi = prefix_range(tenant)
    return [(f"{column} >= ?", lo), (f"{column} < ?", hi)]


def where_clause(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """``WHERE`` text and arguments from ``(sql, value)`` pairs whose value is not None."""
    used = [(sql, value) for sql, value in conditions if value is not None]
    if not used:
        return "", []
    return "WHERE " + " AND ".join(sql for sql, _ in used), [value for _, value in used]


def _version(row: Row) -> VersionRow:
    return VersionRow(row[0], row[1], row[2], row[3], row[4],
                      FunctionSpec.model_validate_json(row[5]))


def _invocation(row: Row) -> InvocationRecord:
    rec = InvocationRecord(*row)
    rec.cold_start = bool(rec.cold_start)
    return rec
