"""The Scheduler: picks an instance for every invocation.

Per function there is a pool of instances (any of its versions). ``acquire`` takes a free slot
on a warm instance of the wanted version (most recently used first, so surplus instances go
idle and expire), else starts one if the function is under ``max_instances`` and a node has
room (evicting idle instances that block it), else waits in a FIFO queue for at most
``acquire_timeout_s`` and then raises :class:`~faasbox.errors.Throttled`. A released slot is
handed straight to the first waiter that can use it, without a wakeup storm.

A lifecycle task stops instances idle past their ``idle_ttl_s`` (scale to zero), keeps
``min_instances`` of the latest version warm, and clears instances that died while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faasbox import errors
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
    instances: list[Instance] = field(default_factory=list)
    starting: int = 0
    waiters: deque[Waiter] = field(default_factory=deque)

    def size(self) -> int:
        return len(self.instances) + self.starting


class Scheduler:
    def __init__(
        self, registry: Registry, node: NodeService, resources: ResourceManager,
        acquire_timeout_s: float = 10.0, reap_interval_s: float = 1.0,
    ) -> None:
        self.registry = registry
        self.node = node
        self.resources = resources
        self.acquire_timeout_s = acquire_timeout_s
        self.reap_interval_s = reap_interval_s
        self.pools: dict[str, Pool] = {}
        self._placement: dict[str, Node] = {}  # instance id -> node holding its memory
        self._lifecycle: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.cold_starts = 0
        # called with a function name whenever a slot of it is released (the dispatcher)
        self.on_release: Callable[[str], None] | None = None

    def pool(self, function: str) -> Pool:
        pool = self.pools.get(function)
        if pool is None:
            pool = self.pools[function] = Pool(function)
        return pool

    # -- acquire / release ------------------------------------------------------------------
    async def acquire(self, row: VersionRow) -> tuple[Instance, bool]:
        """A slot on an instance of ``row``: ``(instance, cold)``. Release it with release()."""
        pool = self.pool(row.function)
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
            return await asyncio.wait_for(asyncio.shield(fut), self.acquire_timeout_s)
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
        inst = self.node.create(row.function, row.version, row.spec)
        inst.leases = 1
        pool.instances.append(inst)
        self._placement[inst.id] = node
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
        self.cold_starts += 1
        return inst

    def release(self, inst: Instance) -> None:
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
            self.release(inst)
        else:
            waiter.future.set_result((inst, True))

    # -- stopping ---------------------------------------------------------------------------
    def _retire(self, pool: Pool, inst: Instance) -> None:
        """Take an instance out of service now and stop it in the background."""
        if inst in pool.instances:
            pool.instances.remove(inst)
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

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._lifecycle = asyncio.create_task(self._lifecycle_loop(), name="lifecycle")

    async def close(self) -> None:
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle
        for function in list(self.pools):
            await self.drop(function)
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _lifecycle_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("lifecycle tick failed")
            await asyncio.sleep(self.reap_interval_s)

    async def tick(self) -> None:
        now = asyncio.get_running_loop().time()
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
            self._reap(pool, latest, now)
            self._ensure_min(pool, latest)
            self._pump(pool)

    async def _function_names(self) -> list[str]:
        names = set(self.pools)
        names.update(f.name for f in await self.registry.functions())
        return sorted(names)

    def _reap(self, pool: Pool, latest: VersionRow, now: float) -> None:
        keep = latest.spec["min_instances"]
        live_latest = sum(1 for i in pool.instances if i.version == latest.version)
        idle = sorted((i for i in pool.instances if i.state == "idle" and i.leases == 0),
                      key=lambda i: i.last_used)
        for inst in idle:
            if now - inst.last_used < inst.spec["idle_ttl_s"]:
                continue
            if inst.version == latest.version:
                if live_latest <= keep:
                    continue
                live_latest -= 1
            log.info("stopping idle instance %s after %.0f s", inst.id, now - inst.last_used)
            self._retire(pool, inst)

    def _ensure_min(self, pool: Pool, latest: VersionRow) -> None:
        have = sum(1 for i in pool.instances if i.version == latest.version) + pool.starting
        for _ in range(latest.spec["min_instances"] - have):
            node = self._make_room(pool, latest)
            if node is None:
                return
            pool.starting += 1
            self._spawn(self._prewarm(pool, latest, node))

    async def _prewarm(self, pool: Pool, row: VersionRow, node: Node) -> None:
        pool.starting -= 1
        try:
            inst = await self._cold(pool, row, node)
        except errors.FaasboxError as exc:
            log.warning("cannot keep %s warm: %s", row.function, exc)
            return
        self.release(inst)

    def describe(self, function: str) -> list[dict[str, Any]]:
        pool = self.pools.get(function)
        return [] if pool is None else [i.describe() for i in pool.instances]
