"""The Scheduler: picks an instance for every invocation, and scales each function's pool.

Per function there is a pool of instances (any of its versions). ``acquire`` takes a free slot
on a warm instance of the wanted version (most recently used first, so surplus instances go
idle and expire), else starts one if the function is under ``max_instances`` and a node has
room (evicting idle instances that block it), else waits in a FIFO queue for at most
``acquire_timeout_s`` and then raises :class:`~faasbox.errors.Throttled`. A released slot is
handed straight to the first waiter that can use it, without a wakeup storm. Concurrent calls
that find no warm instance start their cold starts in parallel.

The scaling loop ticks every ``reap_interval_s`` on the injected clock. Per function it feeds
a :class:`~faasbox.autoscaler.planner.FunctionPlanner` (the KPA autoscaler, the keep-alive
policy, min_instances, provisioned windows, known fires) with the demand since the last tick
(slots held plus callers waiting, time-averaged), the async backlog and the latency, and acts
on its plan: starts what is missing in parallel, stops idle instances whose window ran out,
pre-warms instances before predicted calls, and clears instances that died while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faasbox import errors
from faasbox.autoscaler import DEFAULT_POLICY, KeepAlivePolicy, ScalerConfig, make_policy
from faasbox.autoscaler.planner import FunctionPlanner, IdleWindow, Observation, Plan
from faasbox.clock import Clock, SystemClock
from faasbox.node import Instance, NodeService
from faasbox.registry import Registry
from faasbox.resources import Node, ResourceManager
from faasbox.store import VersionRow

log = logging.getLogger(__name__)


@dataclass
class Waiter:
    version: VersionRow
    future: asyncio.Future[tuple[Instance, bool]]


@dataclass
class Pool:
    function: str
    planner: FunctionPlanner
    instances: list[Instance] = field(default_factory=list)
    starting: int = 0
    waiters: deque[Waiter] = field(default_factory=deque)
    idle: dict[str, IdleWindow] = field(default_factory=dict)  # instance id -> its window
    # demand meter: calls holding or waiting for a slot, integrated over monotonic time
    demand: int = 0
    demand_s: float = 0.0
    completions: int = 0
    mark: float = 0.0
    since: float = 0.0

    def size(self) -> int:
        return len(self.instances) + self.starting


class Scheduler:
    def __init__(
        self, registry: Registry, node: NodeService, resources: ResourceManager,
        acquire_timeout_s: float = 10.0, reap_interval_s: float = 1.0,
        clock: Clock | None = None, policy: KeepAlivePolicy | None = None,
        scaler: ScalerConfig | None = None, lead_margin_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.node = node
        self.resources = resources
        self.acquire_timeout_s = acquire_timeout_s
        self.reap_interval_s = reap_interval_s
        self.clock: Clock = clock or SystemClock()
        self.policy: KeepAlivePolicy = policy or make_policy(DEFAULT_POLICY)
        self.scaler = scaler or ScalerConfig()
        self.lead_margin_s = lead_margin_s
        self.pools: dict[str, Pool] = {}
        self._placement: dict[str, Node] = {}  # instance id -> node holding its memory
        self._lifecycle: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.cold_starts = 0
        # called with a function name whenever a slot of it is released (the dispatcher)
        self.on_release: Callable[[str], None] | None = None
        # runnable async tasks of a function (the platform wires the queue in)
        self.backlog: Callable[[str], Awaitable[int]] | None = None

    def pool(self, function: str) -> Pool:
        pool = self.pools.get(function)
        if pool is None:
            planner = FunctionPlanner(function, self.policy, self.scaler, self.lead_margin_s)
            mark = self.clock.monotonic()
            pool = self.pools[function] = Pool(function, planner, mark=mark, since=mark)
        return pool

    # -- acquire / release ------------------------------------------------------------------
    async def acquire(self, row: VersionRow) -> tuple[Instance, bool]:
        """A slot on an instance of ``row``: ``(instance, cold)``. Release it with release()."""
        pool = self.pool(row.function)
        if not pool.planner.configured:
            pool.planner.configure(row.spec)
        self._meter(pool, +1)
        try:
            inst, cold = await self._acquire(pool, row)
        except BaseException:
            self._meter(pool, -1)
            raise
        pool.idle.pop(inst.id, None)
        pool.planner.arrival(self.clock.now(), cold)
        return inst, cold

    async def _acquire(self, pool: Pool, row: VersionRow) -> tuple[Instance, bool]:
        inst = self._warm(pool, row)
        if inst is not None:
            return inst, False
        if not pool.waiters:
            node = self._make_room(pool, row)
            if node is not None:
                return await self._cold(pool, row, node), True
        fut: asyncio.Future[tuple[Instance, bool]] = asyncio.get_running_loop().create_future()
        waiter = Waiter(row, fut)
        pool.waiters.append(waiter)
        self._pump(pool)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that comes
            # as the slot is granted, and the cancelled caller would carry on with the slot
            async with asyncio.timeout(self.acquire_timeout_s):
                return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                pool.waiters.remove(waiter)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give_back(fut.result()[0])  # granted as the caller went away
            fut.cancel()  # a start under way for it keeps its instance (``_cold_for``)
            raise
        except TimeoutError:
            with contextlib.suppress(ValueError):
                pool.waiters.remove(waiter)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # granted just as the wait ended
            fut.cancel()
            raise errors.Throttled(
                f"function {row.function!r} is at capacity ({row.spec['max_instances']}"
                f" instances busy) and no instance freed up within {self.acquire_timeout_s:g} s",
                retry_after=1.0,
            ) from None

    def _meter(self, pool: Pool, delta: int) -> None:
        """Integrate the demand (calls holding or waiting for a slot) up to now, then move it."""
        now = self.clock.monotonic()
        pool.demand_s += pool.demand * max(0.0, now - pool.mark)
        pool.mark = now
        pool.demand = max(0, pool.demand + delta)

    def _warm(self, pool: Pool, row: VersionRow) -> Instance | None:
        best: Instance | None = None
        for inst in pool.instances:
            if inst.version == row.version and inst.free_slots > 0 and (
                best is None or inst.last_used > best.last_used
            ):
                best = inst
        if best is not None:
            best.leases += 1
        return best

    def _make_room(self, pool: Pool, row: VersionRow) -> Node | None:
        """Reserve a node for a cold start now, evicting idle instances that are in the way;
        None when the function is at max_instances or no node can make room."""
        if pool.size() >= row.spec["max_instances"]:
            victim = self._idle_victim(pool.instances, exclude_version=row.version)
            if victim is None:
                return None
            self._retire(pool, victim)
        while True:
            node = self.resources.reserve(row.spec["memory_mb"])
            if node is not None:
                return node
            everyone = [i for p in self.pools.values() for i in p.instances]
            victim = self._idle_victim(everyone, exclude_version=None)
            if victim is None:
                return None
            self._retire(self.pool(victim.function), victim)

    @staticmethod
    def _idle_victim(candidates: list[Instance], exclude_version: int | None) -> Instance | None:
        idle = [i for i in candidates
                if i.state == "idle" and i.leases == 0 and i.version != exclude_version]
        return min(idle, key=lambda i: i.last_used, default=None)

    async def _cold(self, pool: Pool, row: VersionRow, node: Node) -> Instance:
        """Start an instance on ``node`` (already reserved); it is in the pool, ``starting``,
        from the first moment, and comes back holding one slot for the caller."""
        if self._closing or self.pools.get(pool.function) is not pool:
            self.resources.release(node, row.spec["memory_mb"])
            raise errors.Unavailable(f"function {row.function!r} is no longer served here")
        inst = self.node.create(row.function, row.version, row.spec)
        inst.leases = 1
        pool.instances.append(inst)
        self._placement[inst.id] = node
        began = self.clock.monotonic()
        try:
            await self.node.boot(inst, self.registry.paths(row))
        except BaseException:
            inst.retired = True  # boot stopped it already
            if inst in pool.instances:
                pool.instances.remove(inst)
            if self._placement.pop(inst.id, None) is not None:
                self.resources.release(node, row.spec["memory_mb"])
            self._pump(pool)
            raise
        if self._closing or self.pools.get(pool.function) is not pool:
            # the pool was dropped (closing, function deleted) while this one started: drop
            # did not see it if it was not in the pool yet; nobody else would stop it
            self._retire(pool, inst)
            raise errors.Unavailable(f"function {row.function!r} is no longer served here")
        self.cold_starts += 1
        pool.planner.observe_cold_start(self.clock.monotonic() - began)
        return inst

    def release(self, inst: Instance) -> None:
        """The invocation holding a slot of ``inst`` (from acquire) ended."""
        pool = self.pool(inst.function)
        self._meter(pool, -1)
        pool.completions += 1
        window = pool.planner.finished(self.clock.now(), inst.spec["idle_ttl_s"])
        self._give_back(inst)
        if inst.leases == 0 and inst.state == "idle" and not inst.retired:
            pool.idle[inst.id] = window

    def _give_back(self, inst: Instance) -> None:
        inst.leases = max(0, inst.leases - 1)
        pool = self.pool(inst.function)
        if inst.state not in ("idle", "busy"):
            self._retire(pool, inst)
        self._pump(pool)
        if self.on_release is not None:
            self.on_release(inst.function)

    def slots_in_use(self, function: str) -> tuple[int, int, bool]:
        """``(slots held, starts reserved, sync callers waiting)`` for a function."""
        pool = self.pools.get(function)
        if pool is None:
            return 0, 0, False
        return sum(i.leases for i in pool.instances), pool.starting, bool(pool.waiters)

    def _pump(self, pool: Pool) -> None:
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
            node = self._make_room(pool, waiter.version)
            if node is None:
                return
            pool.waiters.popleft()
            pool.starting += 1  # counted now: the task that starts it runs later
            self._spawn(self._cold_for(pool, waiter, node))

    async def _cold_for(self, pool: Pool, waiter: Waiter, node: Node) -> None:
        pool.starting -= 1
        try:
            inst = await self._cold(pool, waiter.version, node)
        except Exception as exc:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
                waiter.future.exception()
            self._pump(pool)
            return
        if waiter.future.done():  # the caller gave up meanwhile: keep the instance
            pool.idle[inst.id] = pool.planner.started_window(
                self.clock.now(), ttl=inst.spec["idle_ttl_s"])
            self._give_back(inst)
        else:
            waiter.future.set_result((inst, True))

    # -- stopping ---------------------------------------------------------------------------
    def _retire(self, pool: Pool, inst: Instance) -> None:
        """Take an instance out of service now and stop it in the background."""
        if inst in pool.instances:
            pool.instances.remove(inst)
        pool.idle.pop(inst.id, None)
        node = self._placement.pop(inst.id, None)
        if node is not None:
            self.resources.release(node, inst.memory_mb)
        if not inst.retired:
            inst.retired = True
            if inst.state != "stopped":
                inst.state = "stopping"
            self._spawn(self.node.stop(inst))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drop(self, function: str) -> None:
        """Stop every instance of a deleted function; its waiters fail."""
        pool = self.pools.pop(function, None)
        if pool is None:
            return
        gone = errors.FunctionNotFound(f"function {function!r} was deleted")
        for waiter in pool.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(gone)
                waiter.future.exception()
        for inst in list(pool.instances):
            self._retire(pool, inst)

    # -- known future load --------------------------------------------------------------------
    def set_known_fires(self, function: str, fire_times: Sequence[float],
                        instances: int = 1) -> None:
        """Have ``instances`` warm shortly before each of ``fire_times`` (epoch seconds of the
        platform clock, e.g. a cron trigger's next fires); they are let go once the fire's calls
        are done. Replaces the function's earlier known fires; ``[]`` clears them."""
        self.pool(function).planner.set_known_fires(fire_times, instances)

    # -- the scaling loop ---------------------------------------------------------------------
    def start(self) -> None:
        self._lifecycle = asyncio.create_task(self._lifecycle_loop(), name="scaling")

    async def close(self) -> None:
        """Stop every instance and wait until they are gone (starts under way included)."""
        self._closing = True
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle
        for function in list(self.pools):
            await self.drop(function)
        while self._background:  # stops, and starts that end by stopping what they started
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _lifecycle_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scaling tick failed")
            await self.clock.sleep(self.reap_interval_s)

    async def tick(self) -> None:
        now = self.clock.now()
        for pool in list(self.pools.values()):
            for inst in list(pool.instances):
                if inst.state == "stopped":
                    self._retire(pool, inst)
        for name in await self._function_names():
            try:
                latest = await self.registry.resolve(name, None)
            except errors.NotFound:
                continue
            pool = self.pool(name)
            backlog = await self.backlog(name) if self.backlog is not None else 0
            plan = self._plan(pool, latest, backlog, now)
            self._scale_in(pool, latest, plan, now)
            self._prewarm_due(pool, latest, plan, now)
            self._scale_out(pool, latest, plan)
            self._pump(pool)

    async def _function_names(self) -> list[str]:
        names = set(self.pools)
        names.update(f.name for f in await self.registry.functions())
        return sorted(names)

    def _latest(self, pool: Pool, latest: VersionRow) -> list[Instance]:
        return [i for i in pool.instances if i.version == latest.version and not i.retired]

    def _plan(self, pool: Pool, latest: VersionRow, backlog: int, now: float) -> Plan:
        self._meter(pool, 0)
        span = pool.mark - pool.since
        demand = pool.demand_s / span if span > 0 else float(pool.demand)
        latency = pool.demand_s / pool.completions * 1000 if pool.completions else None
        pool.demand_s, pool.completions, pool.since = 0.0, 0, pool.mark
        mine = self._latest(pool, latest)
        ready = sum(1 for i in mine if i.state in ("idle", "busy"))
        busy = sum(i.leases for i in pool.instances if i.state == "busy")
        planner = pool.planner
        planner.configure(latest.spec)
        obs = Observation(demand=max(demand, float(pool.demand)), busy=busy,
                          queue_depth=backlog, ready=ready, live=len(mine) + pool.starting,
                          latency_ms=latency)
        plan = planner.plan(now, obs)
        if plan.release_idle:
            for window in pool.idle.values():
                window.keep_until = min(window.keep_until, now)
                window.prewarm_at = None
        return plan

    def _scale_in(self, pool: Pool, latest: VersionRow, plan: Plan, now: float) -> None:
        """Stop idle instances whose window ran out, least recently used first, keeping
        ``hold`` instances of the latest version (``floor`` against ``idle_ttl_s``)."""
        planner = pool.planner
        live = len(self._latest(pool, latest)) + pool.starting
        idle = [i for i in pool.instances if i.state == "idle" and i.leases == 0]
        for inst in sorted(idle, key=lambda i: i.last_used):
            window = pool.idle.get(inst.id)
            if window is None:
                window = pool.idle[inst.id] = planner.started_window(
                    now, ttl=inst.spec["idle_ttl_s"])
            why = planner.expired(window, now)
            if why is None:
                continue
            if inst.version == latest.version:
                if live <= (plan.floor if why == "hard" else plan.hold):
                    continue
                live -= 1
            log.info("stopping idle instance %s after %.1f s (%s)", inst.id,
                     now - window.since, "idle_ttl_s" if why == "hard" else "keep-alive")
            self._retire(pool, inst)
            planner.retired(window, now, why)

    def _prewarm_due(self, pool: Pool, latest: VersionRow, plan: Plan, now: float) -> None:
        """Load an instance for each predicted call that is due: an idle instance kept only by
        the autoscaler is reused for it, else one is started."""
        planner = pool.planner
        spare = [i for i in self._latest(pool, latest)
                 if i.state == "idle" and i.leases == 0
                 and planner.expired(pool.idle.get(i.id) or planner.started_window(now), now)]
        for keep_s in plan.prewarms:
            if spare:
                pool.idle[spare.pop().id] = planner.started_window(now, keep_s)
            elif not self._start(pool, latest, keep_s, evict=False):
                return

    def _scale_out(self, pool: Pool, latest: VersionRow, plan: Plan) -> None:
        """Start what the plan misses, all at once (each start is its own task): floors may
        evict idle instances of other functions, the autoscaler's extra only takes free room."""
        live = len(self._latest(pool, latest)) + pool.starting
        for _ in range(plan.floor - live):
            if not self._start(pool, latest, 0.0, evict=True):
                return
            live += 1
        for _ in range(plan.target - live):
            if not self._start(pool, latest, 0.0, evict=False):
                return

    def _start(self, pool: Pool, row: VersionRow, keep_s: float, evict: bool) -> bool:
        if evict:
            node = self._make_room(pool, row)
        elif pool.size() < row.spec["max_instances"]:
            node = self.resources.reserve(row.spec["memory_mb"])
        else:
            node = None
        if node is None:
            return False
        pool.starting += 1
        self._spawn(self._warm_up(pool, row, node, keep_s))
        return True

    async def _warm_up(self, pool: Pool, row: VersionRow, node: Node, keep_s: float) -> None:
        pool.starting -= 1
        try:
            inst = await self._cold(pool, row, node)
        except errors.FaasboxError as exc:
            log.warning("cannot start an instance of %s ahead of demand: %s", row.function, exc)
            return
        pool.idle[inst.id] = pool.planner.started_window(self.clock.now(), keep_s)
        self._give_back(inst)

    # -- views --------------------------------------------------------------------------------
    def describe(self, function: str) -> list[dict[str, Any]]:
        pool = self.pools.get(function)
        return [] if pool is None else [i.describe() for i in pool.instances]
