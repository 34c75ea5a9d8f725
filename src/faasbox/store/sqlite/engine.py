"""SQLite in WAL mode: one file, group commit on the writer thread, readers beside it.

``synchronous=FULL`` (the default) fsyncs every group commit that holds a durable write and
leaves the others (records, leases, a task's end) to the next sync, as ``NORMAL`` does;
``NORMAL`` leaves every commit to checkpoints.

One server owns the file in its data dir (the data-dir lock). A file named by its URL is
*shared*: several servers on one machine may use it at once (docs/cluster.md). Their writers
then take turns by a lock file beside it (``flock``: a writer waits in the kernel, woken when
the lock is free, where SQLite's own busy handler would sleep and retry), and they hear each
other through :mod:`faasbox.store.sqlite.channel`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from faasbox import errors
from faasbox.store.database import Database, statements
from faasbox.store.sqlite.channel import Channel, check_directory

log = logging.getLogger(__name__)


def migrations() -> list[tuple[int, str]]:
    """The versioned schema scripts, in order: ``[(version, sql), ...]``."""
    found = []
    for entry in resources.files("faasbox.store.sqlite").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Turn the file to WAL (kept in the file; SQLite may refuse it at once to a second server
    doing it at the same time, so it is done here, in turn) and apply the schema scripts not
    yet applied; returns the schema version."""
    conn.execute("PRAGMA journal_mode=WAL")
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
            for stmt in statements(sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        log.info("applied schema migration %d", version)
        current = version
    return current


class SqliteDatabase(Database):
    def __init__(self, path: Path, synchronous: str = "FULL", readers: int = 4,
                 shared: bool = False) -> None:
        super().__init__(readers)
        self.path = path
        self.synchronous = synchronous
        self._writer_sync = synchronous.upper()  # the write connection's mode now
        self.shared = shared
        self._lock_fd = -1  # the writers' lock file (shared only)
        self._owners_fd = -1  # held while open: alone (exclusive) or shared
        self._channel: Channel | None = None
        self._outbox: list[str] = []  # committed messages, sent at the end of the loop's turn

    @property
    def description(self) -> str:
        return f"sqlite ({self.path}{', shared' if self.shared else ''})"

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # private to the server: SQLite gives the -wal and -shm files the same mode
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path.chmod(0o600)
        if self.shared and self._lock_fd < 0:
            self._lock_fd = _private_file(self.path.with_name(self.path.name + "-lock"))

    # -- several servers on one file ------------------------------------------------------
    def claim(self) -> None:
        """Hold the file the way this server uses it: alone (its default store) or shared (a
        store URL names it). A server that would use it the other way stops here, before a
        server alone takes back leases that servers sharing the file hold."""
        if self._owners_fd >= 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _private_file(self.path.with_name(self.path.name + "-owners"))
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            how = ("has it alone (it is that server's default store)" if self.shared else
                   "shares it (their store URL names it)")
            raise errors.Unavailable(f"another faasbox server {how}: {self.path}") from None
        self._owners_fd = fd
        if self.shared:
            try:
                os.close(check_directory(self.path))
            except errors.Unavailable:
                self._owners_fd = -1
                os.close(fd)
                raise

    def lock_writes(self, blocking: bool) -> bool:
        if self._lock_fd < 0:
            return True
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock_writes(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def publish(self, message: str) -> None:
        """Sent once every write queued before it is committed, as NOTIFY is: the others
        then read what it is about. Its own no-op write marks its place in the queue; the
        messages of one commit go in one datagram."""
        if self._channel is None:
            return
        self.submit(lambda conn: message, durable=False, single=True).add_done_callback(
            self._committed)

    def _committed(self, fut: asyncio.Future[str]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # not committed: the others' slow poll sees what it was about
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._send)  # after the group's others
        self._outbox.append(fut.result())

    def _send(self) -> None:
        messages, self._outbox = list(dict.fromkeys(self._outbox)), []
        if self._channel is not None:
            self._channel.send(messages)

    def listen(self, callback: Callable[[str], None]) -> None:
        channel = Channel(self.path)
        channel.open()
        channel.listen(callback)
        self._channel = channel

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.unlisten()
            self._channel.close()
            self._channel = None
        await super().close()
        self._outbox = []  # nobody to tell; a store opened again starts afresh
        for fd in (self._lock_fd, self._owners_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._owners_fd = -1

    def connect(self) -> sqlite3.Connection:
        return connect(self.path, self.synchronous)

    def migrate(self, conn: sqlite3.Connection) -> int:
        self.lock_writes(blocking=True)  # servers that start together migrate in turn
        try:
            return migrate(conn)
        finally:
            self.unlock_writes()

    inline_writes = True
    checkpoints = True

    def writer_connection(self, conn: sqlite3.Connection) -> None:
        # checkpoints run on their own thread (store/database.py), never in a commit
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def begin(self, conn: sqlite3.Connection, durable: bool) -> None:
        if self.synchronous.upper() in ("FULL", "EXTRA"):
            want = self.synchronous.upper() if durable else "NORMAL"
            if want != self._writer_sync:
                conn.execute(f"PRAGMA synchronous={want}")  # not inside a transaction
                self._writer_sync = want
        conn.execute(self.dialect.begin)

    def unavailable(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            return errors.StoreUnavailable(f"the store cannot write: {exc}")
        return exc


def _private_file(path: Path) -> int:
    """An open lock file beside the database: not a link, and this user's alone."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise errors.Unavailable(f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise errors.Unavailable(f"{path} must belong to this user (uid {os.geteuid()}) with"
                                 f" mode 0600, not uid {st.st_uid} mode {st.st_mode & 0o777:o}")
    return fd
