"""The scaling loop: ticks every ``interval_s`` on the injected clock and sizes each pool.

Per function it feeds a :class:`~faasbox.autoscaler.planner.FunctionPlanner` (the KPA
autoscaler, the keep-alive policy, min_instances, provisioned windows, known fires) with the
demand since the last tick (slots held plus callers waiting, time-averaged), the async backlog
and the latency, and acts on its plan: starts what is missing in parallel, stops idle
instances whose window ran out, pre-warms instances before predicted calls, and clears
instances that died while idle. The floors of functions in a service group are set by their
group (:mod:`faasbox.scheduler.groups`) between planning and acting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from faasbox import background, errors
from faasbox.autoscaler.planner import Observation, Plan
from faasbox.clock import Clock
from faasbox.events import ScheduleChanged
from faasbox.node.startmode import FORK
from faasbox.registry import Registry
from faasbox.resources import Node
from faasbox.scheduler.groups import Member, base_floor, spread
from faasbox.scheduler.instances import InstancePools, Pool
from faasbox.scheduler.slots import Scheduler, meter
from faasbox.store import VersionRow
from faasbox.tenancy.groups import group_key

log = logging.getLogger(__name__)
SWAPS_AT_ONCE = 4  # fork-server instances being replaced by template children, per pool
SWAP_IDLE_S = 2.0  # ... once idle this long (one in use now is likely to be used again soon)

Backlog = Callable[[str], Awaitable[int]]


async def no_backlog(function: str) -> int:
    return 0


class ScalingLoop:
    def __init__(self, pools: InstancePools, scheduler: Scheduler, registry: Registry,
                 clock: Clock, interval_s: float = 1.0, backlog: Backlog = no_backlog) -> None:
        self.pools = pools
        self.scheduler = scheduler
        self.registry = registry
        self.clock = clock
        self.interval_s = interval_s
        self.backlog = backlog  # runnable async tasks of a function (queue depth)
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="scaling")

    async def close(self) -> None:
        await background.stop(self._loop)

    def on_schedule(self, event: ScheduleChanged) -> None:
        """Have instances warm shortly before each known fire (a cron trigger's next fires);
        they are let go once the fire's calls are done."""
        self.pools.pool(event.function).planner.set_known_fires(event.fire_times, event.instances)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scaling tick failed")
            await self.clock.sleep(self.interval_s)

    async def tick(self) -> None:
        now = self.clock.now()
        for pool in list(self.pools.pools.values()):
            self.pools.clear_dead(pool)
        work: list[tuple[Pool, VersionRow, Plan]] = []
        for name in await self._function_names():
            try:
                latest = await self.registry.resolve(name, None)
            except errors.NotFound:
                self.pools.drop(name)  # deleted: no pool may outlive its function
                continue
            pool = self.pools.pool(name)
            backlog = await self.backlog(name)
            if not self.pools.serves(pool):
                continue  # deleted while we read
            work.append((pool, latest, self._plan(pool, latest, backlog, now)))
        work = self._group_floors(work, now)
        for pool, latest, plan in work:
            if not self.pools.serves(pool):
                continue
            pool.floor = plan.floor
            self._scale_in(pool, latest, plan, now)
            self._swap_forked(pool, latest, now)
            self._prewarm_due(pool, latest, plan, now)
            self._scale_out(pool, latest, plan)
            self.scheduler.pump(pool)

    def _group_floors(self, work: list[tuple[Pool, VersionRow, Plan]],
                      now: float) -> list[tuple[Pool, VersionRow, Plan]]:
        """The plans of functions in service groups with their floors set by their group
        (:mod:`faasbox.scheduler.groups`): the group's warm floor spread over its functions,
        within the group's capacity."""
        members: dict[str, list[int]] = {}  # group key -> indexes into work
        for i, (_, latest, _) in enumerate(work):
            key = group_key(latest.function, latest.spec)
            if key is not None:
                members.setdefault(key, []).append(i)
        out = list(work)
        for key, group in self.pools.groups.items():
            mine = members.get(key, [])
            lead = max((work[i][0].planner.lead_s for i in mine),
                       default=self.pools.lead_margin_s)
            group.base_floor = base_floor(group.spec, now, lead)
            floors = spread([Member(work[i][1].function, work[i][1].spec.memory_mb,
                                    work[i][1].spec.max_instances, work[i][2].floor,
                                    work[i][0].used_at) for i in mine],
                            group.spec.memory_mb, group.spec.max_instances, group.base_floor)
            group.floor = sum(floors.values())
            for i in mine:
                pool, latest, plan = work[i]
                floor = floors[latest.function]
                more = plan.target if plan.target > plan.floor else 0
                reason = plan.reason + ("; group floor" if floor > plan.floor else "")
                plan = replace(plan, floor=floor, hold=max(plan.desired, floor), reason=reason,
                               target=min(max(more, floor), latest.spec.max_instances))
                pool.planner.last_plan = plan
                out[i] = (pool, latest, plan)
        return out

    async def _function_names(self) -> list[str]:
        names = set(self.pools.pools)
        names.update(f.name for f in await self.registry.functions())
        return sorted(names)

    def _plan(self, pool: Pool, latest: VersionRow, backlog: int, now: float) -> Plan:
        meter(pool, 0, self.clock.monotonic())
        span = pool.mark - pool.since
        demand = pool.demand_s / span if span > 0 else float(pool.demand)
        latency = pool.demand_s / pool.completions * 1000 if pool.completions else None
        pool.demand_s, pool.completions, pool.since = 0.0, 0, pool.mark
        mine = pool.latest(latest.version)
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
        live = len(pool.latest(latest.version)) + pool.starting
        idle = [i for i in pool.instances if i.state == "idle" and i.leases == 0]
        for inst in sorted(idle, key=lambda i: i.last_used):
            window = pool.idle.get(inst.id)
            if window is None:
                window = pool.idle[inst.id] = planner.started_window(
                    now, ttl=inst.spec.idle_ttl_s)
            why = planner.expired(window, now)
            if why is None:
                continue
            if inst.version == latest.version:
                if live <= (plan.floor if why == "hard" else plan.hold):
                    continue
                live -= 1
            log.info("stopping idle instance %s after %.1f s (%s)", inst.id,
                     now - window.since, "idle_ttl_s" if why == "hard" else "keep-alive")
            self.pools.retire(pool, inst)
            planner.retired(window, now, why)

    def _swap_forked(self, pool: Pool, latest: VersionRow, now: float) -> None:
        """Idle instances of the latest version that the fork server started before the
        version had its template are replaced by the template's children once idle for
        ``SWAP_IDLE_S``, a few per tick:
        a template's child shares the function's imports, a fork-server child holds its own
        copy (tens of MB for a heavy import). The old one is stopped first (its room and its
        place under max_instances go to the new one, which keeps its keep-alive window)."""
        if pool.swapping >= SWAPS_AT_ONCE or not self.pools.node.has_template(
                latest.function, latest.version):
            return
        idle_since = asyncio.get_running_loop().time() - SWAP_IDLE_S  # instances' own clock
        forked = [i for i in pool.latest(latest.version)
                  if i.state == "idle" and i.leases == 0 and i.start_mode == FORK
                  and i.last_used <= idle_since]
        for old in sorted(forked, key=lambda i: i.last_used)[:SWAPS_AT_ONCE - pool.swapping]:
            window = pool.idle.get(old.id)
            keep_s = max(0.0, window.keep_until - now) if window is not None else 0.0
            log.info("replacing instance %s (forked before its template) by a template child",
                     old.id)
            self.pools.retire(pool, old)
            node = self.pools.reserve_free(pool, latest)
            if node is None:
                return
            pool.starting += 1
            pool.swapping += 1
            self.pools.spawn(self._swap(pool, latest, node, keep_s))

    async def _swap(self, pool: Pool, row: VersionRow, node: Node, keep_s: float) -> None:
        try:
            await self.scheduler.warm_up(pool, row, node, keep_s)
        finally:
            pool.swapping -= 1

    def _prewarm_due(self, pool: Pool, latest: VersionRow, plan: Plan, now: float) -> None:
        """Load an instance for each predicted call that is due: an idle instance kept only by
        the autoscaler is reused for it, else one is started."""
        planner = pool.planner
        spare = [i for i in pool.latest(latest.version)
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
        live = len(pool.latest(latest.version)) + pool.starting
        for _ in range(plan.floor - live):
            if not self._start(pool, latest, 0.0, evict=True):
                return
            live += 1
        for _ in range(plan.target - live):
            if not self._start(pool, latest, 0.0, evict=False):
                return

    def _start(self, pool: Pool, row: VersionRow, keep_s: float, evict: bool) -> bool:
        node = (self.pools.make_room(pool, row) if evict
                else self.pools.reserve_free(pool, row))
        if node is None:
            return False
        pool.starting += 1
        self.pools.spawn(self.scheduler.warm_up(pool, row, node, keep_s))
        return True

