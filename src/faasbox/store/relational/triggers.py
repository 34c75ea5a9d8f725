"""Cron triggers and jobs on the embedded SQLite store (see :mod:`faasbox.store.triggers`)."""

from __future__ import annotations

import orjson

from faasbox.store.database import Conn, Row
from faasbox.store.queue import NewTask, TaskPolicy
from faasbox.store.relational.functions import SqlStore, tenant_range, where_clause
from faasbox.store.relational.tasks import insert_tasks
from faasbox.store.triggers import JobRow, TriggerRow, TriggerStore
from faasbox.triggers.cron import TriggerSpec

_TRIGGER_COLUMNS = ", ".join(TriggerRow.__dataclass_fields__)
_JOB_COLUMNS = ", ".join(JobRow.__dataclass_fields__)


def _trigger(r: Row) -> TriggerRow:
    row = TriggerRow(*r)
    row.spec = TriggerSpec.model_validate_json(r["spec"])
    return row


def _job(r: Row) -> JobRow:
    row = JobRow(*r)
    row.spec = orjson.loads(r["spec"])
    return row


class SqlTriggerStore(TriggerStore):
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- triggers ---------------------------------------------------------------------------
    async def put_trigger(self, row: TriggerRow, create_only: bool) -> bool:
        conflict = "DO NOTHING" if create_only else (
            "DO UPDATE SET spec = excluded.spec, next_fire_at = excluded.next_fire_at,"
            " updated_at = excluded.updated_at")
        args = (row.function, row.name, row.spec.model_dump_json(), row.next_fire_at,
                row.last_fire_at, row.last_run, row.pending_fires, row.fires, row.skipped,
                row.created_at, row.updated_at)

        def tx(conn: Conn) -> bool:
            return conn.execute(
                f"INSERT INTO triggers ({_TRIGGER_COLUMNS}) VALUES"
                f" ({', '.join('?' * len(args))}) ON CONFLICT (function, name) {conflict}",
                args).rowcount > 0

        return await self.store.write(tx)

    async def update_trigger(
        self, function: str, name: str, *, next_fire_at: float | None,
        last_fire_at: float | None, last_run: str | None, pending_fires: int,
        fired: int, skipped: int, now: float,
    ) -> None:
        def tx(conn: Conn) -> None:
            conn.execute(
                "UPDATE triggers SET next_fire_at = ?, last_fire_at = ?, last_run = ?,"
                " pending_fires = ?, fires = fires + ?, skipped = skipped + ?, updated_at = ?"
                " WHERE function = ? AND name = ?",
                (next_fire_at, last_fire_at, last_run, pending_fires, fired, skipped, now,
                 function, name))

        await self.store.write(tx)

    async def get_trigger(self, function: str, name: str) -> TriggerRow | None:
        def q(conn: Conn) -> TriggerRow | None:
            r = conn.execute(f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE function = ?"
                             " AND name = ?", (function, name)).fetchone()
            return _trigger(r) if r else None

        return await self.store.read(q)

    async def list_triggers(self, function: str | None) -> list[TriggerRow]:
        clause, args = where_clause(("function = ?", function))

        def q(conn: Conn) -> list[TriggerRow]:
            return [_trigger(r) for r in conn.execute(
                f"SELECT {_TRIGGER_COLUMNS} FROM triggers {clause} ORDER BY function, name",
                args).fetchall()]

        return await self.store.read(q)

    async def delete_trigger(self, function: str, name: str) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute("DELETE FROM triggers WHERE function = ? AND name = ?",
                                (function, name)).rowcount > 0

        return await self.store.write(tx)

    async def delete_triggers(self, function: str) -> int:
        def tx(conn: Conn) -> int:
            return conn.execute("DELETE FROM triggers WHERE function = ?",
                                (function,)).rowcount

        return await self.store.write(tx)

    # -- jobs -------------------------------------------------------------------------------
    async def create_job(
        self, job: JobRow, shards: list[NewTask], policy: TaskPolicy, dedup_window_s: float,
    ) -> tuple[JobRow, bool]:
        args = (job.id, job.function, job.version, job.status, orjson.dumps(job.spec).decode(),
                job.shard_count, job.created_at, job.finished_at, job.reduce_task_id,
                job.result, job.error_code, job.error_message, job.trace_id,
                job.idempotency_key, job.trigger_name)

        def tx(conn: Conn) -> tuple[JobRow, bool]:
            if job.idempotency_key is not None:
                seen = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                                    (job.idempotency_key,)).fetchone()
                if seen is not None and seen["created_at"] > job.created_at - dedup_window_s:
                    return _job(seen), False
                if seen is not None:
                    conn.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?",
                                 (seen["id"],))
            conn.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES"
                         f" ({', '.join('?' * len(args))})", args)
            insert_tasks(conn, job.function, shards, job.version, policy, job.created_at,
                         dedup_window_s)
            return job, True

        return await self.store.write(tx)

    async def get_job(self, job_id: str) -> JobRow | None:
        def q(conn: Conn) -> JobRow | None:
            r = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            return _job(r) if r else None

        return await self.store.read(q)

    async def list_jobs(
        self, function: str | None, status: str | None, limit: int, before: str | None,
        tenant: str | None = None,
    ) -> list[JobRow]:
        clause, args = where_clause(
            ("function = ?", function), ("status = ?", status),
            ("(created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)", before),
            *tenant_range("function", tenant))

        def q(conn: Conn) -> list[JobRow]:
            return [_job(r) for r in conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY created_at DESC, id DESC"
                " LIMIT ?", (*args, limit)).fetchall()]

        return await self.store.read(q)

    async def running_jobs(self) -> list[JobRow]:
        def q(conn: Conn) -> list[JobRow]:
            return [_job(r) for r in conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'running'").fetchall()]

        return await self.store.read(q)

    async def set_reduce(self, job_id: str, task_id: str) -> None:
        def tx(conn: Conn) -> None:
            conn.execute("UPDATE jobs SET reduce_task_id = ? WHERE id = ?", (task_id, job_id))

        await self.store.write(tx)

    async def finish_job(
        self, job_id: str, status: str, now: float, result: bytes | None = None,
        error_code: str | None = None, error_message: str | None = None,
    ) -> bool:
        return await self.store.write(
            lambda conn: _end_job(conn, job_id, status, now, result, error_code, error_message))

    async def stop_job(
        self, job_id: str, status: str, now: float, error_code: str, error_message: str,
        shard_message: str,
    ) -> tuple[bool, list[str]]:
        def tx(conn: Conn) -> tuple[bool, list[str]]:
            ended = _end_job(conn, job_id, status, now, None, error_code, error_message)
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?,"
                " error_code = 'cancelled', error_message = ?"
                " WHERE job_id = ? AND status IN ('held', 'queued', 'retry_wait')",
                (now, shard_message, job_id))
            running = [r[0] for r in conn.execute(
                "SELECT id FROM tasks WHERE job_id = ? AND status = 'running'",
                (job_id,)).fetchall()]
            return ended, running

        return await self.store.write(tx)


def _end_job(conn: Conn, job_id: str, status: str, now: float, result: bytes | None,
             error_code: str | None, error_message: str | None) -> bool:
    """End a running job; False if it had already ended."""
    return conn.execute(
        "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error_code = ?,"
        " error_message = ? WHERE id = ? AND status = 'running'",
        (status, now, result, error_code, error_message, job_id)).rowcount > 0
