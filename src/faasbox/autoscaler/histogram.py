"""Idle-time bookkeeping shared by the histogram keep-alive policies.

An *idle time* (IT) is the gap between a function going idle (an instance finished and was
handed back) and the first invocation that arrives after it. Arrivals that come before any
instance went idle again do not produce an idle time: they are part of the same busy period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class IdleTracker:
    """Turns ``on_invocation``/``windows`` calls of one function into idle times."""

    last_idle: float | None = None
    last_arrival: float | None = None

    def arrival(self, now: float) -> float | None:
        """Record an arrival; return the idle time it ends, or None if it ends none."""
        it: float | None = None
        if self.last_idle is not None and (
            self.last_arrival is None or self.last_idle >= self.last_arrival
        ):
            it = max(0.0, now - self.last_idle)
        self.last_arrival = now
        return it

    def idle(self, now: float) -> None:
        self.last_idle = now


@dataclass
class IdleHistogram:
    """Counts of idle times in fixed-width bins over ``[0, bins * bin_s)``.

    Idle times at or beyond the range are *out of bounds* (OOB): counted apart, and kept in
    ``oob_forecast``, an exponentially smoothed forecast of the next OOB idle time.
    """

    bin_s: float = 60.0
    bins: int = 240
    smoothing: float = 0.5
    counts: list[int] = field(default_factory=list)
    total: int = 0
    sumsq: int = 0
    oob: int = 0
    oob_forecast: float | None = None

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.bins

    @property
    def range_s(self) -> float:
        return self.bin_s * self.bins

    def add(self, it: float) -> None:
        if it >= self.range_s:
            self.oob += 1
            if self.oob_forecast is None:
                self.oob_forecast = it
            else:
                self.oob_forecast += self.smoothing * (it - self.oob_forecast)
            return
        i = int(it // self.bin_s)
        c = self.counts[i]
        self.counts[i] = c + 1
        self.sumsq += 2 * c + 1  # keeps the sum of squared counts for cv() in O(1)
        self.total += 1

    def oob_share(self) -> float:
        seen = self.total + self.oob
        return self.oob / seen if seen else 0.0

    def cv(self) -> float:
        """Coefficient of variation of the bin counts (0 when empty)."""
        if self.total == 0:
            return 0.0
        mean = self.total / self.bins
        var = max(0.0, self.sumsq / self.bins - mean * mean)
        return math.sqrt(var) / mean

    def percentile_bin(self, q: float) -> int:
        """Index of the bin holding the ``q``-th percentile (0-100) of the in-range samples."""
        if self.total == 0:
            raise ValueError("empty histogram")
        need = max(1, math.ceil(self.total * q / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= need:
                return i
        return self.bins - 1

    def head_s(self, q: float) -> float:
        """Lower edge of the bin of the ``q``-th percentile, in seconds."""
        return self.percentile_bin(q) * self.bin_s

    def tail_s(self, q: float) -> float:
        """Upper edge of the bin of the ``q``-th percentile, in seconds."""
        return (self.percentile_bin(q) + 1) * self.bin_s
