"""The store contract, the same tests on both backends: SQLite (a file) and PostgreSQL (a
database of the throwaway cluster's own per test)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faasbox.clock import SystemClock
from faasbox.cluster import Cluster
from faasbox.store import InvocationRecord, SqlStore
from faasbox.store.groupcommit import MAX_GROUP
from faasbox.store.queue import Failure, NewTask, TaskPolicy
from faasbox.store.relational.cluster import SqlClusterStore
from faasbox.store.relational.queue import SqlTaskQueue
from faasbox.store.relational.triggers import SqlTriggerStore
from faasbox.store.triggers import JobRow
from faasbox.store.url import database_for
from tests.conftest import PG_TEMPLATE

POLICY = TaskPolicy(max_attempts=3)
F = "default/f"
_names = itertools.count()


@dataclass
class Backend:
    name: str
    url: str
    path: Path

    async def open(self) -> SqlStore:
        store = SqlStore(database_for(self.url, self.path))
        await store.open()
        return store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", "", tmp_path)
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"c{next(_names)}_{time.monotonic_ns() % 10**9}"
    yield Backend("postgres", cluster.clone(PG_TEMPLATE, name), tmp_path)
    cluster.drop(name)


def run(backend: Backend, body: Callable[[SqlStore], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        store = await backend.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def task(i: int | str, key: str | None = None, **kw: Any) -> NewTask:
    return NewTask(id=f"t{i}", event=b'{"n": 1}', idempotency_key=key, **kw)


def test_enqueue_is_idempotent_by_key(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        [(first, made)] = await q.enqueue(F, [task(1, "k")], None, POLICY, now, 3600)
        [(again, made_again)] = await q.enqueue(F, [task(2, "k")], None, POLICY, now, 3600)
        assert made and not made_again and again.id == first.id == "t1"
        assert (await q.counts(F)) == {"queued": 1}

    run(backend, body)


def test_lease_takes_priority_first_and_never_twice(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        await q.enqueue(F, [task(i, priority=i % 3) for i in range(30)], None, POLICY, now, 0)
        first = await q.lease(F, 5, now, 60, "a")
        assert [t.priority for t in first] == [2] * 5
        batches = await asyncio.gather(*[q.lease(F, 4, now, 60, o) for o in "bcdefg"])
        ids = [t.id for t in first] + [t.id for b in batches for t in b]
        assert len(ids) == len(set(ids)) == 29  # 5 + 6 * 4 of 30, none leased twice
        assert all(t.status == "running" and t.attempts == 1 for b in batches for t in b)

    run(backend, body)


def test_an_old_attempt_cannot_finish_a_task_fenced_by_a_newer_one(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        await q.enqueue(F, [task(1)], None, POLICY, now, 0)
        [old] = await q.lease(F, 1, now, 1, "a")
        assert await q.recover(now + 2, "b") == 1  # its lease ran out
        [new] = await q.lease(F, 1, now + 3, 60, "b")
        assert new.attempts == old.attempts + 1
        assert not await q.succeed(old.id, old.attempts, b"stale", "i1", now + 4)
        assert await q.succeed(new.id, new.attempts, b"ok", "i2", now + 4)
        done = await q.get(new.id)
        assert done is not None and done.status == "succeeded" and done.result == b"ok"
        assert done.invocation_ids == ["i2"]

    run(backend, body)


def test_only_leases_of_servers_without_a_recent_heartbeat_are_taken_back(
        backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q, servers = SqlTaskQueue(store), SqlClusterStore(store)
        now = time.time()
        await q.enqueue(F, [task(i) for i in range(4)], None, POLICY, now, 0)
        await servers.heartbeat("alive", now, now, None, {})
        await servers.heartbeat("dead", now - 100, now - 60, None, {})
        await q.lease(F, 2, now, 600, "alive")
        await q.lease(F, 2, now, 600, "dead")
        # "me" sees every other server as alive when they heartbeat since now - 10
        assert await q.recover(now, "me", live_since=now - 10) == 2
        counts = await q.counts(F)
        assert counts == {"running": 2, "retry_wait": 2}, counts
        lost = [t for t in await q.list(F, "retry_wait", 10, None)]
        assert {t.error_code for t in lost} == {"lease_lost"}
        # one server per store: every other owner is a previous run of this one
        assert await q.recover(now, "me") == 2
        names = [s.id for s in await servers.servers()]
        assert names == ["dead", "alive"]
        assert await servers.forget(now - 30) == 1

    run(backend, body)


def test_a_heartbeat_does_not_wait_behind_the_queued_writes(backend: Backend) -> None:
    """On a database server a heartbeat has a connection of its own: a busy writer does not
    make this server look dead. SQLite's one writer takes it in turn."""
    async def body(store: SqlStore) -> None:
        servers = SqlClusterStore(store)
        held, entered = threading.Event(), threading.Event()

        def hold(conn: Any) -> None:  # runs on the writer thread until released
            entered.set()
            held.wait(30)

        busy = asyncio.ensure_future(store.write(hold))
        assert await asyncio.to_thread(entered.wait, 30)
        queued = asyncio.ensure_future(servers.heartbeat("me", 1.0, 2.0, None, {}))
        if backend.name == "postgres":
            await asyncio.wait_for(queued, 30)  # while the writer is still held
            assert not busy.done()
            assert [(s.id, s.heartbeat_at) for s in await servers.servers()] == [("me", 2.0)]
        else:
            await asyncio.sleep(0.2)
            assert not queued.done()  # behind the group that holds the writer
        held.set()
        await busy
        await queued
        await servers.heartbeat("me", 1.0, 3.0, None, {})
        assert [s.heartbeat_at for s in await servers.servers()] == [3.0]

    run(backend, body)


def test_a_heartbeat_goes_ahead_of_a_backlog_of_queued_writes(backend: Backend) -> None:
    """Under a backlog of several groups, a write aside runs before the groups queued ahead
    of it: on its own connection (PostgreSQL) or in the writer's next group (SQLite)."""
    async def body(store: SqlStore) -> None:
        db = store.db
        held, entered = threading.Event(), threading.Event()
        order: list[str] = []

        def hold(conn: Any) -> None:
            entered.set()
            held.wait(30)

        def queued(conn: Any) -> None:
            order.append("queued")

        def beat(conn: Any) -> None:
            order.append("beat")
            conn.execute("CREATE TABLE IF NOT EXISTS beats (n INTEGER)")

        busy = asyncio.ensure_future(db.write(hold))
        assert await asyncio.to_thread(entered.wait, 30)
        backlog = [db.submit(queued, durable=False) for _ in range(3 * MAX_GROUP)]
        beaten = asyncio.ensure_future(db.write_aside(beat))
        await asyncio.sleep(0.05)
        held.set()
        await busy
        await beaten
        await asyncio.gather(*backlog)
        assert len(order) == 3 * MAX_GROUP + 1
        assert order.index("beat") < MAX_GROUP  # in the first group after the one held

    run(backend, body)


def test_a_heartbeat_that_hangs_marks_the_store_lost_until_one_goes_through(
        backend: Backend) -> None:
    """A hung heartbeat (PostgreSQL: its backend stopped with SIGSTOP; SQLite: the writer held
    in a group) stops this server leasing before the others count it dead, and it leases
    again once the heartbeat goes through."""
    async def body(store: SqlStore) -> None:
        db = store.db
        cluster = Cluster(db, SqlClusterStore(store), SystemClock(), "http://a", 3.0, dict)
        await cluster.start()
        held, entered = threading.Event(), threading.Event()
        backend_pid = 0
        try:
            assert cluster.store_ok
            if backend.name == "postgres":
                backend_pid = await db.write_aside(
                    lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                os.kill(backend_pid, signal.SIGSTOP)
            else:
                def hold(conn: Any) -> None:
                    entered.set()
                    held.wait(60)

                busy = asyncio.ensure_future(db.write(hold))
                assert await asyncio.to_thread(entered.wait, 30)
            assert await until(lambda: not cluster.store_ok)
            assert cluster.store_error is not None and "heartbeat" in cluster.store_error
        finally:
            if backend_pid:
                os.kill(backend_pid, signal.SIGCONT)
            held.set()
        if backend.name == "sqlite":
            await busy
        assert await until(lambda: cluster.store_ok)
        await cluster.close()

    run(backend, body)


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_cancel_queued_at_once_and_running_when_its_attempt_ends(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        await q.enqueue(F, [task(1), task(2)], None, POLICY, now, 0)
        [running] = await q.lease(F, 1, now, 60, "a")
        other = "t2" if running.id == "t1" else "t1"
        cancelled = await q.cancel(other, now)
        assert cancelled is not None and cancelled.status == "cancelled"
        marked = await q.cancel(running.id, now)
        assert marked is not None and marked.status == "running" and marked.cancel_requested
        assert await q.recover(now, "b") == 1
        row = await q.get(running.id)
        assert row is not None and row.status == "cancelled"

    run(backend, body)


def test_a_failed_attempt_waits_for_its_retry_then_runs_again(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        await q.enqueue(F, [task(1)], None, POLICY, now, 0)
        [t] = await q.lease(F, 1, now, 60, "a")
        assert await q.fail(t.id, 1, Failure("function_error", "boom", now + 5), "i1", now)
        assert await q.lease(F, 1, now + 1, 60, "a") == []
        assert await q.next_run_at(F) == pytest.approx(now + 5)
        [again] = await q.lease(F, 1, now + 6, 60, "a")
        assert again.attempts == 2 and again.invocation_ids == ["i1"]
        assert await q.fail(again.id, 2, Failure("function_error", "boom", None, "dead"),
                            "i2", now + 7)
        dead = await q.get(t.id)
        assert dead is not None and dead.status == "dead" and dead.error_code == "function_error"

    run(backend, body)


def test_a_cron_fire_key_enqueues_once_whoever_fires(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        # two servers' stores on one database (SQLite: two stores on one file)
        other = await backend.open()
        try:
            now = time.time()
            key = f"cron:nightly:{int(now)}"
            fired = await asyncio.gather(
                SqlTaskQueue(store).enqueue(F, [task("a", key, source="cron")], None, POLICY,
                                            now, 3600),
                SqlTaskQueue(other).enqueue(F, [task("b", key, source="cron")], None, POLICY,
                                            now, 3600))
            assert sorted(made for [(_, made)] in fired) == [False, True]
            assert (await SqlTaskQueue(store).counts(F)) == {"queued": 1}
        finally:
            await other.close()

    run(backend, body)


async def _job(jobs: SqlTriggerStore, job_id: str, count: int, held_from: int,
               now: float) -> tuple[JobRow, bool]:
    """A running job of ``count`` shards (``max_parallel`` 2), those from ``held_from`` on
    held, created with its shards in one transaction."""
    job = JobRow(id=job_id, function=F, version=None, status="running",
                 spec={"max_parallel": 2}, shard_count=count, created_at=now)
    shards = [task(f"{job_id}-s{i}", source="shard", job_id=job_id, shard_index=i,
                   shard_count=count, held=i >= held_from) for i in range(count)]
    return await jobs.create_job(job, shards, POLICY, 3600)


def test_a_job_and_its_shards_in_one_transaction_and_it_ends_once(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q, jobs = SqlTaskQueue(store), SqlTriggerStore(store)
        now = time.time()
        row, made = await _job(jobs, "j1", 4, held_from=2, now=now)
        assert made and row.id == "j1"
        assert await q.job_counts("j1") == {"queued": 2, "held": 2}
        assert await q.release("j1", 5, now, 3600) == 2
        for t in await q.lease(F, 4, now, 60, "a"):
            assert await q.succeed(t.id, t.attempts, b"1", f"i{t.id}", now)
        assert await q.job_counts("j1") == {"succeeded": 4}
        assert await jobs.finish_job("j1", "succeeded", now, b"4")
        assert not await jobs.finish_job("j1", "failed", now)  # ended already
        done = await jobs.get_job("j1")
        assert done is not None and done.status == "succeeded" and done.result == b"4"

    run(backend, body)


def test_a_stop_ends_the_job_and_cancels_its_waiting_shards_in_one_write(
        backend: Backend) -> None:
    """Another server's advance never sees cancelled shards of a job that still runs (it
    would fail the job before the cancel ends it)."""
    async def body(store: SqlStore) -> None:
        q, jobs = SqlTaskQueue(store), SqlTriggerStore(store)
        now = time.time()
        await _job(jobs, "j2", 3, held_from=2, now=now)
        [leased] = await q.lease(F, 1, now, 60, "a")
        ended, running = await jobs.stop_job("j2", "cancelled", now, "cancelled", "by request",
                                             "the job was cancelled")
        assert ended and running == [leased.id]
        assert await q.job_counts("j2") == {"cancelled": 2, "running": 1}
        stopped = await jobs.get_job("j2")
        assert stopped is not None and stopped.status == "cancelled"
        assert stopped.error_message == "by request"
        # a second stop (another server saw the cancelled shards as failures) changes nothing
        again, still = await jobs.stop_job("j2", "failed", now, "shard_failed", "2 failed", "x")
        assert not again and still == [leased.id]
        after = await jobs.get_job("j2")
        assert after is not None and after.status == "cancelled"
        assert not await jobs.finish_job("j2", "failed", now)

    run(backend, body)


def _record(i: int, started: float) -> InvocationRecord:
    return InvocationRecord(
        id=f"r{i}", function=F, version=1, trigger="sync", started_at=started,
        duration_ms=1.5, billed_ms=2, memory_mb=128, gb_s=0.00025, cold_start=i == 0,
        init_ms=None, status="succeeded")


def test_records_and_listing_pages_by_cursor(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        kept = [store.record_invocation(_record(i, now + i)) for i in range(7)]
        await asyncio.gather(*kept)
        page = await store.list_invocations(F, limit=3)
        assert [r.id for r in page] == ["r6", "r5", "r4"]
        rest = await store.list_invocations(F, limit=10, before=page[-1].started_at)
        assert [r.id for r in rest] == ["r3", "r2", "r1", "r0"]
        first = await store.get_invocation("r0")
        assert first is not None and first.cold_start is True and first.gb_s == 0.00025
        await q.enqueue(F, [task(i) for i in range(5)], None, POLICY, now, 0)
        seen: list[str] = []
        before = None
        while batch := await q.list(F, None, 2, before):
            seen += [t.id for t in batch]
            before = batch[-1].id
        assert sorted(seen) == [f"t{i}" for i in range(5)] and len(seen) == 5

    run(backend, body)



def test_due_deliveries_skip_receivers_with_no_room(backend: Backend) -> None:
    """A receiver's backlog (oldest first) is passed over while it has no room, whatever
    its URL holds (a LIKE pattern's wildcards are matched literally)."""
    from faasbox.store.relational.delivery import DeliveryRow, SqlDeliveryStore

    def row(i: int, target: str) -> DeliveryRow:
        return DeliveryRow(f"d{i}", f"t{i}", "default", "success", 0, "webhook", target,
                           {"type": "webhook", "url": target}, b"{}", "pending", 0,
                           float(i), 0.0, 1e12)

    async def body(store: SqlStore) -> None:
        d = SqlDeliveryStore(store)
        busy = "http://slow_host:8080"
        await d.add_deliveries(
            [row(i, f"{busy}/in") for i in range(5)] + [row(5, busy), row(6, f"{busy}?x=1"),
                                                      row(7, "http://slowXhost:8080/in"),
                                                      row(8, "https://slow_host:8080/in")])
        assert [r.id for r in await d.due(100.0, 3, set())] == ["d0", "d1", "d2"]
        due = await d.due(100.0, 10, {"d0"}, frozenset({busy}))
        # other receivers: "_" is not a wildcard (slowXhost), another scheme
        assert [r.id for r in due] == ["d7", "d8"]

    run(backend, body)


def test_a_jobs_result_bytes_are_counted_by_the_store(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        made = await q.enqueue(F, [task(i, source="shard", job_id="j1", shard_index=i,
                                        shard_count=3) for i in range(3)], None, POLICY, now,
                               3600)
        assert len(made) == 3
        assert await q.job_results_size("j1") == 0
        for leased in await q.lease(F, 3, now, 60, "a"):
            assert await q.succeed(leased.id, leased.attempts, b'"' + b"x" * 1000 + b'"',
                                   "i", now + 1)
        assert await q.job_results_size("j1") == 3 * 1002
        assert await q.job_results_size("other") == 0

    run(backend, body)


def test_a_jobs_results_are_read_a_page_at_a_time(backend: Backend) -> None:
    async def body(store: SqlStore) -> None:
        q = SqlTaskQueue(store)
        now = time.time()
        await q.enqueue(F, [task(i, source="shard", job_id="j2", shard_index=i,
                                 shard_count=5) for i in range(5)], None, POLICY, now, 3600)
        for leased in await q.lease(F, 5, now, 60, "a"):
            size = 5000 if leased.shard_index == 3 else 1000
            assert await q.succeed(leased.id, leased.attempts, b'"' + b"x" * size + b'"',
                                   "i", now + 1)

        async def page(first: int, shards: int, max_bytes: int) -> list[int]:
            rows = await q.job_results_page("j2", first, shards, max_bytes)
            assert all(r.result is not None for r in rows)
            return [r.shard_index for r in rows]

        assert await page(0, 10, 10**6) == [0, 1, 2, 3, 4]
        assert await page(1, 2, 10**6) == [1, 2]
        assert await page(0, 10, 3 * 1002) == [0, 1, 2]  # the fourth would pass the bytes
        assert await page(3, 10, 100) == [3]  # a page always has its first result
        assert await page(5, 10, 10**6) == []
        assert await page(0, 10, 10**6) == [0, 1, 2, 3, 4]
        assert [t.result for t in await q.job_tasks("j2", results=False)] == [None] * 5

    run(backend, body)
