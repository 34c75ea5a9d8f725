"""The warm floor of a service group, and how it is spread over the group's functions.

Pure: the scaling loop (:mod:`faasbox.scheduler.scaling`) calls these every tick, after each
function's planner made its plan and before it acts on the plans.

* The group's **base floor** is ``min_instances`` plus the largest ``instances`` of the
  ``schedule`` windows open now or within the pre-warm lead (overlapping windows do not add
  up), at most ``max_instances``.
* Each function's **own floor** (its ``min_instances``, provisioned windows and the known
  fires of its cron triggers, from its planner) comes first: before a fire the group warms
  the function's instances out of its own capacity, and once the fire's calls are done the
  planner lets them go.
* The rest of the base floor is spread one instance at a time over the group's functions,
  most recently used first.
* Everything fits the group: its ``max_instances``, its memory, and each function's
  ``max_instances``. What does not fit is not asked for (a floor that cannot be met would
  evict the group's other warm instances every tick).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from faasbox.tenancy.groups import ServiceGroupSpec

__all__ = ["Member", "base_floor", "spread"]


@dataclass(frozen=True)
class Member:
    """A function of the group as the spread sees it."""

    function: str
    memory_mb: int
    max_instances: int
    own_floor: int  # what the function's planner asks for on its own
    used_at: float  # the last call (monotonic); larger is more recent


def base_floor(spec: ServiceGroupSpec, now: float, lead_s: float) -> int:
    """``min_instances`` plus the open (or about to open) schedule windows' instances."""
    extra = max((w.instances for w in spec.schedule
                 if w.open_at(now) or w.open_at(now + lead_s)), default=0)
    return min(spec.max_instances, spec.min_instances + extra)


def spread(members: Sequence[Member], memory_mb: int, max_instances: int,
           base: int) -> dict[str, int]:
    """The warm floor of each function of a group (see the module docstring)."""
    order = sorted(members, key=lambda m: (-m.used_at, m.function))
    floors = {m.function: 0 for m in members}
    left_mb, left_n = memory_mb, max_instances

    def take(m: Member) -> bool:
        nonlocal left_mb, left_n
        if floors[m.function] >= m.max_instances or left_n < 1 or left_mb < m.memory_mb:
            return False
        floors[m.function] += 1
        left_mb -= m.memory_mb
        left_n -= 1
        return True

    for m in order:
        while floors[m.function] < m.own_floor and take(m):
            pass
    while sum(floors.values()) < base:  # round robin, most recently used first
        took = False
        for m in order:
            if sum(floors.values()) < base and take(m):
                took = True
        if not took:
            break
    return floors
