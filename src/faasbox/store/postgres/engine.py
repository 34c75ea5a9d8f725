"""PostgreSQL through psycopg 3: the same group-commit engine as SQLite, over the network.

Several servers share one database. Each keeps one write connection (its writer thread,
group commit) and one read connection per reader thread; a lost connection is replaced on
next use, and while the database is away every call fails fast with
:class:`~faasbox.errors.StoreUnavailable` (503 ``store_unavailable``). Leases take rows with
``FOR UPDATE SKIP LOCKED``, so two servers never lease the same task and never wait on each
other; a deadlock between two servers' groups is retried.

The store's SQL uses ``?`` placeholders (SQLite's); statements are translated once to
psycopg's ``%s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from faasbox import errors
from faasbox.store.database import Database, Dialect, statements
from faasbox.store.url import redact

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5
CHANNEL = "faasbox"
MISSING = ("PostgreSQL needs the postgres extra: pip install 'faasbox[postgres]'"
           " (psycopg 3)")


def migrations() -> list[tuple[int, str]]:
    found = []
    for entry in resources.files("faasbox.store.postgres").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class PostgresDialect(Dialect):
    name = "postgresql"
    begin = "BEGIN"
    lease_index = ""
    lease_lock = " FOR UPDATE SKIP LOCKED"
    atomic_statements = False  # a failed statement aborts the whole transaction
    insertion_order = "id"
    greatest = "GREATEST"

    def json_append(self, column: str) -> str:
        return f"(COALESCE({column}, '[]')::jsonb || jsonb_build_array(?::text))::text"

    def json_array_length(self, column: str, path: tuple[str, ...]) -> str:
        at = f"({column})::jsonb #> '{{{','.join(path)}}}'"
        return (f"COALESCE(CASE WHEN jsonb_typeof({at}) = 'array'"
                f" THEN jsonb_array_length({at}) END, 0)")


_MARK = re.compile(r"\?")


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``?`` placeholders as ``%s`` (and a literal ``%`` doubled)."""
    return _MARK.sub("%s", sql.replace("%", "%%"))


class PgRow(tuple[Any, ...]):
    """A row by position or by column name (what sqlite3.Row gives)."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    index = {c.name: i for i, c in enumerate(desc)} if desc else {}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._index = index
        return row

    return make


class _Cursor:
    """The part of a sqlite3 cursor the store uses."""

    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _text_safe(params: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold NUL: it is kept as U+FFFD (a function's log with one is
    stored; a name with one matches nothing, as on SQLite)."""
    if any(isinstance(p, str) and "\x00" in p for p in params):
        return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params)
    return params


class PgConn:
    """A psycopg connection with sqlite3's calling convention (``?`` and ``execute``)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        if not params:  # no substitution: the text goes as it is
            return _Cursor(self.raw.execute(sql))
        return _Cursor(self.raw.execute(translate(sql), _text_safe(params)))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(translate(sql), [_text_safe(p) for p in params])

    def close(self) -> None:
        self.raw.close()


if psycopg is not None:
    class _BoolDumper(Dumper):
        """Booleans as 0/1 in the integer columns both backends share."""

        oid = psycopg.adapters.types["int8"].oid

        def dump(self, obj: bool) -> bytes:
            return b"1" if obj else b"0"

    class _NumericLoader(Loader):
        """SUM and AVG of integers come back as numeric: an int when whole, else a float."""

        format = Format.TEXT

        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            try:
                return int(text)
            except ValueError:
                return float(text)


class PostgresDatabase(Database):
    dialect = PostgresDialect()
    shared = True

    def __init__(self, url: str, readers: int = 4) -> None:
        if psycopg is None:
            raise errors.StoreUnavailable(MISSING)
        super().__init__(readers)
        self.url = url
        self._listener: _Listener | None = None

    def publish(self, message: str) -> None:
        self.write_later(lambda conn: conn.execute(
            f"SELECT pg_notify('{CHANNEL}', ?)", (message,)))

    def listen(self, callback: Callable[[str], None]) -> None:
        self._listener = _Listener(self, callback, asyncio.get_running_loop())
        self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.stopping.set()
            await asyncio.to_thread(self._listener.join)
            self._listener = None
        await super().close()

    @property
    def description(self) -> str:
        return f"postgresql ({redact(self.url)})"

    def connect(self) -> PgConn:
        try:
            raw = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                  row_factory=_row_factory)
        except psycopg.Error as exc:
            raise errors.StoreUnavailable(
                f"cannot reach PostgreSQL at {redact(self.url)}: {_first_line(exc)}") from exc
        raw.adapters.register_dumper(bool, _BoolDumper)
        raw.adapters.register_loader("numeric", _NumericLoader)
        return PgConn(raw)

    def migrate(self, conn: PgConn) -> int:
        return migrate(conn)

    def begin(self, conn: PgConn, durable: bool) -> None:
        conn.execute(self.dialect.begin)
        if not durable:  # commit without waiting for the WAL flush (see store/database.py)
            conn.execute("SET LOCAL synchronous_commit TO off")

    side_writes = True

    def aside_connection(self, conn: PgConn) -> None:
        # its writes (heartbeats) need not wait for the log's flush, as the writer's hot ones
        conn.execute("SET synchronous_commit TO off")

    def broken(self, conn: Any) -> bool:
        raw = getattr(conn, "raw", None)
        return raw is None or bool(raw.closed) or raw.broken

    def retryable(self, exc: Exception) -> bool:
        return isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)

    def unavailable(self, exc: Exception) -> Exception:
        if isinstance(exc, errors.FaasboxError):
            return exc
        if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown |
                      pg_errors.CannotConnectNow | pg_errors.DiskFull |
                      pg_errors.InsufficientResources):
            return errors.StoreUnavailable(f"the store is unavailable: {_first_line(exc)}")
        return exc


class _Listener(threading.Thread):
    """LISTENs on its own connection and hands each message to the event loop; reconnects
    with backoff while the database is away (the servers' slow polls cover the gap)."""

    def __init__(self, db: PostgresDatabase, callback: Callable[[str], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="faasbox-store-listen", daemon=True)
        self.db, self.callback, self.loop = db, callback, loop
        self.stopping = threading.Event()

    def run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                conn = self.db.connect()
            except errors.StoreUnavailable:
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                conn.raw.execute(f"LISTEN {CHANNEL}")
                while not self.stopping.is_set():
                    for note in conn.raw.notifies(timeout=0.5):
                        self.loop.call_soon_threadsafe(self.callback, note.payload)
            except psycopg.Error as exc:
                log.warning("lost the PostgreSQL notification connection: %s", _first_line(exc))
            finally:
                with contextlib.suppress(Exception):
                    conn.close()


def migrate(conn: PgConn) -> int:
    """Apply the schema scripts not yet applied, one server at a time (an advisory lock)."""
    conn.execute("SELECT pg_advisory_lock(7406152)")  # 'faasbox' schema lock
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY,"
            " applied_at DOUBLE PRECISION NOT NULL DEFAULT EXTRACT(EPOCH FROM now()))")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        current = max(done, default=0)
        for version, sql in migrations():
            if version in done:
                continue
            conn.execute("BEGIN")
            try:
                for stmt in statements(sql):
                    conn.raw.execute(stmt)  # DDL as written: no placeholders
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
            log.info("applied PostgreSQL schema migration %d", version)
            current = version
        return current
    finally:
        conn.execute("SELECT pg_advisory_unlock(7406152)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
