"""The meter: usage per function and hour, added up in memory and flushed every few seconds.

Fed by events (never a store write per call on the hot path):

- :class:`~faasbox.events.InvocationFinished`: invocations by trigger and status, billed ms
  and GB-s (and the interruptible share the spot model prices), duration and peak-RSS
  histograms, cold starts and their init time;
- :class:`~faasbox.events.InvocationThrottled`: throttles;
- :class:`~faasbox.events.InstanceRetired` and a walk over the live instances at every flush:
  each instance's lifetime cut into intervals, each split into busy time (its calls'
  durations), idle time, and the part of the idle time that only a floor kept
  (``min_instances``, a provisioned window, a known fire, a service group: its keep-alive had
  run out), all also as memory-time; CPU seconds and peak RSS as the node measures them.

A flush upserts the pending function-hours in one group commit (``write_later``); reads flush
first, so a query sees every call that has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from faasbox import background
from faasbox.clock import Clock
from faasbox.events import InstanceRetired, InvocationFinished, InvocationThrottled
from faasbox.metering import accounting
from faasbox.metering.usage import DAY_S, HOUR_S, Usage, hour_of, ms_bucket, rss_bucket
from faasbox.node import Instance
from faasbox.scheduler import InstancePools
from faasbox.store.relational.usage import Key, UsageStore

log = logging.getLogger(__name__)


@dataclass
class Ledger:
    """What is known of one live instance since it was last accounted."""

    function: str
    memory_mb: int
    mark: float  # monotonic time accounted up to
    busy_pending_s: float = 0.0  # call time not yet accounted
    init_pending_s: float = 0.0  # start-up time not yet accounted (neither busy nor idle)
    cpu_mark: float = 0.0
    init_seen: bool = False


class Meter:
    def __init__(self, usage: UsageStore, pools: InstancePools, clock: Clock,
                 flush_s: float = 5.0, retention_days: float = 90.0) -> None:
        self.usage = usage
        self.pools = pools
        self.clock = clock
        self.flush_s = flush_s
        self.retention_days = retention_days
        self.pending: dict[Key, Usage] = {}
        self.ledgers: dict[str, Ledger] = {}
        self._early_busy: dict[str, float] = {}  # call time of instances not yet in a ledger
        self._task: asyncio.Task[None] | None = None
        self._purged_at = 0.0

    def _at(self, function: str, t: float) -> Usage:
        key = (function, hour_of(t))
        u = self.pending.get(key)
        if u is None:
            u = self.pending[key] = Usage()
        return u

    # -- events -----------------------------------------------------------------------------
    def on_invocation(self, event: InvocationFinished) -> None:
        rec = event.record
        u = self._at(rec.function, rec.started_at)
        u.invocations += 1
        u.calls[(rec.trigger, rec.status)] += 1
        u.billed_ms += rec.billed_ms
        u.gb_s += rec.gb_s
        u.duration_ms += rec.duration_ms
        u.memory_mb = max(u.memory_mb, rec.memory_mb)
        u.hist[("ms", ms_bucket(rec.duration_ms))] += 1
        if event.extra.get("interruptible"):
            u.spot_invocations += 1
            u.spot_gb_s += rec.gb_s
        if rec.cold_start:
            u.cold_starts += 1
            u.cold_start_ms += rec.init_ms or 0.0
        if rec.peak_rss_mb:
            u.peak_rss_mb = max(u.peak_rss_mb, rec.peak_rss_mb)
            u.hist[("rss", rss_bucket(rec.peak_rss_mb))] += 1
        if rec.instance_id is not None:
            ledger = self.ledgers.get(rec.instance_id)
            if ledger is not None:
                ledger.busy_pending_s += rec.duration_ms / 1000
            else:
                self._early_busy[rec.instance_id] = (
                    self._early_busy.get(rec.instance_id, 0.0) + rec.duration_ms / 1000)

    def on_throttle(self, event: InvocationThrottled) -> None:
        self._at(event.function, self.clock.now()).throttles += 1

    def on_instance_retired(self, event: InstanceRetired) -> None:
        inst = event.instance
        ledger = self._ledger(inst)
        self._account(inst, ledger, self.clock.monotonic(), self.clock.now(), held=False)
        u = self._at(inst.function, self.clock.now())
        u.instances += 1
        self.ledgers.pop(inst.id, None)

    # -- instances --------------------------------------------------------------------------
    def _ledger(self, inst: Instance) -> Ledger:
        ledger = self.ledgers.get(inst.id)
        if ledger is None:
            ledger = self.ledgers[inst.id] = Ledger(inst.function, inst.memory_mb, inst.created)
            ledger.busy_pending_s += self._early_busy.pop(inst.id, 0.0)
        if inst.init_ms is not None and not ledger.init_seen:
            ledger.init_pending_s += inst.init_ms / 1000
            ledger.init_seen = True
        return ledger

    def _account(self, inst: Instance, ledger: Ledger, mono: float, now: float,
                 held: bool) -> None:
        """Account ``inst`` from its ledger's mark up to ``mono``, into the hour of ``now``."""
        dt = max(0.0, mono - ledger.mark)
        ledger.mark = max(ledger.mark, mono)
        busy = min(ledger.busy_pending_s, dt)
        ledger.busy_pending_s -= busy
        init = min(ledger.init_pending_s, dt - busy)
        ledger.init_pending_s -= init
        idle = dt - busy - init
        if inst.state == "starting":
            idle = 0.0  # still loading: its time is loaded, neither busy nor idle
        mb = ledger.memory_mb
        u = self._at(inst.function, now)
        u.loaded_s += dt
        u.busy_s += busy
        u.idle_s += idle
        u.loaded_mb_s += dt * mb
        u.busy_mb_s += busy * mb
        u.idle_mb_s += idle * mb
        if held:
            u.held_s += idle
            u.held_mb_s += idle * mb
        cpu = accounting.cpu_seconds(inst) if inst.state != "stopped" else None
        if cpu is not None:
            u.cpu_s += max(0.0, cpu - ledger.cpu_mark)
            ledger.cpu_mark = max(ledger.cpu_mark, cpu)
        rss = accounting.peak_rss_mb(inst) if inst.state != "stopped" else None
        u.instance_peak_rss_mb = max(u.instance_peak_rss_mb, rss or 0.0, inst.peak_rss_mb)

    def sample(self) -> None:
        """Account every live instance up to now."""
        mono, now = self.clock.monotonic(), self.clock.now()
        for pool in list(self.pools.pools.values()):
            planner = pool.planner
            floor = planner.last_plan.floor if planner.last_plan is not None else 0
            for inst in list(pool.instances):
                window = pool.idle.get(inst.id)
                # idle past its keep-alive, yet kept: only a floor holds it
                held = (floor > 0 and inst.state == "idle" and inst.leases == 0
                        and window is not None and planner.expired(window, now) is not None)
                self._account(inst, self._ledger(inst), mono, now, held)
        self._early_busy.clear()  # of instances gone before they were ever sampled

    # -- flushing ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meter-flush")

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.flush_s)
            try:
                await self.flush()
                await self._purge()
            except Exception:
                log.exception("metering flush failed")

    async def flush(self) -> None:
        """Account the live instances and queue the pending rows for the next group commit."""
        self.sample()
        pending = {k: u for k, u in self.pending.items() if not u.empty()}
        self.pending = {}
        if pending:
            self.usage.save(pending)

    async def _purge(self) -> None:
        now = self.clock.now()
        if now - self._purged_at < HOUR_S:
            return
        self._purged_at = now
        await self.usage.purge_before(hour_of(now - self.retention_days * DAY_S))

    async def close(self) -> None:
        """Stop the flush loop and write what is pending (after the instances are gone)."""
        await background.stop(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
