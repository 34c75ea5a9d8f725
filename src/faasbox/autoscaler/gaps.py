"""Re-need gaps over log-spaced bins: the histogram the ``faasbox`` policy keeps per
concurrency level, its kernel smoothing, and the exact search for the cheapest loaded set
(:func:`cheapest`). See :mod:`faasbox.autoscaler.adaptive` for how the policy uses them."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass


def gap_edges(ratio: float, range_s: float) -> tuple[float, ...]:
    """Bin edges over ``[0, range_s]``: ``[0, 1 s)``, then each bin ``ratio`` times as wide as
    the one before (relative precision, as the policies' margins are relative)."""
    edges = [0.0, 1.0]
    while edges[-1] < range_s:
        edges.append(min(range_s, edges[-1] * ratio))
    return tuple(edges)


def _box(values: list[float], r: int) -> list[float]:
    """Each value spread evenly over ``2r + 1`` positions; the output is ``2r`` longer and
    position ``k`` of it is position ``k - r`` of the input."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    n = len(values)
    width = 2 * r + 1
    return [(sums[min(k + 1, n)] - sums[max(k - 2 * r, 0)]) / width for k in range(n + 2 * r)]


def spread(counts: list[float]) -> float:
    """The standard deviation of the bin index over ``counts`` (in bins)."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    mean = sum(i * c for i, c in enumerate(counts)) / total
    return math.sqrt(sum(c * (i - mean) ** 2 for i, c in enumerate(counts)) / total)


def smoothed(counts: list[float], oob: float, half: int) -> tuple[list[float], float]:
    """``counts`` spread by a triangular kernel about ``half`` bins each side (two box
    filters); mass beyond the last bin goes to ``oob``, below the first stays in it."""
    r = half // 2
    if r <= 0:
        return counts, oob
    out = _box(_box(counts, r), r)
    bins = len(counts)
    lead = 2 * r
    head = sum(out[: lead + 1])
    body = out[lead + 1 : lead + bins]
    return [head, *body], oob + sum(out[lead + bins :])


class GapHistogram:
    """Counts of gaps over fixed bins (``edges``); gaps at or beyond the last edge are counted
    apart (``oob``)."""

    __slots__ = ("counts", "edges", "oob", "total")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) - 1)
        self.total = 0  # in range
        self.oob = 0

    @property
    def samples(self) -> int:
        return self.total + self.oob

    def scaled(self, samples: float) -> tuple[list[float], float]:
        """Counts and out-of-range count rescaled to sum to ``samples``."""
        n = self.total + self.oob
        if n <= 0:
            return [0.0] * len(self.counts), 0.0
        f = samples / n
        return [c * f for c in self.counts], self.oob * f

    def add(self, gap: float) -> None:
        if gap >= self.edges[-1]:
            self.oob += 1
        else:
            self.counts[bisect_right(self.edges, gap) - 1] += 1
            self.total += 1


@dataclass(frozen=True)
class Plan:
    """A loaded set ``[0, hold) + [start, end)`` as bin indexes, with its cost per gap."""

    hold: int
    start: int
    end: int
    cost: float


def cheapest(
    edges: tuple[float, ...], counts: list[float], oob: float, value: float, mb: float
) -> Plan:
    """The loaded set ``[0, h) + [a, b)`` (bin edges, ``h <= a <= b``) of least expected cost.

    Loading bin ``i`` (edges ``t_i``, ``t_i+1``) changes the cost, summed over the gaps, by
    ``L_i = -value * c_i + mb * (c_i * w_i / 2 + s_i * w_i)``: it turns its ``c_i`` gaps from
    cold starts into hits, and is idle half its width ``w_i`` for them and all of it for the
    ``s_i`` gaps beyond it. With prefix sums ``P`` the cost is ``P[h] + P[b] - P[a]`` (plus a
    cold start for every gap), minimised exactly in one pass from the right.
    """
    bins = len(counts)
    n = sum(counts) + oob
    prefix = [0.0] * (bins + 1)
    seen = 0.0
    p = 0.0
    for i in range(bins):
        c = counts[i]
        seen += c
        w = edges[i + 1] - edges[i]
        p += mb * (c * 0.5 + (n - seen)) * w - value * c
        prefix[i + 1] = p
    # best (a, b) with a >= h, for every h, from the right
    best_b = bins
    best_ab = (0.0, bins, bins)  # (P[b] - P[a], a, b): an empty second window
    best = Plan(0, bins, bins, 0.0)
    for j in range(bins, -1, -1):
        if prefix[j] <= prefix[best_b]:
            best_b = j
        d = prefix[best_b] - prefix[j]
        if d < best_ab[0]:
            best_ab = (d, j, best_b)
        total = prefix[j] + best_ab[0]
        if total < best.cost:
            best = Plan(j, best_ab[1], best_ab[2], total)
    cost = (value * n + best.cost) / n if n else value
    return Plan(best.hold, best.start, best.end, cost)
