"""One SQLite file shared by several servers: their writers take turns by the lock file,
they hear each other on the channel, and nothing is heard before it is committed."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from faasbox import errors
from faasbox.store.database import QUIET_WRITES
from faasbox.store.sqlite.channel import (
    MAX_MESSAGE,
    Channel,
    check_directory,
    directory_for,
    pack,
)
from faasbox.store.sqlite.engine import SqliteDatabase, migrations
from faasbox.store.url import database_for

SUN_PATH_MAX = 107  # bytes in a socket address, with its terminating NUL


def test_only_a_file_the_url_names_is_shared(tmp_path: Path) -> None:
    default = database_for("", tmp_path)
    named = database_for(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path)
    assert isinstance(default, SqliteDatabase) and not default.shared
    assert default.path == tmp_path / "faasbox.db"
    assert isinstance(named, SqliteDatabase) and named.shared
    assert named.description.endswith(", shared)")


def test_servers_that_open_a_new_file_together_migrate_it_once(tmp_path: Path) -> None:
    async def main() -> None:
        stores = [SqliteDatabase(tmp_path / "s.db", shared=True) for _ in range(4)]
        await asyncio.gather(*[s.open() for s in stores])
        for s in stores:
            await s.close()

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "s.db")
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [v for v, _ in migrations()]


def _rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]


def test_a_write_waits_for_the_turn_another_server_holds(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        db = SqliteDatabase(path, shared=True)
        await db.open()
        await db.write(lambda c: c.execute("CREATE TABLE t (id INTEGER)"))
        # another server's writer holds the turn (a lock of its own on the same file)
        other = os.open(path.with_name("s.db-lock"), os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            # a lone write would commit inline on the loop's thread: it must not wait there
            quiet = db.write_later(lambda c: c.execute("INSERT INTO t VALUES (1)"),
                                   durable=False)
            burst = [db.write_later(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
                     for i in range(2, QUIET_WRITES + 2)]
            await asyncio.sleep(0.3)  # the writer thread has had its chance
            assert not quiet.done() and not any(f.done() for f in burst)
            assert _rows(path) == []
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
            os.close(other)
        await asyncio.gather(quiet, *burst)
        assert _rows(path) == list(range(1, QUIET_WRITES + 2))
        await db.close()

    asyncio.run(main())


def test_a_message_is_heard_after_the_writes_before_it_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def main() -> None:
        a, b = SqliteDatabase(path, shared=True), SqliteDatabase(path, shared=True)
        await a.open()
        await b.open()
        await a.write(lambda c: c.execute("CREATE TABLE t (id INTEGER)"))
        heard: asyncio.Queue[tuple[str, list[int]]] = asyncio.Queue()
        a.listen(lambda m: pytest.fail(f"a server heard its own message {m!r}"))
        b.listen(lambda m: heard.put_nowait((m, _rows(path))))
        for n in range(1, 4):
            a.write_later(lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,)))
            a.publish(f"row {n}")
            message, seen = await asyncio.wait_for(heard.get(), 10)
            assert message == f"row {n}" and seen == list(range(1, n + 1))
        # a message queued behind a slow write waits for it
        gate = threading.Event()
        a.write_later(lambda c: (gate.wait(10), c.execute("INSERT INTO t VALUES (4)")))
        a.publish("row 4")
        await asyncio.sleep(0.3)  # the write is held: nothing is heard meanwhile
        assert heard.empty()
        gate.set()
        message, seen = await asyncio.wait_for(heard.get(), 10)
        assert message == "row 4" and seen == [1, 2, 3, 4]
        # the same message twice before a commit is sent once
        a.publish("again")
        a.publish("again")
        assert (await asyncio.wait_for(heard.get(), 10))[0] == "again"
        await a.write(lambda c: None)
        await asyncio.sleep(0.2)
        assert heard.empty()
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_dead_servers_socket_is_removed_by_the_next_sender(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    directory_for(db).mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory_for(db) / "dead"))
    dead.close()  # killed: its socket file stays
    live = Channel(db)
    live.open()
    try:
        assert sorted(os.listdir(directory_for(db))) == sorted(["dead", live.name])
        live.send(["hello"])
        assert os.listdir(directory_for(db)) == [live.name]
        assert live.sent == 0
    finally:
        live.close()
    assert os.listdir(directory_for(db)) == []
    assert directory_for(db).stat().st_mode & 0o777 == 0o700


def test_servers_talk_where_the_path_is_too_long_for_a_socket_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    db = deep / "s.db"
    assert len(os.fsencode(str(directory_for(db) / "x"))) > SUN_PATH_MAX
    a, b = Channel(db), Channel(db)
    a.open()
    b.open()
    try:
        a.send(["over the fd"])
        assert b.sock is not None
        b.sock.setblocking(True)
        b.sock.settimeout(10)
        assert b.sock.recv(100) == b"over the fd"
    finally:
        a.close()
        b.close()


def test_a_commits_messages_past_one_datagram_arrive_whole(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    # 4,000 messages of 80 bytes: about 320 KB, five datagrams, none cut inside a message
    messages = [f'{{"from":"a","kind":"tasks","key":"tenant/fn-{i:05d}-{"x" * 27}"}}'
                for i in range(4000)]
    assert len(pack(messages)) == 5
    assert all(len(d) <= MAX_MESSAGE for d in pack(messages))

    async def main() -> list[str]:
        a, b = Channel(db), Channel(db)
        a.open()
        b.open()
        heard: list[str] = []
        done = asyncio.Event()

        def hear(message: str) -> None:
            heard.append(message)
            if len(heard) == len(messages):
                done.set()

        try:
            b.listen(hear)
            a.send(messages)
            await asyncio.wait_for(done.wait(), 30)
            return heard
        finally:
            b.unlisten()
            a.close()
            b.close()

    assert asyncio.run(main()) == messages


def test_a_message_too_long_for_a_datagram_is_left_to_the_slow_poll() -> None:
    assert pack(["a", "x" * (MAX_MESSAGE + 1), "b"]) == [b"a\nb"]
    assert pack(["a\nb", "c"]) == [b"c"]
    assert pack(["x" * MAX_MESSAGE, "y"]) == [b"x" * MAX_MESSAGE, b"y"]


def test_the_socket_directory_must_be_this_users_own(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    where = directory_for(db)
    os.close(check_directory(db))  # made
    assert where.is_dir() and where.stat().st_mode & 0o777 == 0o700
    where.chmod(0o755)
    os.close(check_directory(db))  # narrowed
    assert where.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        os.chown(where, 4321, 4321)  # another user's
        with pytest.raises(errors.Unavailable, match="must belong to this user"):
            check_directory(db)
    where.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    where.symlink_to(elsewhere)  # a link: messages would go where it points
    with pytest.raises(errors.Unavailable, match="must be a directory"):
        check_directory(db)


def test_a_lock_file_that_is_a_link_or_anothers_stops_the_server(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.db", shared=True)
    (tmp_path / "target").write_text("")
    (tmp_path / "s.db-owners").symlink_to(tmp_path / "target")
    with pytest.raises(errors.Unavailable, match="cannot open"):
        db.claim()
    (tmp_path / "s.db-owners").unlink()
    (tmp_path / "s.db-owners").write_text("")
    (tmp_path / "s.db-owners").chmod(0o644)
    with pytest.raises(errors.Unavailable, match="mode 0600"):
        db.claim()


def test_a_file_is_either_one_servers_alone_or_shared(tmp_path: Path) -> None:
    alone = database_for("", tmp_path)
    alone.claim()
    shared = database_for(f"sqlite:///{tmp_path / 'faasbox.db'}", tmp_path / "other")
    with pytest.raises(errors.Unavailable, match="has it alone"):
        shared.claim()
    asyncio.run(alone.close())  # its claim goes with it
    shared.claim()
    again = database_for("", tmp_path)
    with pytest.raises(errors.Unavailable, match="shares it"):
        again.claim()
    second = database_for(f"sqlite:///{tmp_path / 'faasbox.db'}", tmp_path / "third")
    second.claim()  # any number of servers share it
    for db in (shared, second):
        asyncio.run(db.close())


def test_no_server_counts_dead_until_this_ones_heartbeats_run_steadily(tmp_path: Path) -> None:
    from faasbox.clock import VirtualClock
    from faasbox.cluster import Cluster
    from faasbox.store import SqlStore
    from faasbox.store.relational.cluster import SqlClusterStore

    async def main() -> None:
        clock = VirtualClock(1000.0)
        store = SqlStore(SqliteDatabase(tmp_path / "s.db", shared=True))
        await store.open()
        cluster = Cluster(store.db, SqlClusterStore(store), clock, "http://a", 10.0, dict)
        assert cluster.live_since(clock.now()) == 0.0  # no heartbeat yet
        await cluster._beat()
        for _ in range(9):  # steady, but for less than the timeout
            clock.set(clock.now() + 1)
            await cluster._beat()
            assert cluster.live_since(clock.now()) == 0.0
        clock.set(clock.now() + 1)
        await cluster._beat()
        assert cluster.live_since(clock.now()) == clock.now() - 10.0
        clock.set(clock.now() + 30)  # the store's writes stalled: everyone's heartbeats too
        await cluster._beat()
        assert cluster.live_since(clock.now()) == 0.0  # the others' are still on their way
        for _ in range(10):
            clock.set(clock.now() + 1)
            await cluster._beat()
        assert cluster.live_since(clock.now()) == clock.now() - 10.0
        await store.close()

    asyncio.run(main())


def test_a_url_through_a_link_names_the_file_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    alone = database_for("", tmp_path / "data")
    alone.claim()
    (tmp_path / "link.db").symlink_to(tmp_path / "data" / "faasbox.db")
    linked = database_for(f"sqlite:///{tmp_path / 'link.db'}", tmp_path / "other")
    assert isinstance(linked, SqliteDatabase) and linked.path == tmp_path / "data" / "faasbox.db"
    with pytest.raises(errors.Unavailable, match="has it alone"):
        linked.claim()
    asyncio.run(alone.close())
    with pytest.raises(errors.InvalidRequest, match="absolute path"):
        database_for("sqlite:///relative/faasbox.db", tmp_path)
