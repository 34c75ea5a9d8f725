"""Task operations: pause and resume a function's queue, redrive dead-lettered tasks, cancel
and purge by filter.

- Pausing is a row in ``queue_state`` (so it survives a restart) and the dispatcher's
  ``paused`` set (so nothing of the function is leased). Submits are still accepted; tasks
  keep their ``max_event_age_s`` while paused.
- Redrive submits each matching dead (failed, expired) task again as a new task with the same
  event, trace and priority, fresh attempts under the function's current policy and
  ``redrive_of`` pointing back; the original becomes ``redriven`` with ``redriven_to``. One
  transaction per call; a task is redriven at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

from faasbox import errors
from faasbox.clock import Clock
from faasbox.dispatcher import Dispatcher, Policies, TaskLifecycle
from faasbox.events import Events, TaskFinished, TasksEnqueued
from faasbox.store.queue import TaskFilter, TaskQueue, TaskRow

MAX_BATCH = 10_000
REDRIVABLE = ("dead", "failed", "expired")
CANCELLABLE = ("held", "queued", "retry_wait", "running")


class TaskOperations:
    def __init__(self, queue: TaskQueue, dispatcher: Dispatcher, lifecycle: TaskLifecycle,
                 policies: Policies, events: Events, clock: Clock,
                 on_redrive: Callable[[str, int], None] | None = None) -> None:
        self.queue = queue
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle
        self.policies = policies
        self.events = events
        self.clock = clock
        self.on_redrive = on_redrive or (lambda function, n: None)

    async def start(self) -> None:
        self.dispatcher.paused.update(await self.queue.paused())

    # -- pause / resume ---------------------------------------------------------------------
    def is_paused(self, function: str) -> bool:
        return function in self.dispatcher.paused

    async def pause(self, function: str) -> None:
        await self.queue.set_paused(function, True, self.clock.now())
        self.dispatcher.paused.add(function)
        self.dispatcher.lifecycle.release_held(function)  # leased ahead, not yet started
        await self.dispatcher.lifecycle.settle_held()

    async def resume(self, function: str) -> None:
        await self.queue.set_paused(function, False, self.clock.now())
        self.dispatcher.paused.discard(function)
        self.dispatcher.notify(function, self.clock.now())

    # -- redrive ----------------------------------------------------------------------------
    async def redrive(self, where: TaskFilter, admit: Callable[[int], None] | None = None,
                      ) -> list[tuple[TaskRow, TaskRow]]:
        """Submit the matching dead tasks again; ``admit(n)`` first (the tenant's rate and
        queue, as for tasks submitted: it raises to refuse)."""
        if not where.statuses or not set(where.statuses) <= set(REDRIVABLE):
            raise errors.InvalidRequest(f"redrive takes status {', '.join(REDRIVABLE)}")
        found = [t for t in await self.queue.find(where, MAX_BATCH)
                 if t.source != "shard" and t.redriven_to is None]
        if not found:
            return []
        if admit is not None:
            admit(len(found))
        policies = {f: await self.policies.of_function(f) for f in {t.function for t in found}}
        pairs = await self.queue.redrive([t.id for t in found], policies, self.clock.now())
        by_function = Counter(new.function for _, new in pairs)
        for function, n in by_function.items():
            self.on_redrive(function, n)
            self.events.emit(TasksEnqueued(function, n))
            self.dispatcher.notify(function, self.clock.now())
        return pairs

    # -- cancel / purge ---------------------------------------------------------------------
    async def cancel(self, where: TaskFilter) -> tuple[int, int]:
        """(tasks cancelled before they ran, running tasks stopped)."""
        if where.statuses and not set(where.statuses) <= set(CANCELLABLE):
            raise errors.InvalidRequest(f"cancel takes status {', '.join(CANCELLABLE)}")
        where = TaskFilter(where.tenant, where.function, where.statuses or CANCELLABLE,
                           where.since, where.before, where.ids)
        cancelled, running = await self.queue.cancel_where(where, self.clock.now())
        for row in cancelled:
            row.status = "cancelled"
            self.events.emit(TaskFinished(row, "cancelled", None))
            self.lifecycle.resolve_waiters(row.id)
        for task_id in running:  # stopped now; one lost with a dead server ends at recovery
            with contextlib.suppress(errors.NotFound):
                if task_id in self.lifecycle.running:
                    await asyncio.shield(self.lifecycle.cancel(task_id))
        return len(cancelled), len(running)

    async def purge(self, where: TaskFilter) -> int:
        return await self.queue.purge_where(where)
