"""The Scheduler: hands out slots on instances to invocations, and queues the callers that
must wait.

``acquire`` takes a free slot on a warm instance of the wanted version (most recently used
first, so surplus instances go idle and expire), else starts one if the function is under
``max_instances`` and a node has room (evicting idle instances that block it), else waits in a
FIFO queue for at most ``acquire_timeout_s`` and then raises
:class:`~faasbox.errors.Throttled`. A released slot is handed straight to the first waiter that
can use it, without a wakeup storm. Concurrent calls that find no warm instance start their
cold starts in parallel. Each release is announced as a
:class:`~faasbox.events.SlotReleased` event (the task dispatcher listens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faasbox import errors
from faasbox.clock import Clock
from faasbox.events import Events, SlotReleased
from faasbox.node import Instance
from faasbox.resources import Node
from faasbox.scheduler.instances import InstancePools, Pool, Waiter
from faasbox.store import VersionRow
from faasbox.tenancy.names import display, tenant_of

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, pools: InstancePools, events: Events, clock: Clock,
                 acquire_timeout_s: float = 10.0) -> None:
        self.instances = pools
        self.events = events
        self.clock = clock
        self.acquire_timeout_s = acquire_timeout_s

    # -- acquire / release ------------------------------------------------------------------
    async def acquire(self, row: VersionRow, interruptible: bool = False,
                      pipeline: int = 0) -> tuple[Instance, bool]:
        """A slot on an instance of ``row``: ``(instance, cold)``. Release it with release().
        A caller that is not ``interruptible`` may preempt interruptible tasks for room.
        ``pipeline`` > 0: with no free slot, a place behind that many running calls on a busy
        instance will do (the call is sent ahead, see :class:`~faasbox.node.Instance`)."""
        pool = self.instances.pool(row.function)
        if not pool.planner.configured:
            pool.planner.configure(row.spec)
        meter(pool, +1, self.clock.monotonic())
        try:
            inst, cold = await self._acquire(pool, row, not interruptible, pipeline)
        except BaseException:
            meter(pool, -1, self.clock.monotonic())
            raise
        pool.idle.pop(inst.id, None)
        pool.used_at = self.clock.monotonic()
        pool.planner.arrival(self.clock.now(), cold)
        return inst, cold

    async def _acquire(self, pool: Pool, row: VersionRow, preempt: bool,
                       pipeline: int = 0) -> tuple[Instance, bool]:
        inst = self._warm(pool, row)
        if inst is None and pipeline > 0:
            inst = self._behind(pool, row, pipeline)
        if inst is not None:
            return inst, False
        if not pool.waiters:
            node = self.instances.make_room(pool, row, preempt)
            if node is not None:
                inst = await self._cold(pool, row, node)
                self._start_ahead(pool, row)
                return inst, True
            if row.spec.service_group is not None and self.instances.group_of(row) is None:
                raise errors.Unavailable(f"service group {row.spec.service_group!r} of"
                                         f" {display(row.function)!r} does not exist")
            if not pool.size() and self.instances.over_tenant_memory(row):
                raise errors.OverLimit(
                    "tenant_memory_exceeded", f"the tenant's instances hold all of its"
                    f" max_memory_mb ({self.instances.tenant_memory_mb(tenant_of(row.function))}"
                    " MB) and none is idle", retry_after=1.0)
        fut: asyncio.Future[tuple[Instance, bool]] = asyncio.get_running_loop().create_future()
        waiter = Waiter(row, fut, preempt)
        pool.waiters.append(waiter)
        self.pump(pool)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that comes
            # as the slot is granted, and the cancelled caller would carry on with the slot
            async with asyncio.timeout(self.acquire_timeout_s):
                return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                pool.waiters.remove(waiter)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.give_back(fut.result()[0])  # granted as the caller went away
            fut.cancel()  # a start under way for it keeps its instance (``_cold_for``)
            raise
        except TimeoutError:
            with contextlib.suppress(ValueError):
                pool.waiters.remove(waiter)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # granted just as the wait ended
            fut.cancel()
            raise errors.Throttled(
                f"function {display(row.function)!r} is at capacity ({row.spec.max_instances}"
                f" instances busy) and no instance freed up within {self.acquire_timeout_s:g} s",
                retry_after=1.0,
            ) from None

    @staticmethod
    def _warm(pool: Pool, row: VersionRow) -> Instance | None:
        best: Instance | None = None
        for inst in pool.instances:
            if inst.version == row.version and inst.free_slots > 0 and (
                best is None or inst.last_used > best.last_used
            ):
                best = inst
        if best is not None:
            best.leases += 1
        return best

    @staticmethod
    def _behind(pool: Pool, row: VersionRow, pipeline: int) -> Instance | None:
        """The instance of ``row`` with the fewest calls that has room for one sent ahead."""
        best: Instance | None = None
        for inst in pool.instances:
            if inst.version == row.version and inst.queue_room(pipeline) > 0 and (
                best is None or inst.leases < best.leases
            ):
                best = inst
        if best is not None:
            best.leases += 1
        return best

    async def _cold(self, pool: Pool, row: VersionRow, node: Node) -> Instance:
        try:
            return await self.instances.start(pool, row, node)
        except BaseException:
            self.pump(pool)
            raise

    def release(self, inst: Instance) -> None:
        """The invocation holding a slot of ``inst`` (from acquire) ended."""
        pool = self.instances.pools.get(inst.function)
        if pool is None:  # dropped meanwhile: the instance was retired with its pool
            inst.leases = max(0, inst.leases - 1)
            return
        meter(pool, -1, self.clock.monotonic())
        pool.completions += 1
        window = pool.planner.released(self.clock.now())
        self.give_back(inst)  # gives the slot to a waiter, if any: no policy call
        if inst.leases == 0 and inst.state == "idle" and not inst.retired:
            pool.idle[inst.id] = window(inst.spec.idle_ttl_s)

    def give_back(self, inst: Instance) -> None:
        """Return a slot of ``inst`` to its pool (to a waiter, if any)."""
        inst.leases = max(0, inst.leases - 1)
        pool = self.instances.pools.get(inst.function)
        if pool is None:
            return
        if inst.state not in ("idle", "busy"):
            self.instances.retire(pool, inst)
        self.pump(pool)
        if inst.leases == 0 and not pool.waiters:
            # an idle instance may be evicted for another function's waiting caller
            for other in list(self.instances.pools.values()):
                if other.waiters and other is not pool:
                    self.pump(other)
        self.events.emit(SlotReleased(inst.function))

    def slots_in_use(self, function: str) -> tuple[int, int, bool]:
        """``(slots held, starts reserved, sync callers waiting)`` for a function."""
        pool = self.instances.pools.get(function)
        if pool is None:
            return 0, 0, False
        return sum(i.leases for i in pool.instances), pool.starting, bool(pool.waiters)

    def pump(self, pool: Pool) -> None:
        """Give freed capacity to waiters, first come first served."""
        while pool.waiters:
            waiter = pool.waiters[0]
            if waiter.future.done():
                pool.waiters.popleft()
                continue
            inst = self._warm(pool, waiter.version)
            if inst is not None:
                pool.waiters.popleft()
                waiter.future.set_result((inst, False))
                continue
            node = self.instances.make_room(pool, waiter.version, waiter.preempt)
            if node is None:
                return
            pool.waiters.popleft()
            pool.starting += 1  # counted now: the task that starts it runs later
            self.instances.spawn(self._cold_for(pool, waiter, node))

    def _start_ahead(self, pool: Pool, row: VersionRow) -> None:
        """Start the instances the keep-alive policy wants beside a cold start that succeeded
        (the rest of a rising burst: :meth:`FunctionPlanner.ahead`), from free room only; a
        function whose instances fail to start does not start more of them."""
        live = len(pool.latest(row.version)) + pool.starting
        try:
            keeps = pool.planner.ahead(self.clock.now(), pool.demand, live)
        except Exception:  # the call has its instance: a policy's fault must not take it
            log.exception("the keep-alive policy failed to plan starts ahead for %s",
                          row.function)
            return
        for keep_s in keeps:
            self.instances.spawn(self._ahead(pool, row, keep_s))

    async def _ahead(self, pool: Pool, row: VersionRow, keep_s: float) -> None:
        if not self.instances.serves(pool):
            return
        node = self.instances.reserve_free(pool, row)
        if node is not None:
            pool.starting += 1
            await self.warm_up(pool, row, node, keep_s)

    async def warm_up(self, pool: Pool, row: VersionRow, node: Node,
                      keep_s: float) -> Instance | None:
        """Start an instance ahead of demand on ``node`` (reserved, counted in
        ``pool.starting``) and make it idle, kept ``keep_s`` (at most ``idle_ttl_s``)."""
        pool.starting -= 1
        try:
            inst = await self.instances.start(pool, row, node, ahead=True)
        except errors.FaasboxError as exc:
            log.warning("cannot start an instance of %s ahead of demand: %s", row.function, exc)
            self.pump(pool)
            return None
        pool.idle[inst.id] = pool.planner.started_window(self.clock.now(), keep_s,
                                                         ttl=inst.spec.idle_ttl_s)
        self.give_back(inst)
        return inst

    async def _cold_for(self, pool: Pool, waiter: Waiter, node: Node) -> None:
        pool.starting -= 1
        try:
            inst = await self._cold(pool, waiter.version, node)
        except Exception as exc:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
                waiter.future.exception()
            return
        self._start_ahead(pool, waiter.version)
        if waiter.future.done():  # the caller gave up meanwhile: keep the instance
            pool.idle[inst.id] = pool.planner.started_window(
                self.clock.now(), ttl=inst.spec.idle_ttl_s)
            self.give_back(inst)
        else:
            waiter.future.set_result((inst, True))


def meter(pool: Pool, delta: int, now: float) -> None:
    """Integrate the pool's demand (calls holding or waiting for a slot) up to ``now``
    (monotonic), then move it by ``delta``."""
    pool.demand_s += pool.demand * max(0.0, now - pool.mark)
    pool.mark = now
    pool.demand = max(0, pool.demand + delta)
