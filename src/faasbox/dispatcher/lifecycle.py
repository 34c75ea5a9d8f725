"""The task lifecycle: runs a leased task, records how it ended, classifies failures for a
retry, cancels and long-polls.

A leased task runs on an instance through the invoker. Its end is written to the queue fenced
by its attempt: succeeded; back to the queue (the function was at capacity: no attempt is
counted); ``retry_wait`` with a backoff when its policy retries that kind of failure; or a
terminal failure (``failed``, ``dead`` after the last attempt, ``expired`` when no retry fits
before ``max_event_age_s``, ``cancelled``). A terminal end is announced as a
:class:`~faasbox.events.TaskFinished` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faasbox import errors
from faasbox.clock import Clock
from faasbox.dispatcher.policies import Policies
from faasbox.events import CancelRequested, Events, TaskFinished
from faasbox.invoker import Invoker, new_request_id
from faasbox.node import Instance
from faasbox.registry import Registry
from faasbox.store.queue import ERROR_CATEGORY, Failure, TaskQueue, TaskRow, backoff_s

GIVE_BACK_DELAY_S = 1.0
T = TypeVar("T")
log = logging.getLogger(__name__)

# told when a run ended: (task, when it is runnable again or None)
Done = Callable[[TaskRow, float | None], None]


class TaskLifecycle:
    def __init__(self, queue: TaskQueue, registry: Registry, invoker: Invoker,
                 policies: Policies, events: Events, clock: Clock) -> None:
        self.queue = queue
        self.registry = registry
        self.invoker = invoker
        self.policies = policies
        self.events = events
        # a waiter reads its task again this often: with several servers, the one that
        # finishes it may be another (one server wakes its waiters itself)
        self.recheck_s = math.inf
        self.clock = clock
        self.running: dict[str, asyncio.Task[None]] = {}
        self.acquiring: Counter[str] = Counter()  # leased, not yet on an instance
        self.running_by_function: Counter[str] = Counter()
        self._instances: dict[str, Instance] = {}  # task id -> instance running it
        self._cancelling: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.started = 0
        self.running_mb = 0.0  # memory the running tasks hold (for fair shares)

    # -- running ----------------------------------------------------------------------------
    def start(self, task: TaskRow, done: Done, cost_mb: float = 0.0) -> None:
        """Run a leased task in the background; ``done`` hears when it ended. ``cost_mb``:
        the memory it holds while it runs."""
        self.started += 1
        self.acquiring[task.function] += 1
        self.running_by_function[task.function] += 1
        self.running_mb += cost_mb
        self.running[task.id] = asyncio.create_task(self._run(task, done, cost_mb),
                                                    name=f"task-{task.id}")

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """The end of an attempt, written to the store; tried again while the store is away
        (the attempt's lease keeps the task until then), so a finished attempt is not run
        again just because the database restarted."""
        delay = 0.1
        while True:
            try:
                return await write()
            except errors.StoreUnavailable as exc:
                log.warning("the store is away; writing a task's end again in %.1f s: %s",
                            delay, exc)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run(self, task: TaskRow, done: Done, cost_mb: float) -> None:
        acquired = False
        again: float | None = None

        def on_start(inst: Instance) -> None:
            nonlocal acquired
            acquired = True
            self.acquiring[task.function] -= 1
            self._instances[task.id] = inst

        invocation_id = new_request_id()
        try:
            row = await self.registry.resolve(task.function, task.version)
            extra: dict[str, Any] = {"task_id": task.id, "attempt": task.attempts,
                                     "trace_id": task.trace_id}
            if task.source == "shard":
                extra["shard"] = {"index": task.shard_index, "count": task.shard_count}
            policy = await self.policies.of_task(task)
            outcome = await self.invoker.invoke(
                row, task.event, trigger="task" if task.source == "async" else task.source,
                request_id=invocation_id, extra=extra, on_start=on_start, wait_record=False,
                interruptible=policy.interruptible)
        except errors.Throttled:
            back = again = self.clock.now() + GIVE_BACK_DELAY_S
            await self._durably(lambda: self.queue.give_back(task.id, task.attempts, back))
        except asyncio.CancelledError:
            await self._finish_cancelled(task, invocation_id if acquired else None)
            raise
        except errors.FaasboxError as exc:
            failure = await self.failure(task, exc)
            ended = await self._durably(lambda: self.queue.fail(
                task.id, task.attempts, failure, invocation_id if acquired else None,
                self.clock.now()))
            again = failure.retry_at
            if again is None and ended:
                self._finished(task, failure.final_status, None)
        else:
            # the record is in the same group commit as the success, or an earlier one
            if await self._durably(lambda: self.queue.succeed(
                    task.id, task.attempts, outcome.payload, invocation_id, self.clock.now())):
                self._finished(task, "succeeded", outcome.payload)
            if outcome.kept is not None:
                with contextlib.suppress(errors.StoreUnavailable):
                    await outcome.kept
        finally:
            if not acquired:
                self.acquiring[task.function] -= 1
            self.running_by_function[task.function] -= 1
            self.running_mb -= cost_mb
            self.running.pop(task.id, None)
            self._instances.pop(task.id, None)
            self._cancelling.discard(task.id)
            self.resolve_waiters(task.id)
            done(task, again)

    async def _finish_cancelled(self, task: TaskRow, invocation_id: str | None) -> None:
        failure = Failure("cancelled", "cancelled while it ran", None, "cancelled")
        with contextlib.suppress(Exception):
            if await asyncio.shield(self.queue.fail(
                    task.id, task.attempts, failure, invocation_id, self.clock.now())):
                self._finished(task, "cancelled", None)

    def _finished(self, task: TaskRow, status: str, result: bytes | None) -> None:
        self.events.emit(TaskFinished(task, status, result))

    async def failure(self, task: TaskRow, exc: errors.FaasboxError) -> Failure:
        """How a failed attempt ends: a retry at some time, or a terminal status."""
        if task.id in self._cancelling:
            return Failure("cancelled", "cancelled while it ran", None, "cancelled")
        if isinstance(exc, errors.NotFound):
            return Failure(exc.code, exc.message, None, "failed")
        policy = await self.policies.of_task(task)
        category = ERROR_CATEGORY.get(exc.code)
        # a preempted task did nothing wrong: it is retried whatever retry_on says
        if category not in policy.retry_on and exc.code != "preempted":
            return Failure(exc.code, exc.message, None, "failed")
        if task.attempts >= task.max_attempts:
            return Failure(exc.code, f"{exc.message} (after {task.attempts} attempts)", None,
                           "dead")
        retry_at = self.clock.now() + backoff_s(policy, task.attempts)
        if retry_at >= task.expires_at:
            return Failure(exc.code, f"{exc.message} (no time left for a retry before"
                           " max_event_age_s)", None, "expired")
        return Failure(exc.code, exc.message, retry_at)

    # -- operations -------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRow:
        row = await self.queue.get(task_id)
        if row is None:
            raise errors.TaskNotFound(f"no task {task_id!r}")
        return row

    async def cancel(self, task_id: str) -> TaskRow:
        row = await self.queue.cancel(task_id, self.clock.now())
        if row is None:
            raise errors.TaskNotFound(f"no task {task_id!r}")
        if row.status == "cancelled" and task_id not in self.running:
            self._finished(row, "cancelled", None)
        if row.status == "running" and task_id in self.running:
            await self.interrupt(task_id)
        elif row.status == "running":  # another server runs it
            self.events.emit(CancelRequested(task_id))
        self.resolve_waiters(task_id)
        return await self.get(task_id)

    async def interrupt(self, task_id: str) -> None:
        """Stop the attempt of ``task_id`` running here, if any (it ends cancelled)."""
        if task_id not in self.running:
            return
        self._cancelling.add(task_id)
        inst = self._instances.get(task_id)
        if inst is not None:
            await inst.stop(errors.Cancelled("the task was cancelled"))
        else:
            self.running[task_id].cancel()
        running = self.running.get(task_id)
        if running is not None:
            await asyncio.wait({running})

    async def wait(self, task_id: str, timeout: float) -> TaskRow:
        """The task once terminal, or as it is when ``timeout`` runs out (long poll)."""
        deadline = self.clock.monotonic() + timeout
        while True:
            # registered before the read: a finish between the two still wakes us
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(fut)
            try:
                row = await self.get(task_id)
                left = deadline - self.clock.monotonic()
                if row.terminal or left <= 0:
                    return row
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation
                async with asyncio.timeout(min(left, self.recheck_s)):
                    await fut
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(task_id, [])
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(task_id, None)

    def resolve_waiters(self, task_id: str) -> None:
        for fut in self._waiters.pop(task_id, []):
            if not fut.done():
                fut.set_result(None)

    def wake_all_waiters(self) -> None:
        """Let every long poll re-read its task (after a sweep changed some)."""
        for task_id in list(self._waiters):
            self.resolve_waiters(task_id)

    async def close(self) -> None:
        running = list(self.running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
