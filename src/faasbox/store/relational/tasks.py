"""Task rows in SQL: their columns, the insert with idempotency keys, filters and the lease
query; shared by the queue (queue.py) and the triggers' fires (triggers.py)."""

from __future__ import annotations

from typing import Any

import orjson

from faasbox.store.database import Conn, Dialect, Row
from faasbox.store.queue import NewTask, TaskFilter, TaskPolicy, TaskRow
from faasbox.store.relational.functions import tenant_range, where_clause

COLUMNS = ", ".join(TaskRow.__dataclass_fields__)
# the same columns with the event left out (listings of many tasks)
LIGHT_COLUMNS = COLUMNS.replace("event,", "x'' AS event,")
# and the result too (a job's shards listed: thousands of results of megabytes each)
WITHOUT_RESULT_COLUMNS = LIGHT_COLUMNS.replace("result,", "NULL AS result,")
RUNNABLE = "('queued', 'retry_wait')"


def task_row(r: Row) -> TaskRow:
    task = TaskRow(*r)
    task.invocation_ids = orjson.loads(r["invocation_ids"])
    task.cancel_requested = bool(task.cancel_requested)
    return task


def insert_tasks(
    conn: Conn, function: str, tasks: list[NewTask], version: int | None,
    policy: TaskPolicy, now: float, dedup_window_s: float,
) -> list[tuple[TaskRow, bool]]:
    """Insert tasks inside the caller's transaction, deduplicating by idempotency key."""
    out: list[tuple[TaskRow, bool]] = []
    for t in tasks:
        run_at = now if t.run_at is None else max(now, t.run_at)
        expires = run_at + policy.max_event_age_s
        if t.idempotency_key is not None:
            seen = conn.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE function = ?"
                " AND idempotency_key = ?", (function, t.idempotency_key)).fetchone()
            if seen is not None and seen["created_at"] > now - dedup_window_s:
                out.append((task_row(seen), False))
                continue
            if seen is not None:  # outside the window: the key is free again
                conn.execute("UPDATE tasks SET idempotency_key = NULL WHERE id = ?",
                             (seen["id"],))
        row = TaskRow(
            id=t.id, function=function, version=version,
            status="held" if t.held else "queued",
            event=t.event, idempotency_key=t.idempotency_key, attempts=0,
            max_attempts=policy.max_attempts, created_at=now, run_at=run_at,
            expires_at=expires, trace_id=t.trace_id, source=t.source, job_id=t.job_id,
            shard_index=t.shard_index, shard_count=t.shard_count,
            trigger_name=t.trigger_name, priority=t.priority, redrive_of=t.redrive_of,
            workflow_id=t.workflow_id, workflow_step=t.workflow_step)
        # another server may insert the same key meanwhile: its row wins, as if seen
        made = conn.execute(
            "INSERT INTO tasks (id, function, version, status, event, idempotency_key,"
            " max_attempts, created_at, run_at, expires_at, trace_id, source, job_id,"
            " shard_index, shard_count, trigger_name, priority, redrive_of, workflow_id,"
            " workflow_step)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL"
            " DO NOTHING",
            (row.id, function, version, row.status, row.event, row.idempotency_key,
             row.max_attempts, now, run_at, expires, row.trace_id, row.source, row.job_id,
             row.shard_index, row.shard_count, row.trigger_name, row.priority,
             row.redrive_of, row.workflow_id, row.workflow_step)).rowcount
        if not made:
            winner = conn.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE function = ? AND idempotency_key = ?",
                (function, t.idempotency_key)).fetchone()
            out.append((task_row(winner), False))
            continue
        out.append((row, True))
    return out


def task_filter(where: TaskFilter) -> tuple[str, list[Any]]:
    """A WHERE clause (never empty: later conditions are ANDed to it) for a task filter."""
    ids = where.ids
    statuses = where.statuses
    clause, args = where_clause(
        ("function = ?", where.function),
        ("COALESCE(finished_at, created_at) >= ?", where.since),
        ("COALESCE(finished_at, created_at) < ?", where.before),
        *tenant_range("function", where.tenant))
    extra = []
    if statuses:
        extra.append(f"status IN ({', '.join('?' * len(statuses))})")
        args += list(statuses)
    if ids is not None:
        extra.append(f"id IN ({', '.join('?' * len(ids))})" if ids else "1 = 0")
        args += list(ids)
    text = " AND ".join([clause.removeprefix("WHERE ")] * bool(clause) + extra) or "1 = 1"
    return f"WHERE {text}", args


def lease_sql(dialect: Dialect) -> str:
    """Take the highest priority, then the oldest, runnable tasks of one function (rows
    another server holds locked are skipped where the backend locks rows)."""
    return (
        "UPDATE tasks SET status = 'running', attempts = attempts + 1,"
        " lease_until = ?, lease_owner = ?, started_at = COALESCE(started_at, ?)"
        f" WHERE id IN (SELECT id FROM tasks{dialect.lease_index}"
        f" WHERE function = ? AND status IN {RUNNABLE} AND run_at <= ? AND expires_at > ?"
        f" ORDER BY priority DESC, run_at LIMIT ?{dialect.lease_lock})"
        f" RETURNING {COLUMNS}")
