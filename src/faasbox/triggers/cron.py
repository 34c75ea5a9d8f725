"""Cron schedules: the trigger spec and the pure planning of fires.

Nothing here reads the wall clock: :func:`plan` takes ``now``, so the trigger service, the
tests and the elasticity code (pre-warm before known fires) use the same arithmetic.

Expressions have 5 fields (minute hour day month weekday) or 6, where the first is the
second (``*/10 * * * * *`` fires every 10 s), as in Quartz and Spring. ``@hourly``, ``@daily``,
``@weekly``, ``@monthly`` and ``@yearly`` are accepted too.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from faasbox.clock import time_zone
from faasbox.payload import encode_event
from faasbox.store.queue import TaskPolicy
from faasbox.triggers.shards import shard_events

TRIGGER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
Misfire = Literal["skip", "fire_once", "fire_all"]
Overlap = Literal["allow", "skip", "queue", "replace"]
SCAN_LIMIT = 10_000  # missed fires counted at most (a year of minutes is not walked)


class Schedule:
    """A validated cron expression in a timezone."""

    def __init__(self, expr: str, timezone: str = "UTC") -> None:
        expr = " ".join(expr.split())
        fields = expr.split(" ")
        if not expr.startswith("@") and len(fields) not in (5, 6):
            raise ValueError(f"cron {expr!r} must have 5 fields (minute hour day month weekday)"
                             " or 6 (second first)")
        self.seconds = len(fields) == 6
        if not croniter.is_valid(expr, second_at_beginning=self.seconds):
            raise ValueError(f"cron {expr!r} is not a valid expression")
        self.tz = time_zone(timezone)
        self.expr = expr
        try:
            self.after(time.time())
        except (CroniterBadDateError, ValueError, OverflowError):
            raise ValueError(f"cron {expr!r} never fires (no date matches it)") from None

    def after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (epoch seconds)."""
        start = dt.datetime.fromtimestamp(t, self.tz)
        it = croniter(self.expr, start, second_at_beginning=self.seconds)
        return float(it.get_next(float))

    def between(self, start: float, end: float, limit: int = SCAN_LIMIT) -> list[float]:
        """Fire times ``t`` with ``start <= t <= end``, at most ``limit`` of them."""
        out: list[float] = []
        it = croniter(self.expr, dt.datetime.fromtimestamp(start - 1e-6, self.tz),
                      second_at_beginning=self.seconds)
        while len(out) < limit:
            t = float(it.get_next(float))
            if t > end:
                break
            if t >= start:
                out.append(t)
        return out

    def upcoming(self, now: float, n: int) -> list[float]:
        out, t = [], now
        for _ in range(n):
            t = self.after(t)
            out.append(t)
        return out


class JobTemplate(BaseModel):
    """What a fire starts when the trigger runs a job instead of one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: list[Any] | dict[str, Any] = Field(
        description="a list of shard events, or {count: N, params: {...}}")
    max_parallel: int | None = Field(None, ge=1, le=100_000)
    on_failure: Literal["stop", "continue"] = "stop"
    retry: TaskPolicy | None = None
    reduce: str | None = None

    @model_validator(mode="after")
    def _shards(self) -> JobTemplate:
        shard_events(self.shards)
        return self


class TriggerSpec(BaseModel):
    """A cron trigger of a function, as the API and the stack file take it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(description="5 fields, or 6 with seconds first; or @daily etc.")
    timezone: str = Field("UTC", description="IANA timezone the expression is read in")
    event: Any = Field(None, description="the event of every fire; default: a description"
                       " of the fire ({trigger, function, scheduled_time})")
    enabled: bool = True
    misfire: Misfire = Field(
        "fire_once", description="fires missed while the server was down (or late by more"
        " than misfire_grace_s): skip them, fire once for all of them, or fire each"
        " (at most max_catchup)")
    max_catchup: int = Field(10, ge=1, le=1000)
    misfire_grace_s: float = Field(60.0, ge=0, le=86400)
    overlap: Overlap = Field(
        "allow", description="when the previous fire's run is still going: run anyway,"
        " skip this fire, queue it until the previous ends, or cancel the previous")
    job: JobTemplate | None = Field(None, description="start a sharded job on each fire")

    @model_validator(mode="after")
    def _valid(self) -> TriggerSpec:
        Schedule(self.cron, self.timezone)  # raises ValueError with the reason
        if self.event is not None:
            encode_event(self.event, "the trigger's event")
        return self

    def schedule(self) -> Schedule:
        return Schedule(self.cron, self.timezone)


def check_trigger_name(name: str) -> str:
    if not TRIGGER_NAME_RE.match(name):
        raise ValueError(f"invalid trigger name {name!r}: use 1-63 lowercase letters, digits,"
                         " '-' or '_'")
    return name


class NamedTriggerSpec(TriggerSpec):
    name: str | None = Field(None, description="unique per function; default: generated")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_trigger_name(v)


@dataclass
class FirePlan:
    """What to do now for one trigger."""

    fires: list[float] = field(default_factory=list)  # scheduled times to fire, in order
    missed: int = 0  # late fires dropped by the misfire policy
    next_fire_at: float | None = None


def plan(spec: TriggerSpec, next_fire_at: float | None, now: float) -> FirePlan:
    """The fires due at ``now`` for a trigger whose next unmade fire is ``next_fire_at``.

    A fire is on time when ``now`` is at most ``misfire_grace_s`` past it; later ones are
    misfires, handled by ``spec.misfire``. The returned ``next_fire_at`` is the first fire
    after ``now``.
    """
    sched = spec.schedule()
    if next_fire_at is None or not spec.enabled:
        return FirePlan(next_fire_at=sched.after(now) if spec.enabled else None)
    if next_fire_at > now:
        return FirePlan(next_fire_at=next_fire_at)
    due = sched.between(next_fire_at, now)
    late = [t for t in due if now - t > spec.misfire_grace_s]
    on_time = [t for t in due if now - t <= spec.misfire_grace_s]
    if spec.misfire == "skip":
        kept: list[float] = []
    elif spec.misfire == "fire_once":
        kept = late[-1:]
    else:
        kept = late[-spec.max_catchup:]
    return FirePlan(fires=kept + on_time, missed=len(late) - len(kept),
                    next_fire_at=sched.after(now))


def fire_event(spec: TriggerSpec, function: str, name: str, scheduled: float) -> Any:
    if spec.event is not None:
        return spec.event
    when = dt.datetime.fromtimestamp(scheduled, dt.UTC).isoformat().replace("+00:00", "Z")
    return {"trigger": name, "function": function, "scheduled_time": when}
