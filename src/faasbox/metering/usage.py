"""Usage counters of one function-hour, their sums, and their histograms.

A :class:`Usage` is what the meter adds up in memory between flushes and what a query of the
rollups returns: every field adds up except the peaks and ``memory_mb``, which keep the
greatest value seen.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

HOUR_S = 3600
DAY_S = 86400
RSS_STEP_MB = 4.0
# duration histogram: bucket upper edges in ms (the last catches everything above)
MS_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
            300000, 900000, math.inf)
MAXED = frozenset({"memory_mb", "peak_rss_mb", "instance_peak_rss_mb"})


def hour_of(t: float) -> int:
    """The start of the UTC hour holding epoch second ``t``."""
    return int(t // HOUR_S * HOUR_S)


def rss_bucket(mb: float) -> float:
    """The upper edge of the 4 MB bucket holding ``mb``."""
    return max(RSS_STEP_MB, math.ceil(mb / RSS_STEP_MB) * RSS_STEP_MB)


def ms_bucket(ms: float) -> float:
    return float(MS_EDGES[bisect.bisect_left(MS_EDGES, ms)])


@dataclass
class Usage:
    """Usage of one function over one bucket of time (an hour, a day, a whole period)."""

    invocations: int = 0
    billed_ms: int = 0
    gb_s: float = 0.0
    duration_ms: float = 0.0
    spot_invocations: int = 0  # of interruptible tasks (the spot model's share)
    spot_gb_s: float = 0.0
    cold_starts: int = 0
    cold_start_ms: float = 0.0
    throttles: int = 0
    memory_mb: int = 0  # the greatest memory_mb its invocations ran with
    peak_rss_mb: float = 0.0  # the greatest peak RSS an invocation reported
    instances: int = 0  # instance lifetimes that ended
    loaded_s: float = 0.0  # instance-seconds loaded (reserved on the node)
    busy_s: float = 0.0  # of which running calls
    idle_s: float = 0.0  # of which idle (keep-alive and floors)
    held_s: float = 0.0  # of the idle time, held by min_instances / provisioned / groups
    loaded_mb_s: float = 0.0  # the same as memory-time (MB x s)
    busy_mb_s: float = 0.0
    idle_mb_s: float = 0.0
    held_mb_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds the node measured for its instances
    instance_peak_rss_mb: float = 0.0  # the node's peak RSS of an instance (cgroup or /proc)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (trigger, status) -> n
    hist: Counter[tuple[str, float]] = field(default_factory=Counter)  # (kind, bucket) -> n

    def add(self, other: Usage) -> None:
        for f in NUMERIC:
            mine, theirs = getattr(self, f), getattr(other, f)
            setattr(self, f, max(mine, theirs) if f in MAXED else mine + theirs)
        self.calls.update(other.calls)
        self.hist.update(other.hist)

    def empty(self) -> bool:
        return not (any(getattr(self, f) for f in NUMERIC) or self.calls or self.hist)

    def percentile(self, kind: str, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0..1) of a histogram, as its bucket's upper edge."""
        buckets = sorted((b, n) for (k, b), n in self.hist.items() if k == kind and n > 0)
        total = sum(n for _, n in buckets)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket, n in buckets:
            seen += n
            if seen >= rank:
                return bucket
        return buckets[-1][0]

    @property
    def keepalive_idle_mb_s(self) -> float:
        return max(0.0, self.idle_mb_s - self.held_mb_s)

    def view(self) -> dict[str, Any]:
        """The JSON of a usage row (GB-s next to the MB-s it is kept in)."""
        by_trigger: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        for (trigger, status), n in self.calls.items():
            by_trigger[trigger] += n
            by_status[status] += n
        p50, p99 = self.percentile("ms", 0.5), self.percentile("ms", 0.99)
        rss99 = self.percentile("rss", 0.99)
        return {
            "invocations": self.invocations,
            "by_trigger": dict(sorted(by_trigger.items())),
            "by_status": dict(sorted(by_status.items())),
            "errors": sum(n for s, n in by_status.items() if s != "succeeded"),
            "billed_ms": self.billed_ms,
            "gb_s": round(self.gb_s, 6),
            "spot_gb_s": round(self.spot_gb_s, 6),
            "spot_invocations": self.spot_invocations,
            "duration_ms_p50": None if p50 is None or math.isinf(p50) else p50,
            "duration_ms_p99": None if p99 is None or math.isinf(p99) else p99,
            "cold_starts": self.cold_starts,
            "cold_start_ms": round(self.cold_start_ms, 3),
            "throttles": self.throttles,
            "memory_mb": self.memory_mb,
            "peak_rss_mb": round(self.peak_rss_mb, 2),
            "peak_rss_mb_p99": rss99,
            "instances": {
                "ended": self.instances,
                "loaded_s": round(self.loaded_s, 3),
                "busy_s": round(self.busy_s, 3),
                "idle_s": round(self.idle_s, 3),
                "held_s": round(self.held_s, 3),
                "loaded_gb_s": round(self.loaded_mb_s / 1024, 6),
                "busy_gb_s": round(self.busy_mb_s / 1024, 6),
                "idle_gb_s": round(self.idle_mb_s / 1024, 6),
                "held_gb_s": round(self.held_mb_s / 1024, 6),
                "cpu_s": round(self.cpu_s, 3),
                "peak_rss_mb": round(self.instance_peak_rss_mb, 2),
            },
        }


NUMERIC = tuple(f.name for f in fields(Usage) if f.name not in ("calls", "hist"))
