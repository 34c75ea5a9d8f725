"""Fair shares of the node among tenants with queued work (pure: no clock, no I/O).

When tenants' backlogs want more than the node holds, each dispatch round hands out the room
that is left (memory, in MB: a running task holds its function's ``memory_mb / concurrency``,
or ``memory_mb / (concurrency + sent ahead)`` for short tasks sent ahead to busy instances)
by **stride scheduling** over tenants: the tenant with the lowest *pass* gets the next task and
its pass moves on by ``1 / weight``, so over time tenants start tasks in proportion to their
weights (and, with like tasks, finish them in that proportion). Within a tenant its functions
take turns (round-robin), so one function's backlog does not starve the tenant's others.

A tenant that was idle comes back at the current lowest pass (not its old one), so it cannot
claim a burst for the time it had nothing queued. When room is plenty, everyone gets every
free slot and this changes nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Want:
    """A function with runnable tasks: how many it could start, and what each holds (MB)."""

    function: str
    tenant: str
    free: int
    cost_mb: float


@dataclass
class FairShare:
    passes: dict[str, float] = field(default_factory=dict)  # tenant -> its pass
    _turn: dict[str, int] = field(default_factory=dict)  # tenant -> next function index

    def allocate(self, wants: list[Want], room_mb: float,
                 weight: Callable[[str], float], most: int) -> dict[str, int]:
        """How many tasks each function starts this round: at most ``most`` in all, within
        ``room_mb`` and each function's ``free`` slots, by weighted stride over tenants."""
        by_tenant: dict[str, list[Want]] = {}
        for w in sorted(wants, key=lambda w: w.function):
            if w.free > 0:
                by_tenant.setdefault(w.tenant, []).append(w)
        floor = min((self.passes[t] for t in by_tenant if t in self.passes), default=0.0)
        heap: list[tuple[float, str]] = []
        for tenant in by_tenant:
            self.passes[tenant] = max(self.passes.get(tenant, floor), floor)
            heapq.heappush(heap, (self.passes[tenant], tenant))
        for tenant in [t for t in self.passes if t not in by_tenant]:
            del self.passes[tenant]  # idle: comes back at the floor
            self._turn.pop(tenant, None)
        quota: dict[str, int] = {}
        total = 0
        while heap and total < most:
            _, tenant = heapq.heappop(heap)
            mine = by_tenant[tenant]
            chosen = self._next(tenant, mine, quota, room_mb)
            if chosen is None:
                continue  # nothing of this tenant fits any more
            quota[chosen.function] = quota.get(chosen.function, 0) + 1
            room_mb -= chosen.cost_mb
            total += 1
            self.passes[tenant] += 1.0 / max(weight(tenant), 1e-6)
            heapq.heappush(heap, (self.passes[tenant], tenant))
        return quota

    def _next(self, tenant: str, mine: list[Want], quota: dict[str, int],
              room_mb: float) -> Want | None:
        start = self._turn.get(tenant, 0)
        for i in range(len(mine)):
            w = mine[(start + i) % len(mine)]
            if quota.get(w.function, 0) < w.free and w.cost_mb <= room_mb:
                self._turn[tenant] = (start + i + 1) % len(mine)
                return w
        return None

    def refund(self, tenant: str, unused: int, weight: float) -> None:
        """``unused`` of a tenant's quota found nothing to lease: give its pass back."""
        if tenant in self.passes and unused > 0:
            self.passes[tenant] -= unused / max(weight, 1e-6)
