"""The task dispatcher: runs queued tasks on instances as capacity frees up.

It leases a task only when the function has a free slot (``max_instances * concurrency``
minus slots in use, within the policy's ``async_concurrency``) and no synchronous caller is
waiting for one, so a backlog never takes a slot a sync call is queued for. Each round visits
every function with runnable tasks and leases at most ``LEASE_BATCH`` of each, so one
function's backlog does not delay another's tasks. It sleeps until an enqueue, a released slot,
or the next retry time wakes it: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from faasbox import errors
from faasbox.clock import Clock
from faasbox.invoker import Invoker, new_id, new_request_id
from faasbox.node import Instance
from faasbox.queue import (
    ERROR_CATEGORY,
    Failure,
    NewTask,
    TaskPolicy,
    TaskQueue,
    TaskRow,
    backoff_s,
)
from faasbox.registry import Registry
from faasbox.scheduler import Scheduler

log = logging.getLogger(__name__)

# told when a task reaches a terminal state: (task as leased, final status, result)
Listener = Callable[[TaskRow, str, bytes | None], None]

LEASE_BATCH = 64
LEASE_MARGIN_S = 60.0
GIVE_BACK_DELAY_S = 1.0


class Dispatcher:
    def __init__(
        self, queue: TaskQueue, registry: Registry, scheduler: Scheduler, invoker: Invoker,
        clock: Clock, dedup_window_s: float = 86400.0, retention_s: float = 7 * 86400.0,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.scheduler = scheduler
        self.invoker = invoker
        self.clock = clock
        self.dedup_window_s = dedup_window_s
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.owner = uuid.uuid4().hex  # this server's lease identity
        self._ready: dict[str, float] = {}  # function -> earliest run_at of its runnable tasks
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._instances: dict[str, Instance] = {}  # task id -> instance running it
        self._acquiring: Counter[str] = Counter()  # leased, not yet on an instance
        self._running_by_function: Counter[str] = Counter()
        self._cancelling: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._policies: dict[str, TaskPolicy] = {}
        self._loops: list[asyncio.Task[None]] = []
        self.started = 0
        self.listeners: list[Listener] = []
        # the retry policy of a job's shards (set by the job service)
        self.job_policy: Callable[[str], Awaitable[TaskPolicy | None]] | None = None
        scheduler.on_release = self._on_release

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        recovered = await self.queue.recover(self.clock.now(), self.owner)
        if recovered:
            log.warning("recovered %d tasks whose attempts were lost", recovered)
        self._ready.update(await self.queue.runnable_functions(self.clock.now()))
        self._loops = [asyncio.create_task(self._dispatch_loop(), name="dispatch"),
                       asyncio.create_task(self._sweep_loop(), name="task-sweep")]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- submitting -------------------------------------------------------------------------
    async def policy(self, function: str) -> TaskPolicy:
        policy = self._policies.get(function)
        if policy is None:
            policy = self._policies[function] = await self.queue.get_policy(function)
        return policy

    async def set_policy(self, function: str, policy: TaskPolicy) -> None:
        await self.queue.put_policy(function, policy, self.clock.now())
        self._policies[function] = policy
        self._wake.set()

    async def submit(
        self, function: str, events: list[bytes], keys: list[str | None],
        version: int | None = None, trace_id: str | None = None, source: str = "async",
        trigger_name: str | None = None,
    ) -> list[tuple[TaskRow, bool]]:
        """Durably enqueue tasks; returns ``[(task, created)]`` once they are committed.
        Each task without a ``trace_id`` starts a trace of its own."""
        new = [NewTask(new_id(), e, k, trace_id or new_id(), source=source,
                       trigger_name=trigger_name)
               for e, k in zip(events, keys, strict=True)]
        return await self.enqueue(function, new, version)

    async def enqueue(
        self, function: str, new: list[NewTask], version: int | None = None,
        policy: TaskPolicy | None = None,
    ) -> list[tuple[TaskRow, bool]]:
        policy = policy or await self.policy(function)
        now = self.clock.now()
        rows = await self.queue.enqueue(function, new, version, policy, now,
                                        self.dedup_window_s)
        if any(created for _, created in rows):
            self.notify(function, now)
        return rows

    def notify(self, function: str, run_at: float) -> None:
        """Tasks of ``function`` become runnable at ``run_at`` (an enqueue or release)."""
        self._ready[function] = min(run_at, self._ready.get(function, run_at))
        self._wake.set()

    def _on_release(self, function: str) -> None:
        if function in self._ready:
            self._wake.set()

    # -- dispatching ------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = await self._round()
            except Exception:
                log.exception("dispatch round failed")
                next_at = self.clock.now() + 1.0
            if next_at is None:
                await self._wake.wait()
            else:
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation (close)
                # that comes as the event is set, and this loop would never end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_at - self.clock.now())):
                        await self._wake.wait()

    async def _round(self) -> float | None:
        """Lease what fits for every ready function; returns when the next retry is due."""
        now = self.clock.now()
        next_at: float | None = None
        wanted: list[tuple[str, int]] = []
        for function, run_at in list(self._ready.items()):
            if run_at > now:
                next_at = run_at if next_at is None else min(next_at, run_at)
                continue
            free = await self._free_slots(function)
            if free > 0:
                wanted.append((function, min(free, LEASE_BATCH)))
        leases = await asyncio.gather(*[self._lease(f, n, now) for f, n in wanted])
        for (function, asked), tasks in zip(wanted, leases, strict=True):
            for task in tasks:
                self._start(task)
            if len(tasks) < asked:  # nothing more runnable now: when is the next one due?
                due = await self.queue.next_run_at(function)
                if due is None:
                    self._ready.pop(function, None)
                else:
                    self._ready[function] = due
                    if due > now:
                        next_at = due if next_at is None else min(next_at, due)
        return next_at

    async def _lease(self, function: str, limit: int, now: float) -> list[TaskRow]:
        try:
            row = await self.registry.resolve(function, None)
        except errors.NotFound:
            row = None
        timeout = row.spec["timeout_s"] if row else 900.0
        lease_s = timeout + self.scheduler.acquire_timeout_s + LEASE_MARGIN_S
        return await self.queue.lease(function, limit, now, lease_s, self.owner)

    async def _free_slots(self, function: str) -> int:
        try:
            row = await self.registry.resolve(function, None)
        except errors.NotFound:
            return LEASE_BATCH  # lease them so that they fail visibly
        held, starting, sync_waiting = self.scheduler.slots_in_use(function)
        if sync_waiting:
            return 0  # sync callers come first
        total = row.spec["max_instances"] * row.spec["concurrency"]
        policy = await self.policy(function)
        limit = policy.async_concurrency or total
        in_use = held + starting + self._acquiring[function]
        return int(min(total - in_use, limit - self._running_by_function[function]))

    def _start(self, task: TaskRow) -> None:
        self.started += 1
        self._acquiring[task.function] += 1
        self._running_by_function[task.function] += 1
        self._running[task.id] = asyncio.create_task(self._run(task), name=f"task-{task.id}")

    async def _run(self, task: TaskRow) -> None:
        acquired = False

        def on_start(inst: Instance) -> None:
            nonlocal acquired
            acquired = True
            self._acquiring[task.function] -= 1
            self._instances[task.id] = inst

        invocation_id = new_request_id()
        try:
            row = await self.registry.resolve(task.function, task.version)
            extra: dict[str, Any] = {"task_id": task.id, "attempt": task.attempts,
                                     "trace_id": task.trace_id}
            if task.source == "shard":
                extra["shard"] = {"index": task.shard_index, "count": task.shard_count}
            outcome = await self.invoker.invoke(
                row, task.event, trigger="task" if task.source == "async" else task.source,
                request_id=invocation_id, extra=extra,
                on_start=on_start)
        except errors.Throttled:
            run_at = self.clock.now() + GIVE_BACK_DELAY_S
            await self.queue.give_back(task.id, task.attempts, run_at)
            self.notify(task.function, run_at)
        except asyncio.CancelledError:
            await self._finish_cancelled(task, invocation_id if acquired else None)
            raise
        except errors.FaasboxError as exc:
            failure = await self._failure(task, exc)
            done = await self.queue.fail(task.id, task.attempts, failure,
                                         invocation_id if acquired else None, self.clock.now())
            if failure.retry_at is not None:
                self.notify(task.function, failure.retry_at)
            elif done:
                self._finished(task, failure.final_status, None)
        else:
            if await self.queue.succeed(task.id, task.attempts, outcome.payload,
                                        invocation_id, self.clock.now()):
                self._finished(task, "succeeded", outcome.payload)
        finally:
            if not acquired:
                self._acquiring[task.function] -= 1
            self._running_by_function[task.function] -= 1
            self._running.pop(task.id, None)
            self._instances.pop(task.id, None)
            self._cancelling.discard(task.id)
            self._resolve_waiters(task.id)
            self._wake.set()

    async def _finish_cancelled(self, task: TaskRow, invocation_id: str | None) -> None:
        failure = Failure("cancelled", "cancelled while it ran", None, "cancelled")
        with contextlib.suppress(Exception):
            if await asyncio.shield(self.queue.fail(
                    task.id, task.attempts, failure, invocation_id, self.clock.now())):
                self._finished(task, "cancelled", None)

    def _finished(self, task: TaskRow, status: str, result: bytes | None) -> None:
        for listener in self.listeners:
            try:
                listener(task, status, result)
            except Exception:
                log.exception("task listener failed")

    async def _failure(self, task: TaskRow, exc: errors.FaasboxError) -> Failure:
        if task.id in self._cancelling:
            return Failure("cancelled", "cancelled while it ran", None, "cancelled")
        if isinstance(exc, errors.NotFound):
            return Failure(exc.code, exc.message, None, "failed")
        policy = None
        if task.job_id is not None and self.job_policy is not None:
            policy = await self.job_policy(task.job_id)
        policy = policy or await self.policy(task.function)
        category = ERROR_CATEGORY.get(exc.code)
        if category not in policy.retry_on:
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
    async def cancel(self, task_id: str) -> TaskRow:
        row = await self.queue.cancel(task_id, self.clock.now())
        if row is None:
            raise errors.NotFound(f"no task {task_id!r}")
        if row.status == "cancelled" and task_id not in self._running:
            self._finished(row, "cancelled", None)
        if row.status == "running" and task_id in self._running:
            self._cancelling.add(task_id)
            inst = self._instances.get(task_id)
            if inst is not None:
                await inst.stop(errors.Cancelled("the task was cancelled"))
            else:
                self._running[task_id].cancel()
            running = self._running.get(task_id)
            if running is not None:
                await asyncio.wait({running})
        self._resolve_waiters(task_id)
        final = await self.queue.get(task_id)
        assert final is not None
        return final

    async def wait(self, task_id: str, timeout: float) -> TaskRow:
        """The task once terminal, or as it is when ``timeout`` runs out (long poll)."""
        deadline = self.clock.monotonic() + timeout
        while True:
            # registered before the read: a finish between the two still wakes us
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(fut)
            try:
                row = await self.queue.get(task_id)
                if row is None:
                    raise errors.NotFound(f"no task {task_id!r}")
                left = deadline - self.clock.monotonic()
                if row.terminal or left <= 0:
                    return row
                async with asyncio.timeout(left):  # not wait_for: see _dispatch_loop
                    await fut
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(task_id, [])
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(task_id, None)

    def _resolve_waiters(self, task_id: str) -> None:
        for fut in self._waiters.pop(task_id, []):
            if not fut.done():
                fut.set_result(None)

    def stats(self, function: str) -> dict[str, Any]:
        return {"running": self._running_by_function[function],
                "ready": function in self._ready}

    # -- housekeeping -----------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        last_purge = 0.0
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                now = self.clock.now()
                if await self.queue.recover(now, self.owner):
                    self._ready.update(await self.queue.runnable_functions(now))
                    self._wake.set()
                if await self.queue.expire(now):
                    for task_id in list(self._waiters):
                        self._resolve_waiters(task_id)
                if now - last_purge > 60:
                    last_purge = now
                    await self.queue.purge(now - self.retention_s)
            except Exception:
                log.exception("task sweep failed")

