"""The instance lifecycle: per function a pool of instances, started on a reserved node,
retired (stopped in the background) when idle too long, evicted or dropped.

Nothing here hands out slots or decides how many instances a function needs: the
:class:`~faasbox.scheduler.slots.Scheduler` and the
:class:`~faasbox.scheduler.scaling.ScalingLoop` do, on top of these pools.

Service groups: a group's memory is carved out of the node (:meth:`InstancePools.add_group`);
an instance of a function in a group reserves from the group's pool only, under the group's
``max_instances``, and evicts only the group's idle instances to make room; an instance outside
groups reserves from what the node has left and never evicts a group's. A group's instances
count against the group, not against the tenant's ``max_memory_mb``.
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
from faasbox.tenancy.groups import ServiceGroupSpec, group_key
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
    used_at: float = 0.0  # monotonic time of the last call that got a slot
    floor: int = 0  # warm instances the last plan asked for (eviction spares these)
    swapping: int = 0  # template children starting in place of fork-server instances

    def size(self) -> int:
        return len(self.instances) + self.starting

    def latest(self, version: int) -> list[Instance]:
        return [i for i in self.instances if i.version == version and not i.retired]


@dataclass
class GroupState:
    """A service group's capacity: its spec and the memory pool carved for it."""

    key: str  # "<tenant>/<group>"
    spec: ServiceGroupSpec
    room: Node
    floor: int = 0  # warm instances the last scaling tick planned for the group
    base_floor: int = 0  # of which min_instances and open schedule windows


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
        # tenant -> memory_mb of its instances outside service groups, and of the starts
        # reserved and not yet begun (a waiter's start runs in a task of its own, later)
        self.memory: Counter[str] = Counter()
        self.reserved: Counter[str] = Counter()
        self.pools: dict[str, Pool] = {}
        self.groups: dict[str, GroupState] = {}  # service groups by "<tenant>/<group>"
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

    def _preempt(self, victim: Instance, row: VersionRow) -> None:
        log.info("preempting instance %s (interruptible tasks) for %s", victim.id, row.function)
        self.preemptions += 1
        self.retire(self.pools[victim.function], victim, errors.Preempted(
            "the instance was stopped to make room for other work (the task is"
            " interruptible); it is retried"))

    def group_of(self, row: VersionRow) -> GroupState | None:
        """The service group ``row`` runs in (None: outside groups, or its group is gone)."""
        key = group_key(row.function, row.spec)
        return None if key is None else self.groups.get(key)

    def make_room(self, pool: Pool, row: VersionRow, preempt: bool = False) -> Node | None:
        """Reserve a node for a cold start now, evicting idle instances that are in the way
        (and with ``preempt``, when no idle one is left, stopping an instance that runs only
        interruptible tasks: they are retried); None when the function is at max_instances
        or no node can make room. A function in a service group makes room in its group only,
        one outside groups only outside them."""
        if pool.size() >= row.spec.max_instances:
            victim = self._idle_victim(pool.instances, exclude_version=row.version)
            if victim is None:
                return None
            self.retire(pool, victim)
        if row.spec.service_group is not None:
            return self._group_room(row, evict=True, preempt=preempt)
        if not self._tenant_room(row, evict=True):
            return None
        while True:
            node = self.resources.reserve(row.spec.memory_mb)
            if node is not None:
                return self._reserved(row, node)
            shared = self._shared()
            victim = self._idle_victim(shared, exclude_version=None)
            if victim is None and preempt:
                victim = self._preemptible(shared)
                if victim is not None:
                    self._preempt(victim, row)
                    continue
            if victim is None:
                return None
            self.retire(self.pools[victim.function], victim)

    def reserve_free(self, pool: Pool, row: VersionRow) -> Node | None:
        """Reserve a node only from free room (no eviction) and under max_instances."""
        if pool.size() >= row.spec.max_instances:
            return None
        if row.spec.service_group is not None:
            return self._group_room(row, evict=False)
        if not self._tenant_room(row, evict=False):
            return None
        node = self.resources.reserve(row.spec.memory_mb)
        return None if node is None else self._reserved(row, node)

    def _reserved(self, row: VersionRow, node: Node) -> Node:
        """``node`` was reserved for a start of ``row``: it counts against the tenant's memory
        from now (``start`` turns it into the instance's)."""
        if node.parent is None:
            self.reserved[tenant_of(row.function)] += row.spec.memory_mb
        return node

    def _group_room(self, row: VersionRow, evict: bool, preempt: bool = False) -> Node | None:
        """Reserve in the row's service group, under the group's max_instances (evicting the
        group's idle instances when ``evict``: those above their function's floor first; then
        with ``preempt``, one of the group's that runs only interruptible tasks)."""
        group = self.group_of(row)
        if group is None:  # callers hear it from the scheduler (Unavailable)
            log.debug("%s cannot start: its service group %r does not exist",
                      row.function, row.spec.service_group)
            return None
        room = group.room
        while True:
            if room.reservations < group.spec.max_instances:
                node = self.resources.reserve(row.spec.memory_mb, within=room)
                if node is not None:
                    return node
            if not evict:
                return None
            victim = self._group_victim(room, row)
            if victim is None and preempt:
                victim = self._preemptible(self._in(room))
                if victim is not None:
                    self._preempt(victim, row)
                    continue
            if victim is None:
                return None
            self.retire(self.pools[victim.function], victim)

    def _in(self, room: Node) -> list[Instance]:
        return [i for p in self.pools.values() for i in p.instances
                if self._placement.get(i.id) is room]

    def _shared(self) -> list[Instance]:
        """Instances outside service groups."""
        return [i for p in self.pools.values() for i in p.instances
                if (n := self._placement.get(i.id)) is not None and n.parent is None]

    def _group_victim(self, room: Node, row: VersionRow) -> Instance | None:
        """The idle instance of a group to stop for a start of ``row``: never one of the same
        version (it would be started again), one above its function's warm floor first, then
        the least recently used."""
        idle = [i for i in self._in(room) if i.state == "idle" and i.leases == 0
                and not (i.function == row.function and i.version == row.version)]

        def kept(inst: Instance) -> bool:
            pool = self.pools.get(inst.function)
            return pool is not None and len(pool.instances) <= pool.floor

        return min(idle, key=lambda i: (kept(i), i.last_used), default=None)

    def _tenant_room(self, row: VersionRow, evict: bool) -> bool:
        """Whether the function's tenant stays within its memory limit with one more instance
        (evicting the tenant's own idle instances outside groups when ``evict``)."""
        tenant = tenant_of(row.function)
        limit = self.tenant_memory_mb(tenant)
        while limit and self.tenant_mb(tenant) + row.spec.memory_mb > limit:
            if not evict:
                return False
            mine = [i for i in self._shared() if tenant_of(i.function) == tenant]
            victim = self._idle_victim(mine, exclude_version=None)
            if victim is None:
                return False
            self.retire(self.pools[victim.function], victim)
        return True

    def over_tenant_memory(self, row: VersionRow) -> bool:
        """The tenant's instances hold its whole memory limit and none will give way: no
        start can fit, nor will by waiting (an instance started ahead and still starting will
        be idle, and so evictable, once it is up)."""
        if row.spec.service_group is not None:
            return False  # a group's instances count against the group
        tenant = tenant_of(row.function)
        limit = self.tenant_memory_mb(tenant)
        return bool(limit) and self.tenant_mb(tenant) + row.spec.memory_mb > limit and not any(
            i.ahead and i.state == "starting" and tenant_of(i.function) == tenant
            for i in self._shared())

    def tenant_mb(self, tenant: str) -> int:
        """The memory a tenant's instances outside service groups hold or have reserved."""
        return self.memory[tenant] + self.reserved[tenant]

    # -- service groups -----------------------------------------------------------------------
    def add_group(self, key: str, spec: ServiceGroupSpec) -> GroupState:
        """Carve the group's memory out of the node, evicting idle instances outside groups
        that are in the way: 422 when the node could never hold it, 409 when busy instances
        hold the memory now."""
        if key in self.groups:
            raise errors.Conflict(f"service group {spec.name!r} already exists")
        if spec.memory_mb > self.resources.carvable_mb():
            raise errors.LimitExceeded(
                "node_memory_exceeded", f"memory_mb {spec.memory_mb} is more than the node"
                f" has outside other service groups ({self.resources.carvable_mb()} MB)")
        while True:
            room = self.resources.carve(key, spec.memory_mb)
            if room is not None:
                group = self.groups[key] = GroupState(key, spec, room)
                return group
            victim = self._idle_victim(self._shared(), exclude_version=None)
            if victim is None:
                free = max(n.free_mb for n in self.resources.nodes.values())
                raise errors.Conflict(
                    f"memory_mb {spec.memory_mb} does not fit now: the node has {free} MB free"
                    " outside service groups and busy instances hold the rest")
            self.retire(self.pools[victim.function], victim)

    def update_group(self, key: str, spec: ServiceGroupSpec) -> None:
        """A group's new spec; its memory grows from the node's free memory (evicting idle
        instances outside groups) or shrinks (evicting the group's idle instances): 409 when
        busy instances are in the way."""
        group = self.groups.get(key)
        if group is None:  # not placed at start: try again
            self.add_group(key, spec)
            return
        room = group.room
        while not self.resources.resize(room, spec.memory_mb):
            growing = spec.memory_mb > room.memory_mb
            candidates = self._shared() if growing else self._in(room)
            victim = self._idle_victim(candidates, exclude_version=None)
            if victim is None:
                raise errors.Conflict(
                    f"memory_mb cannot change to {spec.memory_mb} now: " + (
                        "the node has not that much free outside service groups" if growing
                        else f"the group's busy instances hold {room.reserved_mb} MB"))
            self.retire(self.pools[victim.function], victim)
        group.spec = spec

    def remove_group(self, key: str) -> list[Instance]:
        """Stop the group's instances (versions that left it) and give its memory back; the
        instances being stopped."""
        group = self.groups.pop(key, None)
        if group is None:
            return []
        stopping = self._in(group.room)
        for inst in stopping:
            self.retire(self.pools[inst.function], inst)
        self.resources.uncarve(group.room)
        return stopping

    def group_usage(self, key: str) -> dict[str, Any]:
        group = self.groups.get(key)
        if group is None:
            return {"instances": 0, "memory_mb": 0, "free_mb": 0}
        room = group.room
        states = Counter(i.state for i in self._in(room))
        return {"instances": room.reservations, "memory_mb": room.reserved_mb,
                "free_mb": room.free_mb, "idle": states["idle"], "busy": states["busy"],
                "starting": room.reservations - states["idle"] - states["busy"]}

    @staticmethod
    def _idle_victim(candidates: list[Instance], exclude_version: int | None) -> Instance | None:
        idle = [i for i in candidates
                if i.state == "idle" and i.leases == 0 and i.version != exclude_version]
        return min(idle, key=lambda i: i.last_used, default=None)

    # -- starting and stopping --------------------------------------------------------------
    async def start(self, pool: Pool, row: VersionRow, node: Node,
                    ahead: bool = False) -> Instance:
        """Start an instance on ``node`` (already reserved); it is in the pool, ``starting``,
        from the first moment, and comes back holding one slot for the caller (``ahead``: no
        caller, it is started ahead of demand)."""
        if node.parent is None:
            self.reserved[tenant_of(row.function)] -= row.spec.memory_mb
        if not self.serves(pool):
            self.resources.release(node, row.spec.memory_mb)
            raise errors.Unavailable(f"function {display(row.function)!r} is no longer served here")
        inst = self.node.create(row.function, row.version, row.spec)
        inst.leases = 1
        inst.ahead = ahead
        pool.instances.append(inst)
        self._placement[inst.id] = node
        if node.parent is None:
            self.memory[tenant_of(inst.function)] += inst.memory_mb
        began = self.clock.monotonic()
        try:
            await self.node.boot(inst, await self.registry.local_paths(row))
        except BaseException:
            inst.retired = True  # boot stopped it already
            if inst in pool.instances:
                pool.instances.remove(inst)
            if self._placement.pop(inst.id, None) is not None:
                self.resources.release(node, row.spec.memory_mb)
                if node.parent is None:
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
            if node.parent is None:
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
