"""The task queue on the embedded SQLite store (see :mod:`faasbox.store.queue` for the contract).

Every mutation runs on the store's writer thread, so enqueues, leases and completions issued
together share one commit (group commit), and the idempotency check and insert of one enqueue
can never interleave with another's.
"""

from __future__ import annotations

import os
from typing import Any

from faasbox.store.base import InvocationRecord
from faasbox.store.database import Conn
from faasbox.store.queue import Failure, NewTask, TaskFilter, TaskPolicy, TaskQueue, TaskRow
from faasbox.store.relational.functions import (
    INSERT_RECORD,
    SqlStore,
    record_values,
    tenant_range,
    where_clause,
)
from faasbox.store.relational.tasks import (
    COLUMNS,
    LIGHT_COLUMNS,
    RUNNABLE,
    WITHOUT_RESULT_COLUMNS,
    insert_tasks,
    lease_sql,
    task_filter,
    task_row,
)


class SqlTaskQueue(TaskQueue):
    """Enqueues are durable writes; leases and a task's end are not (store/database.py): a
    crash of the machine may lose the last of them, and such a task runs again."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._lease_sql = lease_sql(store.dialect)
        self._succeed_sql = (
            "UPDATE tasks SET status = 'succeeded', result = ?, finished_at = ?,"
            " lease_until = NULL, error_code = NULL, error_message = NULL,"
            f" invocation_ids = {store.dialect.json_append('invocation_ids')}"
            " WHERE id = ? AND status = 'running' AND attempts = ?")

    async def enqueue(
        self, function: str, tasks: list[NewTask], version: int | None, policy: TaskPolicy,
        now: float, dedup_window_s: float,
    ) -> list[tuple[TaskRow, bool]]:
        return await self.store.write(
            lambda conn: insert_tasks(conn, function, tasks, version, policy, now, dedup_window_s))

    async def lease(
        self, function: str, limit: int, now: float, lease_s: float, owner: str,
    ) -> list[TaskRow]:
        def tx(conn: Conn) -> list[TaskRow]:
            rows = conn.execute(
                self._lease_sql, (now + lease_s, owner, now, function, now, now, limit)).fetchall()
            return sorted((task_row(r) for r in rows), key=lambda t: (-t.priority, t.run_at))

        return await self.store.write(tx, durable=False, single=True)

    async def succeed(
        self, task_id: str, attempt: int, result: bytes, invocation_id: str, now: float,
        record: InvocationRecord | None = None,
    ) -> bool:
        row = None if record is None else record_values(record)

        def tx(conn: Conn) -> bool:
            if row is not None:
                conn.execute(INSERT_RECORD, row)
            return conn.execute(self._succeed_sql,
                                (result, now, invocation_id, task_id, attempt)).rowcount > 0

        return await self.store.write(tx, durable=False, single=row is None)

    async def fail(
        self, task_id: str, attempt: int, failure: Failure, invocation_id: str | None,
        now: float, record: InvocationRecord | None = None,
    ) -> bool:
        ids = (self.store.dialect.json_append("invocation_ids") if invocation_id
               else "invocation_ids")
        id_args: tuple[Any, ...] = (invocation_id,) if invocation_id else ()
        if failure.retry_at is not None:
            sets = "status = 'retry_wait', run_at = ?"
            args: tuple[Any, ...] = (failure.retry_at,)
        else:
            sets = "status = ?, finished_at = ?"
            args = (failure.final_status, now)
        row = None if record is None else record_values(record)

        def tx(conn: Conn) -> bool:
            if row is not None:
                conn.execute(INSERT_RECORD, row)
            return conn.execute(
                f"UPDATE tasks SET {sets}, lease_until = NULL, error_code = ?,"
                f" error_message = ?, invocation_ids = {ids}"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (*args, failure.code, failure.message, *id_args, task_id, attempt),
            ).rowcount > 0

        return await self.store.write(tx, durable=False, single=row is None)

    async def give_back(self, task_id: str, attempt: int, run_at: float) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE tasks SET status = CASE WHEN attempts > 1 THEN 'retry_wait'"
                " ELSE 'queued' END, attempts = attempts - 1, run_at = ?, lease_until = NULL"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (run_at, task_id, attempt)).rowcount > 0

        return await self.store.write(tx, durable=False, single=True)

    async def cancel(self, task_id: str, now: float) -> TaskRow | None:
        def tx(conn: Conn) -> TaskRow | None:
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?,"
                " error_code = 'cancelled', error_message = 'cancelled before it ran'"
                " WHERE id = ? AND status IN ('held', 'queued', 'retry_wait')",
                (now, task_id))
            conn.execute(
                "UPDATE tasks SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                (task_id,))
            row = conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            return task_row(row) if row else None

        return await self.store.write(tx)

    async def recover(self, now: float, owner: str | None = None,
                      live_since: float | None = None) -> int:
        # taken back: leases past their deadline, and leases of other servers; with
        # live_since, only of servers whose last heartbeat is older (or gone)
        dead, args = "", ()  # type: tuple[str, tuple[Any, ...]]
        if owner is not None:
            dead = " OR (lease_owner <> ?"
            args = (owner,)
            if live_since is not None:
                dead += " AND lease_owner NOT IN (SELECT id FROM servers WHERE heartbeat_at >= ?)"
                args += (live_since,)
            dead += ")"

        def tx(conn: Conn) -> int:
            return conn.execute(
                "UPDATE tasks SET lease_until = NULL, lease_owner = NULL,"
                " status = CASE WHEN cancel_requested <> 0 THEN 'cancelled'"
                "   WHEN attempts >= max_attempts THEN 'dead' ELSE 'retry_wait' END,"
                " finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= max_attempts"
                "   THEN ? ELSE NULL END,"
                " error_code = CASE WHEN cancel_requested <> 0 THEN 'cancelled'"
                "   ELSE 'lease_lost' END,"
                " error_message = 'the attempt was lost with its instance or server',"
                " run_at = ?"
                f" WHERE status = 'running' AND (lease_until < ?{dead})",
                (now, now, now, *args)).rowcount

        return await self.store.write(tx, durable=False, single=True)

    async def expire(self, now: float) -> int:
        def tx(conn: Conn) -> int:
            return conn.execute(
                "UPDATE tasks SET status = 'expired', finished_at = ?, error_code = 'expired',"
                " error_message = 'the task was not run within its max_event_age_s'"
                f" WHERE status IN {RUNNABLE} AND expires_at <= ?", (now, now)).rowcount

        return await self.store.write(tx, durable=False, single=True)

    async def next_due(self) -> float | None:
        def q(conn: Conn) -> float | None:
            leases = conn.execute(
                "SELECT MIN(lease_until) FROM tasks WHERE status = 'running'").fetchone()[0]
            ages = conn.execute(
                f"SELECT MIN(expires_at) FROM tasks WHERE status IN {RUNNABLE}").fetchone()[0]
            due = [float(v) for v in (leases, ages) if v is not None]
            return min(due) if due else None

        return await self.store.read(q)

    async def purge(self, before: float) -> int:
        def tx(conn: Conn) -> int:
            return conn.execute(
                "DELETE FROM tasks WHERE finished_at < ? AND status IN"
                " ('succeeded', 'failed', 'cancelled', 'expired', 'dead', 'redriven')",
                (before,)).rowcount

        return await self.store.write(tx)

    async def get(self, task_id: str) -> TaskRow | None:
        def q(conn: Conn) -> TaskRow | None:
            row = conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            return task_row(row) if row else None

        return await self.store.read(q)

    async def release(self, job_id: str, limit: int, now: float, max_event_age_s: float) -> int:
        def tx(conn: Conn) -> int:
            return conn.execute(
                "UPDATE tasks SET status = 'queued', run_at = ?, expires_at = ?"
                " WHERE id IN (SELECT id FROM tasks WHERE job_id = ? AND status = 'held'"
                " ORDER BY shard_index LIMIT ?)",
                (now, now + max_event_age_s, job_id, limit)).rowcount

        return await self.store.write(tx)

    async def job_counts(self, job_id: str) -> dict[str, int]:
        def q(conn: Conn) -> dict[str, int]:
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM tasks WHERE job_id = ? AND source = 'shard'"
                " GROUP BY status",
                (job_id,)).fetchall()
            return {r[0]: r[1] for r in rows}

        return await self.store.read(q)

    async def jobs_counts(self, job_ids: list[str]) -> dict[str, dict[str, int]]:
        marks = ", ".join("?" * len(job_ids))

        def q(conn: Conn) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {j: {} for j in job_ids}
            for job_id, status, n in conn.execute(
                    f"SELECT job_id, status, COUNT(*) FROM tasks WHERE job_id IN ({marks})"
                    " AND source = 'shard' GROUP BY job_id, status", job_ids).fetchall():
                out[job_id][status] = n
            return out

        return await self.store.read(q) if job_ids else {}

    async def jobs_started(self, job_ids: list[str]) -> dict[str, float]:
        marks = ", ".join("?" * len(job_ids))

        def q(conn: Conn) -> dict[str, float]:
            return {job_id: started for job_id, started in conn.execute(
                f"SELECT job_id, MIN(started_at) FROM tasks WHERE job_id IN ({marks})"
                " AND source = 'shard' AND started_at IS NOT NULL GROUP BY job_id",
                job_ids).fetchall()}

        return await self.store.read(q) if job_ids else {}

    async def job_tasks(self, job_id: str, results: bool = True) -> list[TaskRow]:
        columns = LIGHT_COLUMNS if results else WITHOUT_RESULT_COLUMNS

        def q(conn: Conn) -> list[TaskRow]:
            return [task_row(r) for r in conn.execute(
                f"SELECT {columns} FROM tasks WHERE job_id = ? AND source = 'shard'"
                " ORDER BY shard_index", (job_id,)).fetchall()]

        return await self.store.read(q)

    async def job_results_page(self, job_id: str, first: int, max_shards: int,
                               max_bytes: int) -> list[TaskRow]:
        def q(conn: Conn) -> list[TaskRow]:
            sizes = conn.execute(
                "SELECT shard_index, COALESCE(LENGTH(result), 0) FROM tasks WHERE job_id = ?"
                " AND source = 'shard' AND shard_index >= ? ORDER BY shard_index LIMIT ?",
                (job_id, first, max_shards)).fetchall()
            if not sizes:
                return []
            last, total = sizes[0][0], 0
            for index, size in sizes:
                total += int(size)
                if total > max_bytes and index != sizes[0][0]:
                    break
                last = index
            return [task_row(r) for r in conn.execute(
                f"SELECT {LIGHT_COLUMNS} FROM tasks WHERE job_id = ? AND source = 'shard'"
                " AND shard_index BETWEEN ? AND ? ORDER BY shard_index",
                (job_id, first, last)).fetchall()]

        return await self.store.read(q)

    async def job_results_size(self, job_id: str) -> int:
        def q(conn: Conn) -> int:
            row = conn.execute(
                "SELECT COALESCE(SUM(LENGTH(result)), 0) FROM tasks WHERE job_id = ?"
                " AND source = 'shard'", (job_id,)).fetchone()
            return int(row[0])

        return await self.store.read(q)

    async def by_trace(self, trace_id: str) -> list[TaskRow]:
        def q(conn: Conn) -> list[TaskRow]:
            return [task_row(r) for r in conn.execute(
                f"SELECT {LIGHT_COLUMNS} FROM tasks WHERE trace_id = ?"
                f" ORDER BY created_at, {self.store.dialect.insertion_order}",
                (trace_id,)).fetchall()]

        return await self.store.read(q)

    # -- batch operations and queue control --------------------------------------------------
    async def find(self, where: TaskFilter, limit: int) -> list[TaskRow]:
        clause, args = task_filter(where)

        def q(conn: Conn) -> list[TaskRow]:
            return [task_row(r) for r in conn.execute(
                f"SELECT {LIGHT_COLUMNS} FROM tasks {clause} ORDER BY created_at, id LIMIT ?",
                (*args, limit)).fetchall()]

        return await self.store.read(q)

    async def redrive(
        self, ids: list[str], policies: dict[str, TaskPolicy], now: float,
    ) -> list[tuple[TaskRow, TaskRow]]:
        def tx(conn: Conn) -> list[tuple[TaskRow, TaskRow]]:
            out: list[tuple[TaskRow, TaskRow]] = []
            for task_id in ids:
                r = conn.execute(
                    f"SELECT {COLUMNS} FROM tasks WHERE id = ? AND redriven_to IS NULL"
                    " AND status IN ('dead', 'failed', 'expired')", (task_id,)).fetchone()
                if r is None:
                    continue
                old = task_row(r)
                new = NewTask(os.urandom(16).hex(), old.event, None, old.trace_id,
                              source=old.source, trigger_name=old.trigger_name,
                              priority=old.priority,
                              redrive_of=old.id)
                [(row, _)] = insert_tasks(conn, old.function, [new], old.version,
                                          policies[old.function], now, 0)
                conn.execute("UPDATE tasks SET status = 'redriven', redriven_to = ?"
                             " WHERE id = ?", (row.id, old.id))
                old.status, old.redriven_to = "redriven", row.id
                out.append((old, row))
            return out

        return await self.store.write(tx)

    async def cancel_where(self, where: TaskFilter, now: float) -> tuple[list[TaskRow], list[str]]:
        clause, args = task_filter(where)

        def tx(conn: Conn) -> tuple[list[TaskRow], list[str]]:
            cancelled = [task_row(r) for r in conn.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?,"
                " error_code = 'cancelled', error_message = 'cancelled before it ran'"
                f" WHERE id IN (SELECT id FROM tasks {clause}"
                "   AND status IN ('held', 'queued', 'retry_wait'))"
                f" RETURNING {LIGHT_COLUMNS}", (now, *args)).fetchall()]
            running = [r[0] for r in conn.execute(
                "UPDATE tasks SET cancel_requested = 1"
                f" WHERE id IN (SELECT id FROM tasks {clause} AND status = 'running')"
                " RETURNING id", args).fetchall()]
            return cancelled, running

        return await self.store.write(tx)

    async def purge_where(self, where: TaskFilter) -> int:
        clause, args = task_filter(where)

        def tx(conn: Conn) -> int:
            return conn.execute(
                f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks {clause} AND status IN"
                " ('succeeded', 'failed', 'cancelled', 'expired', 'dead', 'redriven'))",
                args).rowcount

        return await self.store.write(tx)

    async def depth(self) -> dict[str, tuple[int, float]]:
        def q(conn: Conn) -> dict[str, tuple[int, float]]:
            return {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT function, COUNT(*), MIN(created_at) FROM tasks"
                f" WHERE status IN {RUNNABLE} GROUP BY function")}

        return await self.store.read(q)

    async def paused(self) -> set[str]:
        def q(conn: Conn) -> set[str]:
            return {r[0] for r in conn.execute(
                "SELECT function FROM queue_state WHERE paused = 1")}

        return await self.store.read(q)

    async def set_paused(self, function: str, paused: bool, now: float) -> None:
        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO queue_state (function, paused, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (function) DO UPDATE SET paused = excluded.paused,"
                " updated_at = excluded.updated_at", (function, int(paused), now))

        await self.store.write(tx)

    async def list(
        self, function: str | None, status: str | None, limit: int, before: str | None,
        tenant: str | None = None,
    ) -> list[TaskRow]:
        clause, args = where_clause(
            ("function = ?", function), ("status = ?", status),
            ("(created_at, id) < (SELECT created_at, id FROM tasks WHERE id = ?)", before),
            *tenant_range("function", tenant))
        sql = (f"SELECT {COLUMNS} FROM tasks {clause}"
               " ORDER BY created_at DESC, id DESC LIMIT ?")

        def q(conn: Conn) -> list[TaskRow]:
            return [task_row(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.store.read(q)

    async def runnable_functions(self, now: float) -> dict[str, float]:
        def q(conn: Conn) -> dict[str, float]:
            rows = conn.execute(
                f"SELECT function, MIN(run_at) FROM tasks WHERE status IN {RUNNABLE}"
                " GROUP BY function").fetchall()
            return {r[0]: r[1] for r in rows}

        return await self.store.read(q)

    async def next_run_at(self, function: str) -> float | None:
        def q(conn: Conn) -> float | None:
            row = conn.execute(
                f"SELECT MIN(run_at) FROM tasks WHERE function = ? AND status IN {RUNNABLE}",
                (function,)).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self.store.read(q)

    async def counts(self, function: str) -> dict[str, int]:
        def q(conn: Conn) -> dict[str, int]:
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM tasks WHERE function = ? GROUP BY status",
                (function,)).fetchall()
            return {r[0]: r[1] for r in rows}

        return await self.store.read(q)

    async def unfinished(self) -> dict[str, int]:
        def q(conn: Conn) -> dict[str, int]:
            return {r[0]: r[1] for r in conn.execute(
                "SELECT function, COUNT(*) FROM tasks WHERE status IN"
                " ('held', 'queued', 'retry_wait', 'running') GROUP BY function")}

        return await self.store.read(q)

    async def get_policy(self, function: str) -> TaskPolicy:
        def q(conn: Conn) -> TaskPolicy:
            row = conn.execute("SELECT policy FROM task_policies WHERE function = ?",
                               (function,)).fetchone()
            return TaskPolicy.model_validate_json(row[0]) if row else TaskPolicy()

        return await self.store.read(q)

    async def put_policy(self, function: str, policy: TaskPolicy, now: float) -> None:
        text = policy.model_dump_json()

        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO task_policies (function, policy, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (function) DO UPDATE SET policy = excluded.policy,"
                " updated_at = excluded.updated_at", (function, text, now))

        await self.store.write(tx)
