"""The database engine under the relational store: group commit, reads, a dialect.

The store's queries are functions of a connection (``fn(conn) -> value``) written once in
SQL that both backends run (``store/relational/``). An engine runs them:

- **Writes** go to one writer thread per server, which owns the write connection. It takes
  every write that is waiting (up to ``MAX_GROUP``), runs each inside its own savepoint of one
  transaction, commits once, then resolves each caller's future: a burst of concurrent writes
  costs one commit instead of one each, and one write's failure does not fail its group. A
  write of one statement needs no savepoint where a failed statement leaves its transaction
  as it was (SQLite). Where a failed statement aborts the transaction (PostgreSQL), a group
  first runs without savepoints (a round trip each) and, only if a write fails, is undone and
  run again with them. On SQLite, records sent while the writer has nothing queued or running
  commit on the event loop's own thread (about 60 µs), which saves the two thread hand-offs
  that cost more than the commit; so does any write that need not reach the disk while writes
  come seldom (under 3,200 a second: a lone task's lease and end, 1 ms sooner each).
  Checkpoints (SQLite) fold the log into the database in two steps: the long one (10-20 ms of
  copying and syncing, longer than a hundred commits) on a thread and a connection of their
  own, beside the writes; then a short one on the writer thread between two groups, for the
  pages written meanwhile, so that the log is wholly folded and the next write starts it again
  from the beginning (else it would grow without end under a steady load).
- **Durability** is per write. A ``durable`` write (the default: a deploy, an accepted task)
  is on disk when its future resolves, so it outlives a crash of the machine. The hot writes
  that only record what happened (invocation records, leases, a task's end) pass
  ``durable=False``: they outlive a crash or ``kill -9`` of the server, and a crash of the
  machine may lose the last of them (a task whose end is lost runs again). A group syncs to
  disk when any of its writes is durable, and the log is written in order, so a durable write
  also makes every write before it durable.
- **Reads** run on a small thread pool, each thread with its own connection.
- **Aside**: a write that must not wait behind the queued groups (a server's heartbeat: under
  load a group of a database server's writes takes a round trip each, and a heartbeat queued
  behind two of them made a busy server look dead) runs alone on a connection of its own
  where the backend allows one (``side_writes``), else in the writer's next group, ahead
  of the writes queued before it (SQLite: one writer; it waits for the group in progress).
- **Placeholders** are ``?``; an engine whose driver wants another style translates (once per
  statement text). The few statements that differ by dialect ask :class:`Dialect`.

Backends: ``store/sqlite`` (embedded, the default; a file several servers on one machine may
share) and ``store/postgres`` (several servers on one database).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from faasbox.store.groupcommit import (
    STOP,
    Checkpointer,
    Write,
    WriteFn,
    Writer,
    settle_all,
    settled,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# below 3,200 writes/s, a write that need not reach the disk may commit on the loop's thread
QUIET_WRITES, QUIET_WINDOW_S = 32, 0.01


class Row(Protocol):
    """A result row: by position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """What a query function may use of its connection (sqlite3's shape)."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...




class Dialect:
    """The SQL that differs between backends (SQLite's here; PostgreSQL overrides)."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    # the lease walks this index in (priority, run_at) order; SQLite's planner, without
    # statistics, would take (function, run_at) and sort the whole backlog
    lease_index = " INDEXED BY tasks_runnable_priority"
    lease_lock = ""  # one writer: nothing to skip
    # a failed statement is undone by itself and leaves its transaction open
    atomic_statements = True
    insertion_order = "rowid"
    greatest = "max"  # of two values

    def json_append(self, column: str) -> str:
        """``column`` (a JSON array in text) with one more element, the next parameter."""
        return f"json_insert({column}, '$[#]', ?)"

    def json_array_length(self, column: str, path: tuple[str, ...]) -> str:
        """Length of the JSON array at ``path`` in the text ``column`` (0 when absent)."""
        return f"COALESCE(json_array_length({column}, '$.{'.'.join(path)}'), 0)"


class Database(abc.ABC):
    """One backend's connections: a writer thread with group commit and a reader pool."""

    dialect: Dialect = Dialect()
    shared = False  # several servers may use it at once

    def __init__(self, readers: int = 4) -> None:
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="faasbox-store-read")
        self._local = threading.local()
        self._writer: Writer | None = None
        self._checkpointer: Checkpointer | None = None
        self._unflushed: set[asyncio.Future[Any]] = set()
        self._recent: deque[float] = deque(maxlen=QUIET_WRITES)  # when the last writes came
        self._opened: list[Any] = []  # the threads' connections, closed with the store
        self._opened_lock = threading.Lock()
        self._aside: ThreadPoolExecutor | None = None  # side_writes: a thread of their own

    # -- what a backend provides ----------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> Any:
        """A new connection, ready for queries."""

    @abc.abstractmethod
    def migrate(self, conn: Any) -> int:
        """Bring the schema up to date; returns its version."""

    @abc.abstractmethod
    def unavailable(self, exc: Exception) -> Exception:
        """``exc`` as the caller should see it: a database that cannot write (disk full,
        unreachable) as :class:`~faasbox.errors.StoreUnavailable`, a broken constraint as it
        is."""

    def retryable(self, exc: Exception) -> bool:
        """Whether a write that raised ``exc`` may simply run again (a deadlock)."""
        return False

    def broken(self, conn: Any) -> bool:
        """Whether ``conn`` is lost and must be replaced (a backend with a network)."""
        return False

    # a group may commit on the event loop's own thread when the writer has nothing to do
    # (an embedded database: no network wait)
    inline_writes = False
    quiet_window_s = QUIET_WINDOW_S

    # writes aside run on a connection of their own (a database server, whose connections
    # write side by side); else they join the writer's queue
    side_writes = False

    def aside_connection(self, conn: Any) -> None:  # noqa: B027 - most backends need none
        """Set up the connection of writes aside (once, after it is made)."""

    def writer_connection(self, conn: Any) -> None:  # noqa: B027 - most backends need none
        """Set up the writer's connection (once, before its first group)."""

    # the log is folded into the database by checkpoints (``checkpoint``), on their own thread
    checkpoints = False

    def checkpoint(self, conn: Any) -> None:  # noqa: B027
        """Fold the log into the database (on the checkpoint thread's own connection, beside
        the writes)."""

    def begin(self, conn: Any, durable: bool) -> None:
        """Begin a group's transaction; ``durable`` when its commit must reach the disk."""
        conn.execute(self.dialect.begin)

    def prepare(self) -> None:  # noqa: B027 - most backends need none
        """Set-up before the first connection (directories, file modes)."""

    @property
    def description(self) -> str:
        return self.dialect.name

    def claim(self) -> None:  # noqa: B027 - a server database needs none
        """Take the database for this server, before anything else is set up (raises
        :class:`~faasbox.errors.Unavailable` when another server's use excludes this one)."""

    def lock_writes(self, blocking: bool) -> bool:
        """Take the turn to write among the servers that share the database (False: another
        holds it and ``blocking`` is False); one process writes at a time already."""
        return True

    def unlock_writes(self) -> None:  # noqa: B027 - no turn to give back
        """Give the turn back (after the group's commit or rollback)."""

    def publish(self, message: str) -> None:  # noqa: B027 - nobody to tell
        """Tell the other servers on this store (none where the store is not shared)."""

    def listen(self, callback: Callable[[str], None]) -> None:  # noqa: B027
        """Call ``callback`` on the event loop with each message another server publishes."""

    # -- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self.prepare)
        conn = await asyncio.to_thread(self.connect)
        await asyncio.to_thread(self.migrate, conn)
        await asyncio.to_thread(self.writer_connection, conn)
        checkpointer = None
        if self.checkpoints:
            checkpointer = Checkpointer(self, await asyncio.to_thread(self.connect))
        self._writer = Writer(self, conn, asyncio.get_running_loop(), checkpointer)
        self._writer.start()
        if checkpointer is not None:
            checkpointer.writer = self._writer
            checkpointer.start()
            self._checkpointer = checkpointer

    async def close(self) -> None:
        if self._writer is None:
            return
        await self.flush()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        self._writer.put(STOP)
        await asyncio.to_thread(self._writer.join)
        with contextlib.suppress(Exception):
            self._writer.conn.close()
        self._writer = None
        self._readers.shutdown(wait=True)
        if self._aside is not None:
            self._aside.shutdown(wait=True)
            self._aside = None
        with self._opened_lock:
            for conn in self._opened:
                with contextlib.suppress(Exception):
                    conn.close()
            self._opened = []

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    def submit(self, fn: Callable[[Any], T], durable: bool = True,
               single: bool = False) -> asyncio.Future[T]:
        """Queue a write for the next group commit; the future resolves after the commit.
        ``durable``: see the module's docstring; ``single``: ``fn`` runs one statement."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        writer = self._writer
        # the writer's loop: no lookup of the running loop per write
        fut: asyncio.Future[T] = writer.loop.create_future()
        item: Write = (fn, fut, durable, single)
        # _quiet counts every write toward the rate, durable ones too
        if not (self.inline_writes and self._quiet() and not durable
                and self._commit_here(writer, [item])):
            writer.put(item)
        return fut

    def _commit_here(self, writer: Writer, batch: list[Write]) -> bool:
        """Commit ``batch`` on the event loop's thread if the writer has nothing queued or
        running (``inline_writes``); False: it did not, the caller hands it over."""
        if not (self.inline_writes and writer.idle() and writer.lock.acquire(blocking=False)):
            return False
        try:
            if not self.lock_writes(blocking=False):  # another server is writing
                return False
            try:
                outcomes = writer.commit(batch)
            finally:
                self.unlock_writes()
        finally:
            writer.lock.release()
        settle_all(settled(batch, outcomes))
        return True

    def _quiet(self) -> bool:
        """Whether writes come seldom (fewer than ``QUIET_WRITES`` in ``quiet_window_s``): then
        a write that need not reach the disk commits on the event loop's thread, sparing the
        two thread hand-offs (a lone task's lease and end); under load they go to the writer,
        which groups them and commits beside the loop."""
        now = time.monotonic()
        recent = self._recent
        quiet = len(recent) < QUIET_WRITES or now - recent[0] > self.quiet_window_s
        recent.append(now)
        return quiet

    async def write(self, fn: Callable[[Any], T], durable: bool = True,
                    single: bool = False) -> T:
        return await self.submit(fn, durable, single)

    def submit_all(self, writes: list[tuple[WriteFn, asyncio.Future[Any]]], durable: bool,
                   single: bool) -> None:
        """Queue several writes at once (one wakeup of the writer); each resolves its own
        future after the commit. When the writer is idle and the database is embedded, they
        commit right here instead: no thread hand-off either way (``inline_writes``)."""
        writer = self._writer
        if writer is None:
            raise RuntimeError("store is not open")
        batch = [(fn, fut, durable, single) for fn, fut in writes]
        if not self._commit_here(writer, batch):
            writer.put(batch)

    async def write_aside(self, fn: Callable[[Any], T]) -> T:
        """Run the one-statement write ``fn`` now, not behind the queued groups: alone, on a
        connection of its own (``side_writes``; its own transaction: it neither waits for the
        writer nor sees its groups), else in the writer's next group, ahead of the writes
        queued before it (it waits only for the group being committed)."""
        if not self.side_writes:
            writer = self._writer
            if writer is None:
                raise RuntimeError("store is not open")
            fut: asyncio.Future[T] = writer.loop.create_future()
            writer.put_first((fn, fut, False, True))
            return await fut
        if self._aside is None:
            self._aside = ThreadPoolExecutor(1, thread_name_prefix="faasbox-store-aside")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._aside, self._write_aside, fn)

    def _write_aside(self, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self._connection(self.aside_connection))
        except Exception as exc:
            raise self.unavailable(exc) from exc

    def write_later(self, fn: WriteFn, durable: bool = True,
                    single: bool = False) -> asyncio.Future[Any]:
        """Queue a write without waiting for it; reads wait for it (read-your-writes).
        Returns the future of its commit."""
        return self.track(self.submit(fn, durable, single))

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Reads wait for the write of ``fut`` (read-your-writes); its failure is logged."""
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

    def _connection(self, setup: Callable[[Any], None] | None = None) -> Any:
        """This thread's own connection (a reader's, or the writes aside's), made again when
        lost; ``setup`` runs on a new one. Closed with the store."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self.broken(conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._local.conn = None
            conn = self.connect()
            if setup is not None:
                setup(conn)
            self._local.conn = conn
            with self._opened_lock:
                self._opened = [c for c in self._opened if c is not None and not self.broken(c)]
                self._opened.append(conn)
        return conn

    def _read(self, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self._connection())
        except Exception as exc:
            raise self.unavailable(exc) from exc

    async def read(self, fn: Callable[[Any], T]) -> T:
        await self.flush()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn)


def statements(sql: str) -> list[str]:
    """The statements of a schema script (``--`` comment lines dropped)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
