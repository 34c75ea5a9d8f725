"""The instance lifecycle: per function a pool of instances, started on a reserved node,
retired (stopped in the background) when idle too long, evicted or dropped.

Nothing here hands out slots or decides how many instances a function needs: the
:class:`~faasbox.scheduler.slots.Scheduler` and the
:class:`~faasbox.scheduler.scaling.ScalingLoop` do, on top of these pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faasbox import errors
from faasbox.autoscaler import KeepAlivePolicy, ScalerConfig
from faasbox.autoscaler.planner import FunctionPlanner, IdleWindow
from faasbox.clock import Clock
from faasbox.events import Events, InstanceRetired
from faasbox.node import Instance, NodeService
from faasbox.registry import Registry
from faasbox.resources import Node, ResourceManager
from faasbox.store import VersionRow
from faasbox.tenancy.names import display, tenant_of

log = logging.getLogger(__name__)


@dataclass
class Waiter:
    version: VersionRow
    future: asyncio.Future[tuple[Instance, bool]]
    preempt: bool = False  # may stop interruptible tasks for room


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

    def latest(self, version: int) -> list[Instance]:
        return [i for i in self.instances if i.version == version and not i.retired]


class InstancePools:
    def __init__(
        self, registry: Registry, node: NodeService, resources: ResourceManager, clock: Clock,
        policy: KeepAlivePolicy, scaler: ScalerConfig, lead_margin_s: float,
        tenant_memory_mb: Callable[[str], int] = lambda tenant: 0,
        events: Events | None = None,
    ) -> None:
        self.registry = registry
        self.node = node
        self.resources = resources
        self.clock = clock
        self.policy = policy
        self.scaler = scaler
        self.lead_margin_s = lead_margin_s
        self.tenant_memory_mb = tenant_memory_mb  # a tenant's memory limit (0: none)
        self.events = events or Events()
        self.memory: Counter[str] = Counter()  # tenant -> memory_mb of its instances
        self.pools: dict[str, Pool] = {}
        self._placement: dict[str, Node] = {}  # instance id -> node holding its memory
        self._background: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.cold_starts = 0
        # instance id -> calls of interruptible tasks on it (those may be preempted)
        self.interruptible: Counter[str] = Counter()
        self.preemptions = 0

    def pool(self, function: str) -> Pool:
        """The function's pool, made on first use (only for a function that exists)."""
        pool = self.pools.get(function)
        if pool is None:
            planner = FunctionPlanner(function, self.policy, self.scaler, self.lead_margin_s)
            mark = self.clock.monotonic()
            pool = self.pools[function] = Pool(function, planner, mark=mark, since=mark)
        return pool

    def serves(self, pool: Pool) -> bool:
        """Whether ``pool`` is still in service (not dropped, not closing)."""
        return not self.closing and self.pools.get(pool.function) is pool

    # -- room -------------------------------------------------------------------------------
    def not_interruptible(self, inst: Instance) -> None:
        """An interruptible call on ``inst`` ended."""
        self.interruptible[inst.id] -= 1
        if self.interruptible[inst.id] <= 0:
            del self.interruptible[inst.id]

    def _preemptible(self, candidates: list[Instance]) -> Instance | None:
        """A busy instance all of whose calls are interruptible tasks (the one that started
        last: the least work is lost)."""
        found = [i for i in candidates if i.state == "busy" and not i.retired
                 and 0 < i.leases <= self.interruptible.get(i.id, 0)]
        return max(found, key=lambda i: i.last_used, default=None)

    def make_room(self, pool: Pool, row: VersionRow, preempt: bool = False) -> Node | None:
        """Reserve a node for a cold start now, evicting idle instances that are in the way
        (and with ``preempt``, when no idle one is left, stopping an instance that runs only
        interruptible tasks: they are retried); None when the function is at max_instances
        or no node can make room."""
        if pool.size() >= row.spec.max_instances:
            victim = self._idle_victim(pool.instances, exclude_version=row.version)
            if victim is None:
                return None
            self.retire(pool, victim)
        if not self._tenant_room(row, evict=True):
            return None
        while True:
            node = self.resources.reserve(row.spec.memory_mb)
            if node is not None:
                return node
            everyone = [i for p in self.pools.values() for i in p.instances]
            victim = self._idle_victim(everyone, exclude_version=None)
            if victim is None and preempt:
                victim = self._preemptible(everyone)
                if victim is not None:
                    log.info("preempting instance %s (interruptible tasks) for %s", victim.id,
                             row.function)
                    self.preemptions += 1
                    self.retire(self.pools[victim.function], victim, errors.Preempted(
                        "the instance was stopped to make room for other work (the task is"
                        " interruptible); it is retried"))
                    continue
            if victim is None:
                return None
            self.retire(self.pools[victim.function], victim)

    def reserve_free(self, pool: Pool, row: VersionRow) -> Node | None:
        """Reserve a node only from free room (no eviction) and under max_instances."""
        if pool.size() >= row.spec.max_instances or not self._tenant_room(row, evict=False):
            return None
        return self.resources.reserve(row.spec.memory_mb)

    def _tenant_room(self, row: VersionRow, evict: bool) -> bool:
        """Whether the function's tenant stays within its memory limit with one more instance
        (evicting the tenant's own idle instances when ``evict``)."""
        tenant = tenant_of(row.function)
        limit = self.tenant_memory_mb(tenant)
        while limit and self.memory[tenant] + row.spec.memory_mb > limit:
            if not evict:
                return False
            mine = [i for p in self.pools.values() if tenant_of(p.function) == tenant
                    for i in p.instances]
            victim = self._idle_victim(mine, exclude_version=None)
            if victim is None:
                return False
            self.retire(self.pools[victim.function], victim)
        return True

    def over_tenant_memory(self, row: VersionRow) -> bool:
        """The tenant's instances hold its whole memory limit (no start can fit)."""
        tenant = tenant_of(row.function)
        limit = self.tenant_memory_mb(tenant)
        return bool(limit) and self.memory[tenant] + row.spec.memory_mb > limit

    @staticmethod
    def _idle_victim(candidates: list[Instance], exclude_version: int | None) -> Instance | None:
        idle = [i for i in candidates
                if i.state == "idle" and i.leases == 0 and i.version != exclude_version]
        return min(idle, key=lambda i: i.last_used, default=None)

    # -- starting and stopping --------------------------------------------------------------
    async def start(self, pool: Pool, row: VersionRow, node: Node) -> Instance:
        """Start an instance on ``node`` (already reserved); it is in the pool, ``starting``,
        from the first moment, and comes back holding one slot for the caller."""
        if not self.serves(pool):
            self.resources.release(node, row.spec.memory_mb)
            raise errors.Unavailable(f"function {display(row.function)!r} is no longer served here")
        inst = self.node.create(row.function, row.version, row.spec)
        inst.leases = 1
        pool.instances.append(inst)
        self._placement[inst.id] = node
        self.memory[tenant_of(inst.function)] += inst.memory_mb
        began = self.clock.monotonic()
        try:
            await self.node.boot(inst, self.registry.paths(row))
        except BaseException:
            inst.retired = True  # boot stopped it already
            if inst in pool.instances:
                pool.instances.remove(inst)
            if self._placement.pop(inst.id, None) is not None:
                self.resources.release(node, row.spec.memory_mb)
                self.memory[tenant_of(inst.function)] -= inst.memory_mb
                self.events.emit(InstanceRetired(inst))
            raise
        if not self.serves(pool):
            # the pool was dropped (closing, function deleted) while this one started: drop
            # did not see it if it was not in the pool yet; nobody else would stop it
            self.retire(pool, inst)
            raise errors.Unavailable(f"function {display(row.function)!r} is no longer served here")
        self.cold_starts += 1
        pool.planner.observe_cold_start(self.clock.monotonic() - began)
        return inst

    def retire(self, pool: Pool, inst: Instance,
               reason: errors.InvocationError | None = None) -> None:
        """Take an instance out of service now and stop it in the background (its calls in
        flight fail with ``reason``)."""
        if inst in pool.instances:
            pool.instances.remove(inst)
        pool.idle.pop(inst.id, None)
        node = self._placement.pop(inst.id, None)
        if node is not None:
            self.resources.release(node, inst.memory_mb)
            self.memory[tenant_of(inst.function)] -= inst.memory_mb
            self.events.emit(InstanceRetired(inst))  # before it is stopped: still measurable
        if not inst.retired:
            inst.retired = True
            if inst.state != "stopped":
                inst.state = "stopping"
            self.spawn(self.node.stop(inst, reason))

    def clear_dead(self, pool: Pool) -> None:
        """Retire the instances that died (while idle, or killed from outside)."""
        for inst in list(pool.instances):
            if inst.state == "stopped":
                self.retire(pool, inst)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def drop(self, function: str) -> None:
        """Stop every instance of a deleted function; its waiters fail."""
        pool = self.pools.pop(function, None)
        if pool is None:
            return
        gone = errors.FunctionNotFound(f"function {display(function)!r} was deleted")
        for waiter in pool.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(gone)
                waiter.future.exception()
        for inst in list(pool.instances):
            self.retire(pool, inst)

    async def close(self) -> None:
        """Stop every instance and wait until they are gone (starts under way included)."""
        self.closing = True
        for function in list(self.pools):
            self.drop(function)
        while self._background:  # stops, and starts that end by stopping what they started
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- views --------------------------------------------------------------------------------
    def describe(self, function: str) -> list[dict[str, Any]]:
        pool = self.pools.get(function)
        return [] if pool is None else [i.describe() for i in pool.instances]

    def states(self) -> list[tuple[str, str]]:
        """``(function, state)`` of every instance (for metrics)."""
        return [(p.function, i.state) for p in self.pools.values() for i in p.instances]
