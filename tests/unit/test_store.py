"""The SQLite store: migrations, group commit, read-your-writes."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faasbox.spec import FunctionSpec
from faasbox.store import InvocationRecord, SqlStore
from faasbox.store.database import QUIET_WRITES
from faasbox.store.relational.functions import INSERT_RECORD, record_values
from faasbox.store.sqlite.engine import SqliteDatabase, migrate, migrations


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return sorted(conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall())


def test_migrating_twice_is_a_no_op_and_matches_a_fresh_schema(tmp_path: Path) -> None:
    a = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    assert migrate(a) == migrations()[-1][0]
    before = _schema(a)
    assert migrate(a) == migrations()[-1][0]
    assert _schema(a) == before
    fresh = sqlite3.connect(":memory:", isolation_level=None)
    for _, sql in migrations():
        fresh.executescript(sql)
    fresh_tables = {n for n, _ in _schema(fresh)}
    assert fresh_tables == {n for n, _ in before} - {"schema_migrations"}


def _record(i: int, function: str = "f") -> InvocationRecord:
    return InvocationRecord(
        id=f"r{i}", function=function, version=1, trigger="sync", started_at=1000.0 + i,
        duration_ms=1.5, billed_ms=2, memory_mb=128, gb_s=0.00025, cold_start=i == 0,
        init_ms=None, status="succeeded")


def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        rows = await asyncio.gather(*[
            store.put_version("f", FunctionSpec(handler="m:h", memory_mb=128 + i), "sha", None,
                              float(i)) for i in range(200)])
        commits = store.commits
        await store.close()
        return sorted(r.version for r in rows), commits

    versions, commits = asyncio.run(main())
    assert versions == list(range(1, 201))
    assert commits < 20  # grouped, not one commit per write


def test_records_are_readable_right_after_recording(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        for i in range(50):
            store.record_invocation(_record(i))
        got = await store.get_invocation("r49")
        assert got is not None and got.cold_start is False
        first = await store.get_invocation("r0")
        assert first is not None and first.cold_start is True
        newest = await store.list_invocations("f", limit=3)
        assert [r.id for r in newest] == ["r49", "r48", "r47"]
        older = await store.list_invocations("f", limit=2, before=newest[-1].started_at)
        assert [r.id for r in older] == ["r46", "r45"]
        since = await store.list_invocations_since("f", 1047.0)
        assert [r.id for r in since] == ["r48", "r49"]
        assert await store.list_invocations("other") == []
        await store.close()

    asyncio.run(main())


def test_a_failing_write_does_not_fail_its_group(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        store.record_invocation(_record(1))
        await asyncio.sleep(0)  # the records of a turn of the loop go at its end
        dup = store.submit(lambda c: c.execute(
            "INSERT INTO invocations (id, function, version, trigger, started_at, duration_ms,"
            " billed_ms, memory_mb, gb_s, cold_start, status) VALUES"
            " ('r1', 'f', 1, 's', 0, 0, 0, 0, 0, 0, 'x')"))
        ok = store.put_version("g", FunctionSpec(handler="m:h"), "sha", None, 1.0)
        results = await asyncio.gather(dup, ok, return_exceptions=True)
        assert isinstance(results[0], sqlite3.IntegrityError)
        assert results[1].version == 1
        assert await store.get_function("g") is not None
        await store.close()

    asyncio.run(main())


def test_data_survives_reopen_and_file_is_private(tmp_path: Path) -> None:
    async def write() -> None:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        await store.put_version("f", FunctionSpec(handler="m:h", env={"K": "v"}), "abc", None,
                                5.0)
        store.record_invocation(_record(7))
        await store.close()

    async def read() -> None:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        fn = await store.get_function("f")
        assert fn is not None and fn.latest_version == 1
        v = await store.get_version("f", 1)
        assert v is not None and v.spec == FunctionSpec(handler="m:h", env={"K": "v"})
        assert await store.get_invocation("r7") is not None
        assert await store.delete_function("f") is True
        assert await store.delete_function("f") is False
        await store.close()

    asyncio.run(write())
    assert (tmp_path / "s.db").stat().st_mode & 0o077 == 0
    asyncio.run(read())


def test_leasing_walks_the_priority_index_without_sorting_the_backlog(tmp_path: Path) -> None:
    """Without statistics SQLite would pick the (function, run_at) index and sort the whole
    backlog on every lease (3 ms for 10,000 queued tasks, all on the writer thread)."""
    from faasbox.store.database import Dialect
    from faasbox.store.relational.tasks import lease_sql

    conn = sqlite3.connect(tmp_path / "q.db")
    migrate(conn)
    plan = " ".join(str(row[3]) for row in conn.execute(
        "EXPLAIN QUERY PLAN " + lease_sql(Dialect()), (1.0, "o", 1.0, "f", 1.0, 1.0, 4)))
    assert "tasks_runnable_priority" in plan and "TEMP B-TREE" not in plan, plan


def test_only_durable_writes_wait_for_the_disk(tmp_path: Path) -> None:
    """A group syncs (synchronous=FULL) only when one of its writes is durable; records and
    a task's end commit as NORMAL does (they outlive a crash of the server)."""
    async def main() -> list[int]:
        db = SqliteDatabase(tmp_path / "s.db")
        store = SqlStore(db)
        await store.open()
        assert db._writer is not None
        writer = db._writer.conn
        modes = []
        await store.record_invocation(_record(1))
        modes.append(writer.execute("PRAGMA synchronous").fetchone()[0])
        await store.put_version("f", FunctionSpec(handler="m:h"), "sha", None, 1.0)
        modes.append(writer.execute("PRAGMA synchronous").fetchone()[0])
        gate = threading.Event()
        held = store.submit(lambda conn: gate.wait(10), durable=False)  # holds the writer
        both = [store.submit(lambda conn: None, durable=False),
                store.submit(lambda conn: conn.execute("DELETE FROM invocations WHERE id = 'x'"))]
        gate.set()  # the two queued meanwhile make one group
        await asyncio.gather(held, *both)
        modes.append(writer.execute("PRAGMA synchronous").fetchone()[0])
        await store.close()
        return modes

    assert asyncio.run(main()) == [1, 2, 2]  # NORMAL, FULL, FULL (a durable write was there)


async def _outcomes(store: SqlStore, futs: list[asyncio.Future[Any]],
                    ) -> tuple[list[bool], set[str]]:
    """Which writes succeeded, and the records' ids; closes the store."""
    done = await asyncio.gather(*futs, return_exceptions=True)
    ids = {r.id for r in await store.list_invocations(None, 10)}
    await store.close()
    return [not isinstance(d, BaseException) for d in done], ids


def test_a_failed_single_statement_fails_alone(tmp_path: Path) -> None:
    """Single-statement writes run without a savepoint: one that breaks a constraint fails by
    itself and the others of its group commit."""
    async def main() -> tuple[list[bool], set[str]]:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        await store.record_invocation(_record(0))
        futs = [store.record_invocation(_record(i)) for i in (1, 0, 2)]  # r0 again: a clash
        return await _outcomes(store, futs)

    ok, ids = asyncio.run(main())
    assert ok == [True, False, True]
    assert ids == {"r0", "r1", "r2"}


def test_a_group_runs_without_savepoints_and_a_failed_write_is_undone_alone(
        tmp_path: Path) -> None:
    """A group first runs without savepoints (groupcommit.py); when one of its writes fails
    halfway (its first statement done, its second breaking a constraint), the group is run
    again with a savepoint per write: that write leaves nothing, the others commit."""
    async def main() -> tuple[list[bool], set[str]]:
        db = SqliteDatabase(tmp_path / "s.db")
        store = SqlStore(db)
        await store.open()
        assert db._writer is not None
        await store.record_invocation(_record(0))
        gate = threading.Event()
        held = store.submit(lambda conn: gate.wait(10), durable=False)  # holds the writer

        def insert(i: int) -> Callable[[sqlite3.Connection], None]:
            return lambda conn: conn.execute(INSERT_RECORD, record_values(_record(i)))

        def half(conn: sqlite3.Connection) -> None:  # r9, then r0 again: a clash
            insert(9)(conn)
            insert(0)(conn)

        futs = [store.submit(insert(1), durable=False), store.submit(half, durable=False),
                store.submit(insert(2), durable=False)]
        gate.set()  # the three queued meanwhile run in one or two groups
        await held
        return await _outcomes(store, futs)

    ok, ids = asyncio.run(main())
    assert ok == [True, False, True]
    assert ids == {"r0", "r1", "r2"}  # no r9: the failed write was undone whole


def test_a_write_goes_after_the_records_queued_before_it(tmp_path: Path) -> None:
    """Records wait for the end of the loop's turn to go to the writer together, but a write
    queued after a record never runs before it (a task's end and its record)."""
    async def main() -> int:
        store = SqlStore(SqliteDatabase(tmp_path / "s.db"))
        await store.open()
        store.record_invocation(_record(5))
        seen: int = await store.write(lambda conn: conn.execute(
            "SELECT count(*) FROM invocations WHERE id = 'r5'").fetchone()[0])
        await store.close()
        return seen

    assert asyncio.run(main()) == 1


def test_records_commit_inline_when_the_writer_is_idle(tmp_path: Path) -> None:
    """With nothing queued, the records of a turn commit on the event loop's thread (no
    hand-off to the writer); with the writer busy they queue behind it, in order."""
    async def main() -> tuple[int, int, int]:
        db = SqliteDatabase(tmp_path / "s.db")
        store = SqlStore(db)
        await store.open()
        assert db._writer is not None
        writer = db._writer
        await store.record_invocation(_record(1))
        inline = writer.done_items  # nothing went through the writer's inbox
        gate = threading.Event()
        held = store.submit(lambda conn: gate.wait(10))
        rec = store.record_invocation(_record(2))
        for _ in range(3):
            await asyncio.sleep(0)  # the turn ends: the record goes to the (blocked) writer
        queued = int(not rec.done())  # behind the busy writer
        gate.set()
        await asyncio.gather(held, rec)
        rows = len(await store.list_invocations(None, 10))
        await store.close()
        return inline, queued, rows

    assert asyncio.run(main()) == (0, 1, 2)


def test_seldom_quick_writes_commit_inline_and_a_burst_goes_to_the_writer(
        tmp_path: Path) -> None:
    """A write that need not reach the disk commits on the loop's thread while writes come
    seldom (a lone task's lease and end: no thread hand-off); a durable one, and every write
    of a burst, goes to the writer, which groups them."""
    async def main() -> tuple[bool, bool, int, int]:
        db = SqliteDatabase(tmp_path / "s.db")
        db.quiet_window_s = 3600.0  # a slow machine's burst still counts as one
        store = SqlStore(db)
        await store.open()
        assert db._writer is not None
        writer = db._writer

        def insert(i: int) -> Callable[[sqlite3.Connection], None]:
            return lambda conn: conn.execute(
                "INSERT INTO task_policies (function, policy, updated_at) VALUES (?, '{}', 0)",
                (f"f{i}",))

        quick = store.submit(insert(0), durable=False)
        inline = quick.done()  # committed before submit returned
        durable = store.submit(insert(1))
        queued = not durable.done()
        await durable
        burst = [store.submit(insert(i), durable=False) for i in range(2, 2 + 2 * QUIET_WRITES)]
        handed = sum(not f.done() for f in burst)
        await asyncio.gather(*burst)
        rows: int = await store.read(lambda conn: conn.execute(
            "SELECT count(*) FROM task_policies").fetchone()[0])
        assert writer.done_items >= 2
        await store.close()
        return inline, queued, handed, rows

    inline, queued, handed, rows = asyncio.run(main())
    assert inline and queued
    # the first writes of the burst still commit inline; once it is seen, they queue
    assert handed == 2 * QUIET_WRITES - (QUIET_WRITES - 2)
    assert rows == 2 + 2 * QUIET_WRITES


def test_the_log_starts_again_under_a_steady_load(tmp_path: Path) -> None:
    """Checkpoints run beside the writes; their short step on the writer thread folds what was
    written meanwhile, so the log restarts instead of growing with every write."""
    async def main() -> tuple[int, int]:
        db = SqliteDatabase(tmp_path / "s.db")
        store = SqlStore(db)
        await store.open()
        for i in range(3000):  # about 24 MB of records, a commit each, without a pause
            await store.record_invocation(InvocationRecord(**{**vars(_record(i)),
                                                              "logs": "x" * 8000}))
        commits = db.commits
        # the WAL header's checkpoint sequence: how many times the log started again
        restarts = struct.unpack(">I", (tmp_path / "s.db-wal").read_bytes()[12:16])[0]
        await store.close()
        return restarts, commits

    restarts, commits = asyncio.run(main())
    assert commits >= 3000, commits  # a checkpoint was due every 256
    assert restarts >= 1, restarts  # (none, before: the log grew with every write)
