"""Destinations: where an async task's outcome goes (its function's task policy says).

- ``on_success`` fires when a task succeeded: from :class:`~faasbox.events.InvocationFinished`,
  which the invoker awaits before the task is marked succeeded, so a server that dies in
  between finds the destinations fired when the retried attempt fires them again (idempotent).
- ``on_failure`` fires when a task ended ``dead`` or ``expired``: a loop woken by
  :class:`~faasbox.events.TaskFinished` (and every few seconds, for tasks expired by the
  queue's sweep or lost with a dead server) fires every such task without a failure delivery.
- A function's ``on_success`` spec field (the chain) is one more function destination that
  sends the bare result, under the key ``chain:<task or invocation id>``; it also chains
  synchronous calls, as it always did. Deploys refuse cycles; ``MAX_HOPS`` chained or
  destination tasks in one trace stop any other loop.

Each destination is a delivery row, idempotent per ``(task, condition, position)``: a function
destination enqueues its task (key ``dest:<task>:<condition>:<position>``) and a topic
destination publishes (message id ``<task>:<condition>:<position>``) when it is fired; a
webhook row is worked by :class:`~faasbox.delivery.webhooks.Webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.delivery import records
from faasbox.delivery.model import Destination, FunctionDestination
from faasbox.delivery.topics import Topics
from faasbox.delivery.webhooks import Webhooks
from faasbox.dispatcher import Dispatcher, Policies
from faasbox.events import InvocationFinished, TaskFinished
from faasbox.invoker import new_id, new_task_id, new_trace_id
from faasbox.store.queue import NewTask, TaskQueue, TaskRow
from faasbox.store.relational.delivery import DeliveryRow, SqlDeliveryStore
from faasbox.tenancy.names import qualify, tenant_of, within

log = logging.getLogger(__name__)

MAX_HOPS = 16  # chained and destination tasks in one trace
FAILURE_SWEEP_S = 2.0
FAILURE_LOOKBACK_S = 86400.0
PURGE_EVERY_S = 60.0
HOP_SOURCES = ("chain", "destination", "topic")  # a topic's subscriber may publish again


class DestinationService:
    def __init__(
        self, store: SqlDeliveryStore, queue: TaskQueue, dispatcher: Dispatcher,
        policies: Policies, topics: Topics, webhooks: Webhooks, clock: Clock,
        executed_version: Callable[[TaskRow], Awaitable[int | None]],
        on_delivery: Callable[[str, str], None] | None = None, max_hops: int = MAX_HOPS,
        retention_s: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.queue = queue
        self.dispatcher = dispatcher
        self.policies = policies
        self.topics = topics
        self.webhooks = webhooks
        self.clock = clock
        self.executed_version = executed_version
        self.on_delivery = on_delivery or (lambda kind, outcome: None)
        self.max_hops = max_hops
        self.retention_s = retention_s
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._failure_loop(), name="destinations")

    async def close(self) -> None:
        await background.stop(self._loop)

    # -- success ----------------------------------------------------------------------------
    def on_invocation(self, event: InvocationFinished) -> Awaitable[None] | None:
        """Subscribed to :class:`InvocationFinished`; awaited before the caller hears."""
        if event.payload is None or "shard" in event.extra:
            return None
        task_id = event.extra.get("task_id")
        if task_id is None and not event.row.spec.on_success:
            return None
        return self._succeeded(event, task_id)

    async def _succeeded(self, event: InvocationFinished, task_id: str | None) -> None:
        assert event.payload is not None
        chain = event.row.spec.on_success
        if task_id is None:  # a synchronous call: only the chain
            assert chain is not None
            if await self._hops_left(event.record.trace_id, chain):
                await self.dispatcher.enqueue(within(event.row.function, chain), [NewTask(
                    new_task_id(), event.payload, f"chain:{event.record.id}",
                    event.record.trace_id or new_trace_id(), source="chain")])
            return
        dests: list[Destination] = []
        if chain:
            dests.append(FunctionDestination(type="function", name=chain, payload="result"))
        policy = await self.policies.of_function(event.row.function)
        dests += policy.destinations.on_success
        if not dests:
            return
        task = await self.queue.get(task_id)
        if task is None:
            return
        now = self.clock.now()
        record = records.build(task, "succeeded", now, result=event.payload,
                               executed_version=event.row.version)
        await self.fire(task, "success", dests, record, event.payload, chained=bool(chain))

    # -- failure ----------------------------------------------------------------------------
    def on_task_finished(self, event: TaskFinished) -> None:
        if event.status in ("dead", "expired"):
            self._kick.set()

    async def _failure_loop(self) -> None:
        last_purge = 0.0
        while True:
            try:
                await self.fire_failures()
                if self.clock.now() - last_purge > PURGE_EVERY_S:  # finished deliveries go
                    last_purge = self.clock.now()                # with their tasks
                    await self.store.purge(last_purge - self.retention_s)
            except Exception:
                log.exception("firing on_failure destinations failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FAILURE_SWEEP_S):  # keeps a cancel (3.11)
                    await self._kick.wait()
            self._kick.clear()

    async def fire_failures(self) -> int:
        """Fire ``on_failure`` of every recently dead or expired task not fired yet."""
        fired = 0
        while True:
            found = await self.store.failure_candidates(
                self.clock.now() - FAILURE_LOOKBACK_S, 100)
            for task_id, function in found:
                task = await self.queue.get(task_id)
                if task is None:
                    continue
                policy = await self.policies.of_function(function)
                dests = policy.destinations.on_failure
                record = records.build(task, task.status, self.clock.now(), result=None,
                                       executed_version=await self.executed_version(task))
                await self.fire(task, "failure", dests, record, None)
                fired += 1
            if len(found) < 100:
                return fired

    # -- firing -----------------------------------------------------------------------------
    async def fire(
        self, task: TaskRow, condition: str, dests: list[Destination], record: bytes,
        result: bytes | None, chained: bool = False,
    ) -> None:
        if not dests:
            return
        done = await self.store.fired([task.id], condition)
        if done:
            return  # fired before (an attempt retried after a crash)
        now = self.clock.now()
        tenant = tenant_of(task.function)
        rows = []
        for position, dest in enumerate(dests):
            row = DeliveryRow(
                id=new_id(), task_id=task.id, tenant=tenant, condition=condition,
                position=position, kind=dest.type, target="",
                destination=dest.model_dump(exclude_none=True), body=record,
                status="pending", attempts=0, due_at=now, created_at=now, expires_at=now)
            try:
                await self._fire_one(task, condition, row, dest, result,
                                     legacy=chained and position == 0)
            except errors.FaasboxError as exc:
                row.status, row.last_error, row.finished_at = "failed", exc.message, now
            if row.kind != "webhook":
                self.on_delivery(row.kind, row.status)
            rows.append(row)
        added = await self.store.add_deliveries(rows)
        if any(r.kind == "webhook" for r in added):
            self.webhooks.kick()

    async def _fire_one(self, task: TaskRow, condition: str, row: DeliveryRow,
                        dest: Destination, result: bytes | None, legacy: bool) -> None:
        now = self.clock.now()
        if dest.type == "webhook":
            row.target = dest.url
            row.expires_at = self.webhooks.expires_at(now, dest.max_age_s)
            return
        row.finished_at = now
        if dest.type == "topic":
            row.target = qualify(tenant_of(task.function), dest.name)
            if not await self._hops_left(task.trace_id, dest.name):
                raise errors.FaasboxError(f"not published: {self.max_hops} chained tasks in"
                                          " this trace already (the limit)")
            message_id, tasks = await self.topics.publish(
                row.target, row.body, f"{task.id}:{condition}:{row.position}", task.trace_id)
            row.status, row.outcome = "delivered", {"message_id": message_id, "tasks": tasks}
            return
        row.target = within(task.function, dest.name)
        if not await self._hops_left(task.trace_id, dest.name):
            raise errors.FaasboxError(f"not submitted: {self.max_hops} chained tasks in"
                                      " this trace already (the limit)")
        event = result if dest.payload == "result" and result is not None else row.body
        key = f"chain:{task.id}" if legacy else f"dest:{task.id}:{condition}:{row.position}"
        [(made, created)] = await self.dispatcher.enqueue(row.target, [NewTask(
            new_task_id(), event, key, task.trace_id or new_trace_id(),
            source="chain" if legacy else "destination")])
        row.status = "delivered"
        row.outcome = {"task_id": made.id, "created": created}

    async def _hops_left(self, trace: str | None, nxt: str) -> bool:
        if trace is None:
            return True
        hops = sum(1 for t in await self.queue.by_trace(trace) if t.source in HOP_SOURCES)
        if hops >= self.max_hops:
            log.warning("trace %s stops at %s: %d chained tasks already (the limit)", trace,
                        nxt, hops)
            return False
        return True


def deliveries_view(rows: list[tuple[DeliveryRow, list[Any]]]) -> list[dict[str, Any]]:
    from faasbox.tenancy.names import display

    out = []
    for row, attempts in rows:
        view: dict[str, Any] = {
            "delivery_id": row.id, "condition": row.condition, "position": row.position,
            "type": row.kind,
            "target": row.target if row.kind == "webhook" else display(row.target),
            "status": row.status, "attempts": row.attempts, "created_at": row.created_at,
            "next_attempt_at": row.due_at if row.status == "pending" else None,
            "expires_at": row.expires_at if row.kind == "webhook" else None,
            "finished_at": row.finished_at, "error": row.last_error,
            "attempt_log": [{"attempt": a.attempt, "at": a.at, "status_code": a.status_code,
                             "duration_ms": a.duration_ms, "error": a.error}
                            for a in attempts]}
        if row.outcome is not None:
            view["outcome"] = row.outcome
        out.append(view)
    return out
