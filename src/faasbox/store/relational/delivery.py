"""Persistence of delivery (see :mod:`faasbox.delivery`): webhook deliveries and their
attempts, webhook secrets, topics and subscriptions, workflows, on the embedded SQLite store.

Contract: every write returns once committed. ``add_deliveries`` is idempotent per
``(task_id, condition, position)``: the destinations of a task that are fired twice (an
attempt retried after a crash) are recorded, and delivered, once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from faasbox.store.database import Conn, Row
from faasbox.store.relational.functions import SqlStore, tenant_range, where_clause


@dataclass
class DeliveryRow:
    id: str
    task_id: str
    tenant: str
    condition: str
    position: int
    kind: str
    target: str
    destination: dict[str, Any]
    body: bytes
    status: str  # pending | delivered | failed
    attempts: int
    due_at: float
    created_at: float
    expires_at: float
    finished_at: float | None = None
    last_error: str | None = None
    outcome: dict[str, Any] | None = None


@dataclass
class AttemptRow:
    delivery_id: str
    attempt: int
    at: float
    status_code: int | None
    duration_ms: float
    error: str | None


@dataclass
class WorkflowRow:
    id: str
    tenant: str
    name: str | None
    spec: dict[str, Any]
    status: str  # running | succeeded | failed | cancelled
    stage: int
    stage_input: bytes
    created_at: float
    finished_at: float | None = None
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    trace_id: str | None = None
    failure_task: str | None = None
    idempotency_key: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status != "running"


@dataclass
class Subscription:
    topic: str
    function: str
    filter: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


_D_COLUMNS = ", ".join(DeliveryRow.__dataclass_fields__)
_W_COLUMNS = ", ".join(WorkflowRow.__dataclass_fields__)


def _delivery(r: Row) -> DeliveryRow:
    row = DeliveryRow(*r)
    row.destination = orjson.loads(r["destination"])
    row.outcome = None if r["outcome"] is None else orjson.loads(r["outcome"])
    return row


def _workflow(r: Row) -> WorkflowRow:
    row = WorkflowRow(*r)
    row.spec = orjson.loads(r["spec"])
    return row


class SqlDeliveryStore:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- deliveries -------------------------------------------------------------------------
    async def add_deliveries(self, rows: list[DeliveryRow]) -> list[DeliveryRow]:
        """Insert the rows not yet there; returns the ones inserted."""
        def tx(conn: Conn) -> list[DeliveryRow]:
            added = []
            for row in rows:
                values = [getattr(row, f) for f in DeliveryRow.__dataclass_fields__]
                values[7] = orjson.dumps(row.destination).decode()
                values[16] = None if row.outcome is None else orjson.dumps(row.outcome).decode()
                if conn.execute(
                        f"INSERT INTO deliveries ({_D_COLUMNS}) VALUES"
                        f" ({', '.join('?' * len(values))}) ON CONFLICT DO NOTHING",
                        values).rowcount:
                    added.append(row)
            return added

        return await self.store.write(tx)

    async def due(self, now: float, limit: int, skip: set[str],
                  skip_receivers: frozenset[str] = frozenset()) -> list[DeliveryRow]:
        """Pending deliveries due by ``now``, oldest first, but those in ``skip`` and those
        to ``skip_receivers`` (``scheme://host[:port]``: receivers with no room, whose backlog
        must not fill the window and hold up every other receiver)."""
        not_to = ""
        args: list[object] = [now]
        for receiver in sorted(skip_receivers):
            like = receiver.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            not_to += (" AND NOT (target = ? OR target LIKE ? ESCAPE '\\'"
                       " OR target LIKE ? ESCAPE '\\')")
            args += [receiver, like + "/%", like + "?%"]

        def q(conn: Conn) -> list[DeliveryRow]:
            out = []
            for r in conn.execute(
                    f"SELECT {_D_COLUMNS} FROM deliveries WHERE status = 'pending'"
                    f" AND due_at <= ?{not_to} ORDER BY due_at LIMIT ?",
                    (*args, limit + len(skip))):
                if r["id"] not in skip:
                    out.append(_delivery(r))
            return out[:limit]

        return await self.store.read(q)

    async def next_due(self, skip: set[str]) -> float | None:
        not_in = f" AND id NOT IN ({', '.join('?' * len(skip))})" if skip else ""

        def q(conn: Conn) -> float | None:
            row = conn.execute(
                f"SELECT MIN(due_at) FROM deliveries WHERE status = 'pending'{not_in}",
                tuple(skip)).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.store.read(q)

    async def record_attempt(
        self, delivery_id: str, attempt: AttemptRow, status: str, due_at: float,
        now: float,
    ) -> None:
        """One attempt of a webhook delivery and where that leaves it (pending again at
        ``due_at``, delivered or failed)."""
        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempt, at,"
                " status_code, duration_ms, error) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (delivery_id, attempt) DO UPDATE SET at = excluded.at,"
                " status_code = excluded.status_code, duration_ms = excluded.duration_ms,"
                " error = excluded.error",
                (delivery_id, attempt.attempt, attempt.at, attempt.status_code,
                 attempt.duration_ms, attempt.error))
            conn.execute(
                "UPDATE deliveries SET attempts = ?, status = ?, due_at = ?, last_error = ?,"
                " finished_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END WHERE id = ?",
                (attempt.attempt, status, due_at, attempt.error, status, now, delivery_id))

        await self.store.write(tx)

    async def of_task(self, task_id: str) -> list[tuple[DeliveryRow, list[AttemptRow]]]:
        def q(conn: Conn) -> list[tuple[DeliveryRow, list[AttemptRow]]]:
            out = []
            for r in conn.execute(
                    f"SELECT {_D_COLUMNS} FROM deliveries WHERE task_id = ?"
                    " ORDER BY condition DESC, position", (task_id,)).fetchall():
                attempts = [AttemptRow(*a) for a in conn.execute(
                    "SELECT delivery_id, attempt, at, status_code, duration_ms, error"
                    " FROM delivery_attempts WHERE delivery_id = ? ORDER BY attempt",
                    (r["id"],))]
                out.append((_delivery(r), attempts))
            return out

        return await self.store.read(q)

    async def fired(self, task_ids: list[str], condition: str) -> set[str]:
        """The tasks among ``task_ids`` with a delivery row for ``condition``."""
        marks = ", ".join("?" * len(task_ids))

        def q(conn: Conn) -> set[str]:
            return {r[0] for r in conn.execute(
                f"SELECT DISTINCT task_id FROM deliveries WHERE task_id IN ({marks})"
                " AND condition = ?", (*task_ids, condition))}

        return await self.store.read(q) if task_ids else set()

    async def failure_candidates(self, since: float, limit: int) -> list[tuple[str, str]]:
        """(task id, function) of tasks that ended dead or expired since ``since``, of
        functions with on_failure destinations, and without a failure delivery yet."""
        on_failure = self.store.dialect.json_array_length(
            "p.policy", ("destinations", "on_failure"))

        def q(conn: Conn) -> list[tuple[str, str]]:
            return [(r[0], r[1]) for r in conn.execute(
                "SELECT t.id, t.function FROM tasks t JOIN task_policies p"
                " ON p.function = t.function"
                " WHERE t.status IN ('dead', 'expired') AND t.finished_at >= ?"
                " AND t.finished_at >= p.updated_at"
                f" AND {on_failure} > 0"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.task_id = t.id"
                "   AND d.condition = 'failure') LIMIT ?", (since, limit))]

        return await self.store.read(q)

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        def q(conn: Conn) -> dict[tuple[str, str], int]:
            return {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT kind, status, COUNT(*) FROM deliveries GROUP BY kind, status")}

        return await self.store.read(q)

    async def purge(self, before: float) -> int:
        def tx(conn: Conn) -> int:
            conn.execute(
                "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries"
                " WHERE status != 'pending' AND finished_at < ?)", (before,))
            return conn.execute("DELETE FROM deliveries WHERE status != 'pending'"
                                " AND finished_at < ?", (before,)).rowcount

        return await self.store.write(tx)

    async def task_states(self) -> dict[tuple[str, str], int]:
        """Finished tasks kept, by function and final state (metrics)."""
        def q(conn: Conn) -> dict[tuple[str, str], int]:
            return {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT function, status, COUNT(*) FROM tasks WHERE status IN ('succeeded',"
                " 'failed', 'cancelled', 'expired', 'dead', 'redriven')"
                " GROUP BY function, status")}

        return await self.store.read(q)

    # -- webhook secrets --------------------------------------------------------------------
    async def secret(self, tenant: str, name: str, now: float, rotate: bool = False) -> str:
        """The tenant's webhook secret ``name``, made at first use (or anew: ``rotate``)."""
        fresh = "whsec_" + secrets.token_hex(24)

        def tx(conn: Conn) -> str:
            conflict = ("DO UPDATE SET secret = excluded.secret, created_at ="
                        " excluded.created_at" if rotate else "DO NOTHING")
            conn.execute(
                "INSERT INTO webhook_secrets (tenant, name, secret, created_at)"
                f" VALUES (?, ?, ?, ?) ON CONFLICT (tenant, name) {conflict}",
                (tenant, name, fresh, now))
            row = conn.execute("SELECT secret FROM webhook_secrets WHERE tenant = ?"
                               " AND name = ?", (tenant, name)).fetchone()
            return str(row[0])

        return await self.store.write(tx)

    # -- topics -----------------------------------------------------------------------------
    async def create_topic(self, name: str, now: float) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute("INSERT INTO topics (name, created_at) VALUES (?, ?)"
                                " ON CONFLICT DO NOTHING", (name, now)).rowcount > 0

        return await self.store.write(tx)

    async def topics(self, tenant: str) -> list[tuple[str, float]]:
        clause, args = where_clause(*tenant_range("name", tenant))

        def q(conn: Conn) -> list[tuple[str, float]]:
            return [(r[0], r[1]) for r in conn.execute(
                f"SELECT name, created_at FROM topics {clause} ORDER BY name", args)]

        return await self.store.read(q)

    async def topic(self, name: str) -> float | None:
        def q(conn: Conn) -> float | None:
            row = conn.execute("SELECT created_at FROM topics WHERE name = ?",
                               (name,)).fetchone()
            return None if row is None else float(row[0])

        return await self.store.read(q)

    async def delete_topic(self, name: str) -> bool:
        def tx(conn: Conn) -> bool:
            conn.execute("DELETE FROM subscriptions WHERE topic = ?", (name,))
            return conn.execute("DELETE FROM topics WHERE name = ?", (name,)).rowcount > 0

        return await self.store.write(tx)

    async def subscribe(self, sub: Subscription) -> bool:
        """Add or replace a subscription; True when it is new."""
        def tx(conn: Conn) -> bool:
            seen = conn.execute("SELECT 1 FROM subscriptions WHERE topic = ? AND function = ?",
                                (sub.topic, sub.function)).fetchone()
            conn.execute(
                "INSERT INTO subscriptions (topic, function, filter, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (topic, function) DO UPDATE SET"
                " filter = excluded.filter",
                (sub.topic, sub.function, orjson.dumps(sub.filter).decode(), sub.created_at))
            return seen is None

        return await self.store.write(tx)

    async def unsubscribe(self, topic: str, function: str) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute("DELETE FROM subscriptions WHERE topic = ? AND function = ?",
                                (topic, function)).rowcount > 0

        return await self.store.write(tx)

    async def subscriptions(self, topic: str) -> list[Subscription]:
        def q(conn: Conn) -> list[Subscription]:
            return [Subscription(r[0], r[1], orjson.loads(r[2]), r[3]) for r in conn.execute(
                "SELECT topic, function, filter, created_at FROM subscriptions"
                " WHERE topic = ? ORDER BY function", (topic,))]

        return await self.store.read(q)

    async def drop_function(self, function: str) -> None:
        def tx(conn: Conn) -> None:
            conn.execute("DELETE FROM subscriptions WHERE function = ?", (function,))
            conn.execute("DELETE FROM queue_state WHERE function = ?", (function,))

        await self.store.write(tx)

    # -- workflows --------------------------------------------------------------------------
    async def put_definition(self, name: str, spec: dict[str, Any], now: float) -> None:
        def tx(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO workflow_definitions (name, spec, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,"
                " updated_at = excluded.updated_at", (name, orjson.dumps(spec).decode(), now))

        await self.store.write(tx)

    async def definition(self, name: str) -> dict[str, Any] | None:
        def q(conn: Conn) -> dict[str, Any] | None:
            row = conn.execute("SELECT spec FROM workflow_definitions WHERE name = ?",
                               (name,)).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        return await self.store.read(q)

    async def definitions(self, tenant: str) -> list[tuple[str, dict[str, Any]]]:
        clause, args = where_clause(*tenant_range("name", tenant))

        def q(conn: Conn) -> list[tuple[str, dict[str, Any]]]:
            return [(r[0], orjson.loads(r[1])) for r in conn.execute(
                f"SELECT name, spec FROM workflow_definitions {clause} ORDER BY name", args)]

        return await self.store.read(q)

    async def delete_definition(self, name: str) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute("DELETE FROM workflow_definitions WHERE name = ?",
                                (name,)).rowcount > 0

        return await self.store.write(tx)

    async def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        def tx(conn: Conn) -> tuple[WorkflowRow, bool]:
            if row.idempotency_key is not None:
                seen = conn.execute(f"SELECT {_W_COLUMNS} FROM workflows WHERE"
                                    " idempotency_key = ?", (row.idempotency_key,)).fetchone()
                if seen is not None:
                    return _workflow(seen), False
            values = [getattr(row, f) for f in WorkflowRow.__dataclass_fields__]
            values[3] = orjson.dumps(row.spec).decode()
            conn.execute(f"INSERT INTO workflows ({_W_COLUMNS}) VALUES"
                         f" ({', '.join('?' * len(values))})", values)
            return row, True

        return await self.store.write(tx)

    async def workflow(self, workflow_id: str) -> WorkflowRow | None:
        def q(conn: Conn) -> WorkflowRow | None:
            row = conn.execute(f"SELECT {_W_COLUMNS} FROM workflows WHERE id = ?",
                               (workflow_id,)).fetchone()
            return None if row is None else _workflow(row)

        return await self.store.read(q)

    async def workflows(self, tenant: str, limit: int) -> list[WorkflowRow]:
        def q(conn: Conn) -> list[WorkflowRow]:
            return [_workflow(r) for r in conn.execute(
                f"SELECT {_W_COLUMNS} FROM workflows WHERE tenant = ?"
                " ORDER BY created_at DESC LIMIT ?", (tenant, limit))]

        return await self.store.read(q)

    async def running_workflows(self) -> list[str]:
        def q(conn: Conn) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT id FROM workflows WHERE status = 'running'")]

        return await self.store.read(q)

    async def advance_workflow(self, workflow_id: str, stage: int, stage_input: bytes) -> bool:
        """Move a running workflow from ``stage - 1`` to ``stage``."""
        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE workflows SET stage = ?, stage_input = ? WHERE id = ?"
                " AND status = 'running' AND stage = ?",
                (stage, stage_input, workflow_id, stage - 1)).rowcount > 0

        return await self.store.write(tx)

    async def end_workflow(
        self, workflow_id: str, status: str, now: float, result: bytes | None = None,
        error_code: str | None = None, error_message: str | None = None,
    ) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE workflows SET status = ?, finished_at = ?, result = ?, error_code = ?,"
                " error_message = ? WHERE id = ? AND status = 'running'",
                (status, now, result, error_code, error_message, workflow_id)).rowcount > 0

        return await self.store.write(tx)

    async def set_failure_task(self, workflow_id: str, task_id: str) -> None:
        def tx(conn: Conn) -> None:
            conn.execute("UPDATE workflows SET failure_task = ? WHERE id = ?",
                         (task_id, workflow_id))

        await self.store.write(tx)

    async def workflow_tasks(
        self, workflow_id: str, stage: int | None = None, results: bool = True,
    ) -> list[tuple[str, int, int | None, str, bytes | None, str | None, str | None, str]]:
        """(task id, stage, member, status, result, error code, error message, function), of
        one ``stage`` or all; with ``results`` False the results are left out (None)."""
        result = "result" if results else "NULL"
        where = "workflow_id = ?"
        args: list[Any] = [workflow_id]
        if stage is not None:
            where += " AND workflow_step = ?"
            args.append(stage)

        def q(conn: Conn) -> list[Any]:
            return [tuple(r) for r in conn.execute(
                f"SELECT id, workflow_step, shard_index, status, {result}, error_code,"
                f" error_message, function FROM tasks WHERE {where}"
                " ORDER BY workflow_step, shard_index", args)]

        return await self.store.read(q)

    async def workflow_results_size(self, workflow_id: str, stage: int) -> int:
        """The bytes of one stage's results in all, counted by the store (none read)."""
        def q(conn: Conn) -> int:
            row = conn.execute(
                "SELECT COALESCE(SUM(LENGTH(result)), 0) FROM tasks WHERE workflow_id = ?"
                " AND workflow_step = ?", (workflow_id, stage)).fetchone()
            return int(row[0])

        return await self.store.read(q)
