"""The task dispatcher: enqueues tasks and leases them onto instances as capacity frees up.

It leases a task only when the function has a free slot (``max_instances * concurrency``
minus slots in use, within the policy's ``async_concurrency``) and no synchronous caller is
waiting for one, so a backlog never takes a slot a sync call is queued for. Each round visits
every function with runnable tasks and leases at most ``LEASE_BATCH`` of each, so one
function's backlog does not delay another's tasks. It sleeps until an enqueue, a released slot
(:class:`~faasbox.events.SlotReleased`), the end of a run or the next retry time wakes it: no
polling. What happens to a leased task is the :class:`TaskLifecycle`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from typing import Any

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.cluster import Cluster
from faasbox.dispatcher.fairness import FairShare, Want
from faasbox.dispatcher.lifecycle import TaskLifecycle
from faasbox.dispatcher.policies import Policies
from faasbox.events import Events, SlotReleased, TasksEnqueued
from faasbox.invoker import new_task_id, new_trace_id
from faasbox.registry import Registry
from faasbox.scheduler import Scheduler
from faasbox.store.queue import MIN_EVENT_AGE_S, NewTask, TaskPolicy, TaskQueue, TaskRow
from faasbox.tenancy.admission import Admission
from faasbox.tenancy.names import tenant_of

log = logging.getLogger(__name__)

LEASE_BATCH = 64
LEASE_MARGIN_S = 60.0
PURGE_EVERY_S = 60.0
CHECK_READY_S = 5.0
STRANDED_RETRY_S = 0.05
# with one server, recover and expire run only when something may be due: at the earliest
# lease deadline or expiry the store holds, within a second of new tasks (the shortest
# max_event_age_s), and at least this often
SWEEP_AT_LEAST_S = 60.0


class Dispatcher:
    def __init__(
        self, queue: TaskQueue, registry: Registry, scheduler: Scheduler,
        lifecycle: TaskLifecycle, policies: Policies, admission: Admission, events: Events,
        clock: Clock, cluster: Cluster,
        dedup_window_s: float = 86400.0, retention_s: float = 7 * 86400.0,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.policies = policies
        self.admission = admission
        self.events = events
        self.clock = clock
        self.dedup_window_s = dedup_window_s
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.cluster = cluster
        self.owner = cluster.id  # this server's lease identity
        self._ready: dict[str, float] = {}  # function -> earliest run_at of its runnable tasks
        self._notified: Counter[str] = Counter()  # function -> notifies so far
        self._wake = asyncio.Event()
        self._sweep_due = 0.0  # when the next recover and expire are due (one server)
        self.sweeps = 0
        self._loops: list[asyncio.Task[None]] = []
        self.fair = FairShare()
        # functions whose queue is paused: nothing of theirs is leased (delivery.QueueControl
        # keeps this set and notifies on resume)
        self.paused: set[str] = set()
        lifecycle.may_start = lambda function: function not in self.paused

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        now = self.clock.now()
        recovered = await self.queue.recover(now, self.owner, self.cluster.live_since(now))
        if recovered:
            log.warning("recovered %d tasks whose attempts were lost", recovered)
        self._ready.update(await self.queue.runnable_functions(self.clock.now()))
        self._loops = [asyncio.create_task(self._dispatch_loop(), name="dispatch"),
                       asyncio.create_task(self._sweep_loop(), name="task-sweep")]

    async def close(self) -> None:
        await background.stop(*self._loops)
        await self.lifecycle.close()

    # -- submitting -------------------------------------------------------------------------
    async def submit(
        self, function: str, events: list[bytes], keys: list[str | None],
        version: int | None = None, trace_id: str | None = None, source: str = "async",
        trigger_name: str | None = None,
    ) -> list[tuple[TaskRow, bool]]:
        """Durably enqueue tasks; returns ``[(task, created)]`` once they are committed.
        Each task without a ``trace_id`` starts a trace of its own."""
        new = [NewTask(new_task_id(), e, k, trace_id or new_trace_id(), source=source,
                       trigger_name=trigger_name)
               for e, k in zip(events, keys, strict=True)]
        return await self.enqueue(function, new, version)

    async def enqueue(
        self, function: str, new: list[NewTask], version: int | None = None,
        policy: TaskPolicy | None = None,
    ) -> list[tuple[TaskRow, bool]]:
        policy = policy or await self.policies.of_function(function)
        now = self.clock.now()
        rows = await self.queue.enqueue(function, new, version, policy, now,
                                        self.dedup_window_s)
        created = sum(1 for _, c in rows if c)
        if created:
            self.events.emit(TasksEnqueued(function, created))
            self.notify(function, now)
        return rows

    async def set_policy(self, function: str, policy: TaskPolicy) -> None:
        await self.policies.put(function, policy)
        self._wake.set()

    def notify(self, function: str, run_at: float) -> None:
        """Tasks of ``function`` become runnable at ``run_at`` (an enqueue or release)."""
        self._ready[function] = min(run_at, self._ready.get(function, run_at))
        self._sweep_due = min(self._sweep_due, self.clock.now() + MIN_EVENT_AGE_S)
        self._notified[function] += 1
        self._wake.set()

    async def refresh(self, _: str = "") -> None:
        """Read which functions have runnable tasks (what other servers enqueued or released
        while a message was lost)."""
        runnable = await self.queue.runnable_functions(self.clock.now())
        for function, run_at in runnable.items():
            self.notify(function, run_at)

    def on_slot_released(self, event: SlotReleased) -> None:
        if event.function in self._ready:
            self._wake.set()

    def _ran(self, task: TaskRow, again: float | None) -> None:
        if again is not None:
            self.notify(task.function, again)
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
        """Lease what fits for every ready function, shared fairly among tenants when the
        node is short (:mod:`.fairness`); returns when the next retry is due."""
        now = self.clock.now()
        if not self.cluster.store_ok:  # no new leases while the store is lost
            return now + 1.0
        next_at: float | None = None
        wants: list[Want] = []
        frees: dict[str, int] = {}  # slots free now; the rest of a lease is held ahead
        # functions with runnable tasks, and those whose held tasks wait for a slot
        ready = {**{f: now for f in self.lifecycle.ahead}, **self._ready}
        for function, run_at in ready.items():
            if run_at > now:
                next_at = run_at if next_at is None else min(next_at, run_at)
                continue
            want = await self._want(function, frees)
            if want is not None:
                wants.append(want)
        room = self.capacity_mb() - self.lifecycle.running_mb
        quota = self.fair.allocate(wants, room, self.weight, most=LEASE_BATCH * len(wants))
        wanted = [(f, n) for f, n in quota.items()]
        seen = {f: self._notified[f] for f, _ in wanted}
        leases = await asyncio.gather(*[self._lease(f, n, now) for f, n in wanted])
        costs = {w.function: w.cost_mb for w in wants}
        for (function, asked), tasks in zip(wanted, leases, strict=True):
            for i, task in enumerate(tasks):
                if i < frees[function]:
                    self.lifecycle.start(task, self._ran, costs[function])
                else:
                    self.lifecycle.hold(task, self._ran, costs[function])
            if tasks and not self.lifecycle.running_by_function[function]:
                self.lifecycle.start_held(function)  # the runs ended while it leased
            if len(tasks) < asked:  # nothing more runnable now: when is the next one due?
                due = await self._drained(function, asked - len(tasks), seen[function])
                if due is not None and due > now:
                    next_at = due if next_at is None else min(next_at, due)
        if self.lifecycle.stranded():  # held tasks wait for a free slot: look again soon
            soon = now + STRANDED_RETRY_S
            next_at = soon if next_at is None else min(next_at, soon)
        return next_at

    async def _drained(self, function: str, unused: int, seen: int) -> float | None:
        """A lease found fewer tasks than asked: refund the fair share, and keep ``function``
        ready only for its next due task (returned), unless tasks came in meanwhile."""
        tenant = tenant_of(function)
        self.fair.refund(tenant, unused, self.weight(tenant))
        due = await self.queue.next_run_at(function)
        if self._notified[function] != seen:
            return None  # tasks came in meanwhile (their commit may be newer than the read)
        if due is None:
            self._ready.pop(function, None)
        else:
            self._ready[function] = due
        return due

    async def _want(self, function: str, frees: dict[str, int]) -> Want | None:
        """What ``function`` may lease now: its free slots (held tasks start in them first)
        and room to hold some ahead; ``frees`` learns the free slots."""
        if function in self.paused:
            return None
        free = await self._free_slots(function)
        if free > 0 and function in self.lifecycle.ahead:
            free -= self.lifecycle.start_held(function, free)
        free = max(free, 0)
        ahead = self.lifecycle.ahead_room(function)
        if free == 0 and ahead == 0:
            return None
        frees[function] = free
        return Want(function, tenant_of(function), min(free + ahead, LEASE_BATCH),
                    await self._cost_mb(function))

    async def _cost_mb(self, function: str) -> float:
        """The memory one running task of ``function`` holds (0 if it is gone): its share of
        an instance, which runs ``concurrency`` tasks and holds those sent ahead of them."""
        try:
            spec = (await self.registry.resolve(function, None)).spec
        except errors.NotFound:
            return 0.0
        return spec.memory_mb / (spec.concurrency + self.lifecycle.pipeline(function))

    def weight(self, tenant: str) -> float:
        return self.admission.tenancy.weight(tenant)

    def capacity_mb(self) -> float:
        return float(sum(n.memory_mb for n in self.scheduler.instances.resources.nodes.values()))

    async def _lease(self, function: str, limit: int, now: float) -> list[TaskRow]:
        try:
            row = await self.registry.resolve(function, None)
        except errors.NotFound:
            row = None
        timeout = row.spec.timeout_s if row else 900.0
        lease_s = timeout + self.scheduler.acquire_timeout_s + LEASE_MARGIN_S
        return await self.queue.lease(function, limit, now, lease_s, self.owner)

    async def _free_slots(self, function: str) -> int:
        if function in self.paused:
            return 0
        try:
            row = await self.registry.resolve(function, None)
        except errors.NotFound:
            return LEASE_BATCH  # lease them so that they fail visibly
        held, starting, sync_waiting = self.scheduler.slots_in_use(function)
        if sync_waiting:
            return 0  # sync callers come first
        total = row.spec.max_instances * (row.spec.concurrency
                                          + self.lifecycle.pipeline(function))
        policy = await self.policies.of_function(function)
        limit = policy.async_concurrency or total
        acquiring = self.lifecycle.acquiring[function]
        in_use = held + starting + acquiring
        return int(min(total - in_use, limit - self.lifecycle.running_by_function[function],
                       self.admission.free(function) - acquiring))

    def stats(self, function: str) -> dict[str, Any]:
        return {"running": self.lifecycle.running_by_function[function],
                "ready": function in self._ready}

    async def backlog(self, function: str) -> int:
        """Runnable async tasks of a function (the autoscaler's queue depth): queued ones, and
        retries once the earliest is due (approximate: counts are per status)."""
        if function not in self._ready or function in self.paused:
            return 0
        counts = await self.queue.counts(function)
        queued, retrying = counts.get("queued", 0), counts.get("retry_wait", 0)
        if retrying and not queued:
            due = await self.queue.next_run_at(function)
            return retrying if due is not None and due <= self.clock.now() else 0
        return queued

    # -- housekeeping -----------------------------------------------------------------------
    def _check_ready(self, runnable: dict[str, float]) -> None:
        """A safety net: a function with runnable tasks that the dispatcher does not know of
        (it would wait for the next enqueue) is put back, loudly."""
        missing = [f for f in runnable if f not in self._ready]
        for function in missing:
            log.warning("tasks of %s were runnable but not scheduled; dispatching them", function)
            self.notify(function, runnable[function])
    async def _sweep_loop(self) -> None:
        last_purge = last_check = 0.0
        while True:
            await self.clock.sleep(self.sweep_interval_s)
            try:
                now = self.clock.now()
                if not self.cluster.shared and now < self._sweep_due:
                    continue  # nothing can be due (idle: no write every second)
                self.sweeps += 1
                if await self.queue.recover(now, self.owner, self.cluster.live_since(now)):
                    self._ready.update(await self.queue.runnable_functions(now))
                    self._wake.set()
                elif now - last_check > CHECK_READY_S:
                    last_check = now
                    self._check_ready(await self.queue.runnable_functions(now))
                if await self.queue.expire(now):
                    self.lifecycle.wake_all_waiters()
                if now - last_purge > PURGE_EVERY_S:
                    last_purge = now
                    await self.queue.purge(now - self.retention_s)
                if not self.cluster.shared:
                    due = min(await self.queue.next_due() or math.inf, now + SWEEP_AT_LEAST_S)
                    # a notify during this sweep set a due time of its own: keep the earlier
                    noticed = self._sweep_due if self._sweep_due > now else math.inf
                    self._sweep_due = min(due, noticed)
            except Exception:
                log.exception("task sweep failed")
