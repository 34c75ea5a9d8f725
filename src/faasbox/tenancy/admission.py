"""Admission: the limits every call passes before any work is done.

- **Rate**: a token bucket per tenant (``rate_per_s`` refilled continuously, ``burst`` deep)
  on sync invokes and submitted tasks (one token per task).
- **Concurrency**: executions running at once, per tenant and per function. A function with
  ``reserved_concurrency`` R runs at most R at once and always has R of the tenant's
  ``max_concurrency`` to itself; the tenant's other functions share what is not reserved.
- **Queue**: tasks of a tenant not yet finished, at most ``max_queued_tasks``.

Counting is in memory (one server); the queue counter starts from the store at start.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from faasbox import errors
from faasbox.clock import Clock
from faasbox.spec import FunctionSpec
from faasbox.tenancy.names import tenant_of
from faasbox.tenancy.service import Tenancy


@dataclass
class _Bucket:
    tokens: float
    at: float


def min_unreserved(max_concurrency: int) -> int:
    """What reservations must leave to the tenant's other functions (Lambda keeps 100 of
    1,000 unreserved: a tenth)."""
    return max(1, max_concurrency // 10)


class Admission:
    def __init__(self, tenancy: Tenancy, clock: Clock) -> None:
        self.tenancy = tenancy
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.running: Counter[str] = Counter()  # tenant -> executions running
        self.running_unreserved: Counter[str] = Counter()
        self.running_function: Counter[str] = Counter()  # qualified function -> running
        self.reserved: dict[str, dict[str, int]] = {}  # tenant -> function -> reservation
        self.queued: Counter[str] = Counter()  # tenant -> unfinished tasks

    # -- rate -------------------------------------------------------------------------------
    def take(self, tenant: str, n: int = 1) -> None:
        """Take ``n`` tokens of the tenant's rate, or raise 429 ``rate_exceeded``."""
        limits = self.tenancy.limits(tenant)
        if limits.rate_per_s <= 0:
            return
        burst = max(float(limits.burst), limits.rate_per_s, 1.0)
        now = self.clock.monotonic()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * limits.rate_per_s)
        bucket.at = now
        if bucket.tokens < n:
            wait = (n - bucket.tokens) / limits.rate_per_s
            raise errors.OverLimit(
                "rate_exceeded", f"tenant {tenant!r} is over its rate of"
                f" {limits.rate_per_s:g} requests/s (burst {burst:g})", retry_after=wait)
        bucket.tokens -= n

    # -- concurrency ------------------------------------------------------------------------
    def set_reservation(self, function: str, spec: FunctionSpec | None) -> None:
        """Track a function's ``reserved_concurrency`` (None or no spec: none)."""
        tenant = tenant_of(function)
        per = self.reserved.setdefault(tenant, {})
        if spec is None or spec.reserved_concurrency is None:
            per.pop(function, None)
        else:
            per[function] = spec.reserved_concurrency

    def check_reservation(self, function: str, spec: FunctionSpec) -> None:
        """A deploy's reservation must leave a tenth of the tenant's limit unreserved."""
        if spec.reserved_concurrency is None:
            return
        tenant = tenant_of(function)
        limit = self.tenancy.limits(tenant).max_concurrency
        others = sum(r for f, r in self.reserved.get(tenant, {}).items() if f != function)
        room = limit - min_unreserved(limit) - others
        if spec.reserved_concurrency > room:
            raise errors.LimitExceeded(
                "reserved_concurrency_exceeded",
                f"reserved_concurrency {spec.reserved_concurrency} does not fit: the tenant's"
                f" max_concurrency is {limit}, other functions reserve {others} and"
                f" {min_unreserved(limit)} must stay unreserved (at most {max(0, room)})")

    def free(self, function: str) -> int:
        """Executions ``function`` may start now within its tenant's limits."""
        tenant = tenant_of(function)
        reservation = self.reserved.get(tenant, {}).get(function)
        if reservation is not None:
            return reservation - self.running_function[function]
        limit = self.tenancy.limits(tenant).max_concurrency
        unreserved = limit - sum(self.reserved.get(tenant, {}).values())
        return unreserved - self.running_unreserved[tenant]

    def enter(self, function: str) -> None:
        """Count one execution of ``function`` starting, or raise 429 naming the limit."""
        if self.free(function) <= 0:
            tenant = tenant_of(function)
            reservation = self.reserved.get(tenant, {}).get(function)
            if reservation is not None:
                raise errors.OverLimit(
                    "reserved_concurrency_exceeded",
                    f"the function is at its reserved_concurrency ({reservation} running)")
            limit = self.tenancy.limits(tenant).max_concurrency
            raise errors.OverLimit(
                "tenant_concurrency_exceeded",
                f"tenant {tenant!r} is at its max_concurrency ({limit} running, less what"
                " its functions reserve)")
        self._move(function, +1)

    def leave(self, function: str) -> None:
        self._move(function, -1)

    def _move(self, function: str, delta: int) -> None:
        tenant = tenant_of(function)
        self.running[tenant] += delta
        self.running_function[function] += delta
        if function not in self.reserved.get(tenant, {}):
            self.running_unreserved[tenant] += delta

    # -- queue ------------------------------------------------------------------------------
    def check_queue(self, tenant: str, n: int) -> None:
        limit = self.tenancy.limits(tenant).max_queued_tasks
        if self.queued[tenant] + n > limit:
            raise errors.OverLimit(
                "queue_full", f"tenant {tenant!r} has {self.queued[tenant]} unfinished tasks;"
                f" its max_queued_tasks is {limit}", retry_after=5.0)

    def queued_delta(self, tenant: str, n: int) -> None:
        self.queued[tenant] = max(0, self.queued[tenant] + n)
