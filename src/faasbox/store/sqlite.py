"""The embedded store: SQLite in WAL mode with group commit.

One writer thread owns the write connection. Writers hand it a function of a connection; the
thread takes every write that is waiting (up to ``MAX_GROUP``), runs each inside its own
savepoint of one transaction, commits once, then resolves each caller's future. A burst of
concurrent writes therefore costs one commit (one fsync with ``synchronous=FULL``) instead of
one each. Reads run on a small thread pool with their own connections (WAL lets them proceed
beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from faasbox import errors
from faasbox.spec import FunctionSpec
from faasbox.store.base import FunctionRow, InvocationRecord, Store, VersionRow
from faasbox.tenancy.names import prefix_range

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

MAX_GROUP = 512
_STOP = object()


def migrations() -> list[tuple[int, str]]:
    """The versioned schema scripts, in order: ``[(version, sql), ...]``."""
    found = []
    for entry in resources.files("faasbox.store").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = sqlite3.Row
    return conn


class _Writer(threading.Thread):
    """Runs queued write functions in grouped transactions."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="faasbox-store-writer", daemon=True)
        self.conn = conn
        self.loop = loop
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.commits = 0

    def run(self) -> None:
        while True:
            first = self.inbox.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_GROUP:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self.inbox.put(_STOP)
                    break
                batch.append(item)
            self._run_group(batch)

    def _run_group(self, batch: list[tuple[WriteFn, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for fn, _ in batch:
                self.conn.execute("SAVEPOINT w")
                try:
                    outcomes.append((True, fn(self.conn)))
                    self.conn.execute("RELEASE w")
                except Exception as exc:  # one write's failure does not fail the group
                    self.conn.execute("ROLLBACK TO w")
                    self.conn.execute("RELEASE w")
                    outcomes.append((False, unavailable(exc)))
            self.conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            log.error("group commit of %d writes failed: %s", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            outcomes = [(False, unavailable(exc))] * len(batch)
        settled = [(fut, ok, value) for (_, fut), (ok, value) in zip(batch, outcomes, strict=True)]
        self.loop.call_soon_threadsafe(_settle_all, settled)  # one wakeup for the whole group


def unavailable(exc: Exception) -> Exception:
    """A database that cannot write (disk full, I/O error, locked) as StoreUnavailable;
    anything else (a constraint a write broke) as it is."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
        return errors.StoreUnavailable(f"the store cannot write: {exc}")
    return exc


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class SqliteStore(Store):
    def __init__(self, path: Path, synchronous: str = "FULL", readers: int = 4) -> None:
        self.path = path
        self.synchronous = synchronous
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="faasbox-store-read")
        self._local = threading.local()
        self._writer: _Writer | None = None
        self._unflushed: set[asyncio.Future[Any]] = set()

    # -- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # private to the server: SQLite gives the -wal and -shm files the same mode
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path.chmod(0o600)
        conn = _connect(self.path, self.synchronous)
        migrate(conn)
        self._writer = _Writer(conn, asyncio.get_running_loop())
        self._writer.start()

    async def close(self) -> None:
        if self._writer is None:
            return
        await self.flush()
        self._writer.inbox.put(_STOP)
        await asyncio.to_thread(self._writer.join)
        self._writer.conn.close()
        self._writer = None
        self._readers.shutdown(wait=True)

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a write for the next group commit; the future resolves after the commit."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writer.inbox.put((fn, fut))
        return fut

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.submit(fn)

    def write_later(self, fn: WriteFn) -> asyncio.Future[Any]:
        """Queue a write without waiting for it; reads wait for it (read-your-writes).
        Returns the future of its commit."""
        fut = self.submit(fn)
        self._unflushed.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        self._unflushed.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("deferred write failed: %s", fut.exception())

    async def flush(self) -> None:
        if self._unflushed:
            await asyncio.gather(*list(self._unflushed), return_exceptions=True)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.synchronous)
            self._local.conn = conn
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        await self.flush()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    # -- functions and versions -------------------------------------------------------------
    async def put_version(
        self, function: str, spec: FunctionSpec, code_sha: str, packages_key: str | None,
        now: float,
    ) -> VersionRow:
        spec_text = spec.model_dump_json()

        def tx(conn: sqlite3.Connection) -> VersionRow:
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
        def q(conn: sqlite3.Connection) -> FunctionRow | None:
            row = conn.execute(
                "SELECT name, created_at, updated_at, latest_version FROM functions"
                " WHERE name = ?", (name,),
            ).fetchone()
            return FunctionRow(*row) if row else None

        return await self.read(q)

    async def list_functions(self, tenant: str | None = None) -> list[FunctionRow]:
        clause, args = where_clause(*tenant_range("name", tenant))

        def q(conn: sqlite3.Connection) -> list[FunctionRow]:
            rows = conn.execute(
                "SELECT name, created_at, updated_at, latest_version FROM functions"
                f" {clause} ORDER BY name", args).fetchall()
            return [FunctionRow(*r) for r in rows]

        return await self.read(q)

    async def get_version(self, function: str, version: int) -> VersionRow | None:
        def q(conn: sqlite3.Connection) -> VersionRow | None:
            row = conn.execute(
                "SELECT function, version, created_at, code_sha, packages_key, spec FROM versions"
                " WHERE function = ? AND version = ?", (function, version),
            ).fetchone()
            return _version(row) if row else None

        return await self.read(q)

    async def list_versions(self, function: str) -> list[VersionRow]:
        def q(conn: sqlite3.Connection) -> list[VersionRow]:
            rows = conn.execute(
                "SELECT function, version, created_at, code_sha, packages_key, spec FROM versions"
                " WHERE function = ? ORDER BY version", (function,),
            ).fetchall()
            return [_version(r) for r in rows]

        return await self.read(q)

    async def purge_tenant(self, tenant: str) -> None:
        lo, hi = prefix_range(tenant)

        def tx(conn: sqlite3.Connection) -> None:
            for table, column in (("invocations", "function"), ("tasks", "function"),
                                  ("jobs", "function"), ("triggers", "function"),
                                  ("task_policies", "function"), ("versions", "function"),
                                  ("functions", "name")):
                conn.execute(f"DELETE FROM {table} WHERE {column} >= ? AND {column} < ?",
                             (lo, hi))

        await self.write(tx)

    async def delete_function(self, name: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM versions WHERE function = ?", (name,))
            return conn.execute("DELETE FROM functions WHERE name = ?", (name,)).rowcount > 0

        return await self.write(tx)

    # -- invocation records -----------------------------------------------------------------
    def record_invocation(self, record: InvocationRecord) -> asyncio.Future[None]:
        values = tuple(record.to_dict().values())
        marks = ", ".join("?" * len(values))

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO invocations ({_INV_COLUMNS}) VALUES ({marks})", values)

        return self.write_later(tx)

    async def get_invocation(self, invocation_id: str) -> InvocationRecord | None:
        def q(conn: sqlite3.Connection) -> InvocationRecord | None:
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

        def q(conn: sqlite3.Connection) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.read(q)

    async def list_invocations_since(
        self, function: str | None, since: float, limit: int = 100, tenant: str | None = None,
    ) -> list[InvocationRecord]:
        clause, args = where_clause(("started_at > ?", since), ("function = ?", function),
                                    *tenant_range("function", tenant))
        sql = (f"SELECT {_INV_COLUMNS} FROM invocations {clause}"
               " ORDER BY started_at ASC LIMIT ?")

        def q(conn: sqlite3.Connection) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.read(q)

    async def list_invocations_by_trace(self, trace_id: str,
                                        limit: int = 1000) -> list[InvocationRecord]:
        def q(conn: sqlite3.Connection) -> list[InvocationRecord]:
            return [_invocation(r) for r in conn.execute(
                f"SELECT {_INV_COLUMNS} FROM invocations WHERE trace_id = ?"
                " ORDER BY started_at ASC LIMIT ?", (trace_id, limit)).fetchall()]

        return await self.read(q)


_INV_COLUMNS = ", ".join(InvocationRecord.__dataclass_fields__)


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


def _version(row: sqlite3.Row) -> VersionRow:
    return VersionRow(row[0], row[1], row[2], row[3], row[4],
                      FunctionSpec.model_validate_json(row[5]))


def _invocation(row: sqlite3.Row) -> InvocationRecord:
    rec = InvocationRecord(*row)
    rec.cold_start = bool(rec.cold_start)
    return rec


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the schema scripts not yet applied; returns the schema version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " applied_at REAL NOT NULL DEFAULT (julianday('now')))"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    current = max(done, default=0)
    for version, sql in migrations():
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        log.info("applied schema migration %d", version)
        current = version
    return current


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
