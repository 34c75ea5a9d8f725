"""Group commit: the writer thread that runs the store's writes in grouped transactions, and
the checkpointer beside it (SQLite). How writes are grouped, undone and made durable is told
in :mod:`faasbox.store.database`, whose :class:`Database` owns one of each."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faasbox.store.database import Database

log = logging.getLogger(__name__)

MAX_GROUP = 512
CHECKPOINT_EVERY = 256  # groups
STOP = object()
CHECKPOINT = object()  # the short step of a checkpoint, on the writer thread
FIRST = object()  # wakes the writer for a write put first (``put_first``)

WriteFn = Callable[[Any], Any]
Write = tuple[WriteFn, "asyncio.Future[Any]", bool, bool]  # fn, its future, durable, single


class Writer(threading.Thread):
    """Runs queued write functions in grouped transactions."""

    def __init__(self, db: Database, conn: Any, loop: asyncio.AbstractEventLoop,
                 checkpointer: Checkpointer | None) -> None:
        super().__init__(name="faasbox-store-writer", daemon=True)
        self.db = db
        self.conn = conn
        self.loop = loop
        self.checkpointer = checkpointer
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.first: collections.deque[Write] = collections.deque()  # into the next group
        self.commits = 0
        self.lock = threading.Lock()  # held while a group runs (here, or inline)
        self.put_items = 0  # inbox items put (by the event loop's thread only)
        self.done_items = 0  # inbox items done (by this thread only)

    def put(self, item: Any) -> None:
        self.put_items += 1
        self.inbox.put(item)

    def put_first(self, item: Write) -> None:
        """Queue ``item`` for the next group, ahead of the writes already queued (a
        heartbeat: a server busy writing is not taken for dead). It waits only for the group
        being committed."""
        self.first.append(item)  # before its wakeup: whoever takes the wakeup finds it
        self.put(FIRST)

    def idle(self) -> bool:
        """Nothing queued or running (asked from the event loop's thread)."""
        return self.put_items == self.done_items

    def run(self) -> None:
        while True:
            first = self.inbox.get()
            if first is STOP:
                return
            if first is CHECKPOINT:
                with self.lock:
                    try:
                        self.db.checkpoint(self._connection())
                    except Exception as exc:
                        log.warning("checkpoint failed: %s", exc)
                    self.done_items += 1
                continue
            with self.lock:
                failure: OSError | None = None
                try:
                    # the turn first (another server may hold it): what comes meanwhile joins
                    self.db.lock_writes(blocking=True)
                except OSError as exc:  # no turn to be had: the group fails, the writer lives
                    failure = exc
                batch, taken = self._gather(first)
                if not batch:  # wakeups of writes an earlier group took
                    if failure is None:
                        self.db.unlock_writes()
                    self.done_items += taken
                    continue
                if failure is not None:
                    outcomes = [(False, self.db.unavailable(failure))] * len(batch)
                else:
                    try:
                        outcomes = self.commit(batch)
                    finally:
                        self.db.unlock_writes()
                self.done_items += taken
            # one wakeup for the group
            self.loop.call_soon_threadsafe(settle_all, settled(batch, outcomes))

    def _gather(self, first: Any) -> tuple[list[Write], int]:
        """A group: ``first`` and what else is queued, up to ``MAX_GROUP`` writes; returns it
        and the inbox items it took."""
        batch: list[Write] = []
        self._take_first(batch)
        item, taken = first, 1
        while True:
            if item is FIRST:
                self._take_first(batch)
            elif isinstance(item, list):  # submit_all
                batch.extend(item)
            else:
                batch.append(item)
            if len(batch) >= MAX_GROUP:
                break
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            if item is STOP or item is CHECKPOINT:
                self.inbox.put(item)  # after this group
                break
            taken += 1
        return batch, taken

    def _take_first(self, batch: list[Write]) -> None:
        while self.first:
            batch.append(self.first.popleft())

    def _connection(self) -> Any:
        if self.db.broken(self.conn):
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = self.db.connect()  # raises while the database is away
        return self.conn

    def _run_one(self, conn: Any, fn: WriteFn) -> tuple[bool, Any]:
        """One write in its own savepoint; a deadlock with another server's transaction is
        tried again (its savepoint undone), anything else fails this write only."""
        for attempt in range(1, 4):
            conn.execute("SAVEPOINT w")
            try:
                value = fn(conn)
                conn.execute("RELEASE SAVEPOINT w")
                return True, value
            except Exception as exc:
                if self.db.broken(conn):
                    raise
                conn.execute("ROLLBACK TO SAVEPOINT w")
                conn.execute("RELEASE SAVEPOINT w")
                if attempt < 3 and self.db.retryable(exc):
                    continue
                return False, self.db.unavailable(exc)
        raise AssertionError("unreachable")

    def _run_bare(self, conn: Any, fn: WriteFn) -> tuple[bool, Any]:
        """One statement without a savepoint (``atomic_statements``): if it fails, it was
        undone by itself, unless the failure ended the transaction (a full disk)."""
        try:
            return True, fn(conn)
        except Exception as exc:
            if not conn.in_transaction:
                raise
            return False, self.db.unavailable(exc)

    def _run_optimistic(self, batch: list[Write]) -> list[tuple[bool, Any]] | None:
        """The whole group without savepoints (each costs a round trip on a networked
        database, and two statements on SQLite: +8 % async tasks/s). None if any write failed:
        the group was undone, to run again carefully."""
        try:
            conn = self._connection()
            self.db.begin(conn, any(durable for _, _, durable, _ in batch))
            outcomes = [(True, fn(conn)) for fn, _, _, _ in batch]
            conn.execute("COMMIT")
        except Exception:
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
            return None
        self.commits += 1
        return outcomes

    def _run_careful(self, batch: list[Write]) -> list[tuple[bool, Any]]:
        """Each write in its own savepoint (or bare, where a statement undoes itself), so that
        one write's failure fails only that write."""
        outcomes: list[tuple[bool, Any]] = []
        bare = self.db.dialect.atomic_statements
        try:
            conn = self._connection()
            self.db.begin(conn, any(durable for _, _, durable, _ in batch))
            for fn, _, _, single in batch:
                outcomes.append(self._run_bare(conn, fn) if single and bare
                                else self._run_one(conn, fn))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            log.error("group commit of %d writes failed: %s", len(batch), exc)
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
            outcomes = [(False, self.db.unavailable(exc))] * len(batch)
        return outcomes

    def commit(self, batch: list[Write]) -> list[tuple[bool, Any]]:
        """Run ``batch`` as one group (the caller holds ``lock``): each write's outcome."""
        before = self.commits
        outcomes = self._run_optimistic(batch)
        if outcomes is None:
            outcomes = self._run_careful(batch)
        if (self.checkpointer is not None and self.commits != before
                and self.commits % CHECKPOINT_EVERY == 0):
            self.checkpointer.due.set()
        return outcomes


class Checkpointer(threading.Thread):
    """Runs the long step of a checkpoint on its own connection when the writer says one is
    due (the log is folded into the database while writes go on), then asks the writer for
    the short step."""

    def __init__(self, db: Database, conn: Any) -> None:
        super().__init__(name="faasbox-store-checkpoint", daemon=True)
        self.db = db
        self.conn = conn
        self.writer: Writer | None = None
        self.due = threading.Event()
        self.stopping = False

    def run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.stopping:
                return
            try:
                self.db.checkpoint(self.conn)
            except Exception as exc:
                log.warning("checkpoint failed: %s", exc)
                continue
            writer = self.writer
            if writer is not None and not self.stopping:
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                    writer.loop.call_soon_threadsafe(writer.put, CHECKPOINT)

    def stop(self) -> None:
        self.stopping = True
        self.due.set()
        self.join()
        with contextlib.suppress(Exception):
            self.conn.close()


def settled(batch: list[Write], outcomes: list[tuple[bool, Any]],
             ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
    return [(fut, ok, value) for (_, fut, _, _), (ok, value) in zip(batch, outcomes, strict=True)]


def settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
