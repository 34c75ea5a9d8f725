"""faasbox's keep-alive policy: per-concurrency-level idle-time histograms, priced in memory.

It keeps the idea of the hybrid histogram policy (learn when a function is needed again from
its idle times) and adds four things:

1. **Levels.** An instance that goes idle while ``k - 1`` invocations of its function are still
   running is the *level-k* instance: it is needed again when concurrency next reaches ``k``.
   Each level has its own histogram of *re-need gaps* (time from concurrency dropping below
   ``k`` to reaching ``k`` again), so the 20th instance of a burst is not kept as if it were
   the first. Level 1 is the function's idle time, as in the hybrid policy. This assumes the
   platform reuses the most recently used idle instance first (the simulator does).
2. **A price.** Among candidate windows (release now; keep-alive only; pre-warm at the lower
   edge of the 1st/5th/10th/25th percentile bin minus ``margin``) crossed with every keep-until
   edge, the policy picks the one with the least expected cost over the histogram::

       cost = V_f * P(next need falls outside the window) + MB_f * E[idle loaded seconds]

   ``V_f`` is what one avoided cold start of function ``f`` is worth in MB·s:
   ``cold_value_mb_s * max(calls_per_hour_f, min_rate_per_h) ** -fairness``. With
   ``fairness`` 0 every cold start is worth the same (minimises total cold starts); with 1 a
   cold start is worth its share of the function's cold-start percentage (minimises the mean
   per-function cold-start %); the default 0.5 sits between. Large instances therefore get
   tighter windows, and rarely called functions wider ones.
3. **Periods.** When the last ``period_min`` gaps of a level agree within ``period_tol_s`` (a
   timer), the instance is released and pre-warmed ``period_lead_s`` before the earliest of
   them and kept until ``period_lead_s`` after the latest: tighter than 1-minute bins allow.
4. **Known fires.** ``set_schedule(fn, next_fire)`` tells the policy when a cron trigger fires
   next; the level-1 instance is then always loaded over ``[fire - lead, fire + lead]``.

Without enough history (fewer than ``min_samples`` gaps at the level and in the function's
pooled histogram) the policy keeps the instance for the ski-rental break-even ``V_f / MB_f``
(at most ``range_s``), which costs at most twice the best choice made in hindsight; a level
never needed again so far is kept at most ``new_level_cap_s``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from faasbox.autoscaler.base import Windows, prewarm_plan
from faasbox.autoscaler.histogram import IdleHistogram

NextFire = Callable[[float], float | None]


@dataclass
class _Level:
    hist: IdleHistogram
    recent: deque[float]
    vacated_at: float | None = None
    cached: Windows | None = None
    cached_from: IdleHistogram | None = None
    cached_n: int = -1
    cached_value: float = 0.0


@dataclass
class _Function:
    pooled: IdleHistogram
    inflight: int = 0
    first: float | None = None
    last: float = 0.0
    decayed_calls: float = 0.0
    levels: list[_Level] = field(default_factory=list)


class FaasboxPolicy:
    """See the module docstring. Pure: every decision takes ``now``; state is per function.

    The policy counts invocations in flight from its own calls, so the caller must call
    :meth:`windows` once per finished invocation (one instance serving one at a time).
    """

    name = "faasbox"

    def __init__(
        self,
        bin_s: float = 60.0,
        range_s: float = 4 * 3600.0,
        margin: float = 0.10,
        min_samples: int = 10,
        cold_value_mb_s: float = 3.0e7,
        fairness: float = 0.5,
        min_rate_per_h: float = 1.0 / 24,
        rate_window_s: float = 24 * 3600.0,
        rate_floor_s: float = 3600.0,
        new_level_cap_s: float = 3600.0,
        period_min: int = 4,
        period_tol_s: float = 90.0,
        period_lead_s: float = 10.0,
        schedule_lead_s: float = 5.0,
        cold_start_s: float = 0.5,
        default_memory_mb: float = 128.0,
        max_levels: int = 1024,
        recompute_growth: float = 0.1,
    ) -> None:
        if bin_s <= 0 or range_s < bin_s:
            raise ValueError("need 0 < bin_s <= range_s")
        self.bin_s = bin_s
        self.bins = max(1, round(range_s / bin_s))
        self.margin = margin
        self.min_samples = int(min_samples)
        self.cold_value_mb_s = cold_value_mb_s
        self.fairness = fairness
        self.min_rate_per_h = min_rate_per_h
        self.rate_window_s = rate_window_s
        self.rate_floor_s = rate_floor_s
        self.new_level_cap_s = new_level_cap_s
        self.period_min = int(period_min)
        self.period_tol_s = period_tol_s
        self.period_lead_s = period_lead_s
        self.schedule_lead_s = schedule_lead_s
        self.cold_start_s = cold_start_s
        self.default_memory_mb = default_memory_mb
        self.max_levels = int(max_levels)
        self.recompute_growth = recompute_growth
        self._heads = (1.0, 5.0, 10.0, 25.0)
        self._fns: dict[str, _Function] = {}
        self._memory_mb: dict[str, float] = {}
        self._schedules: dict[str, NextFire] = {}

    @property
    def range_s(self) -> float:
        return self.bin_s * self.bins

    # -- what the platform tells the policy ---------------------------------------------------
    def set_memory(self, fn: str, mb: float) -> None:
        """The memory of one instance of ``fn`` (MB); unknown functions use the default."""
        self._memory_mb[fn] = float(mb)

    def set_schedule(self, fn: str, next_fire: NextFire | None) -> None:
        """``next_fire(now)`` gives the next known fire time after ``now`` (or None)."""
        if next_fire is None:
            self._schedules.pop(fn, None)
        else:
            self._schedules[fn] = next_fire

    # -- the KeepAlivePolicy protocol ----------------------------------------------------------
    def on_invocation(self, fn: str, now: float) -> None:
        st = self._function(fn)
        if st.first is None:
            st.first = st.last = now
        st.decayed_calls = st.decayed_calls * math.exp((st.last - now) / self.rate_window_s) + 1
        st.last = now
        st.inflight += 1
        lv = self._level(st, st.inflight)
        if lv.vacated_at is not None:
            gap = max(0.0, now - lv.vacated_at)
            lv.hist.add(gap)
            lv.recent.append(gap)
            st.pooled.add(gap)
            lv.vacated_at = None

    def windows(self, fn: str, now: float) -> Windows:
        st = self._function(fn)
        k = max(1, st.inflight)
        st.inflight = max(0, st.inflight - 1)
        lv = self._level(st, k)
        lv.vacated_at = now
        mb = self._memory_mb.get(fn, self.default_memory_mb)
        value = self._value(st, now)
        w = self._learned(st, lv, k, value, mb)
        next_fire = self._schedules.get(fn)
        if k == 1 and next_fire is not None:
            fire = next_fire(now)
            if fire is not None and now <= fire <= now + self.range_s:
                w = self._with_fire(w, fire - now, value, mb)
        return w

    # -- internals -----------------------------------------------------------------------------
    def _function(self, fn: str) -> _Function:
        st = self._fns.get(fn)
        if st is None:
            st = self._fns[fn] = _Function(self._histogram())
        return st

    def _histogram(self) -> IdleHistogram:
        return IdleHistogram(bin_s=self.bin_s, bins=self.bins)

    def _level(self, st: _Function, k: int) -> _Level:
        k = min(k, self.max_levels)
        while len(st.levels) < k:
            st.levels.append(_Level(self._histogram(), deque(maxlen=self.period_min)))
        return st.levels[k - 1]

    def cold_value(self, fn: str, now: float) -> float:
        """What one avoided cold start of ``fn`` is worth now, in MB·s of idle memory."""
        return self._value(self._function(fn), now)

    def _value(self, st: _Function, now: float) -> float:
        first = st.first if st.first is not None else now
        span = min(self.rate_window_s, max(now - first, self.rate_floor_s))
        calls = st.decayed_calls * math.exp((st.last - now) / self.rate_window_s)
        per_h = max(calls * 3600.0 / span, self.min_rate_per_h)
        return float(self.cold_value_mb_s * per_h**-self.fairness)

    def _learned(self, st: _Function, lv: _Level, k: int, value: float, mb: float) -> Windows:
        periodic = self._periodic(lv, value, mb)
        if periodic is not None:
            return periodic
        own = lv.hist.total + lv.hist.oob
        if k > 1 and own == 0:
            return Windows(0.0, min(self.new_level_cap_s, value / mb))
        hist = lv.hist if own >= self.min_samples else st.pooled
        n = hist.total + hist.oob
        if n < self.min_samples:
            return Windows(0.0, min(self.range_s, value / mb))
        cached = lv.cached
        if (
            cached is not None
            and lv.cached_from is hist
            and n < lv.cached_n * (1 + self.recompute_growth)
            and abs(value - lv.cached_value) <= self.recompute_growth * lv.cached_value
        ):
            return cached
        w = self._cheapest(hist, value, mb)
        lv.cached, lv.cached_from, lv.cached_n, lv.cached_value = w, hist, n, value
        return w

    def _periodic(self, lv: _Level, value: float, mb: float) -> Windows | None:
        """A tight window when the level's last gaps agree (a timer), if it is worth it."""
        if len(lv.recent) < self.period_min:
            return None
        lo, hi = min(lv.recent), max(lv.recent)
        if hi - lo > self.period_tol_s or not 4 * self.period_tol_s <= lo < self.range_s:
            return None
        start = lo - self.period_lead_s
        end = hi + self.period_lead_s
        if (end - start) * mb >= value:
            return None
        return Windows(start, end - start)

    def _cheapest(self, hist: IdleHistogram, value: float, mb: float) -> Windows:
        """The candidate window of least expected cost over ``hist`` (see the module doc).

        An idle time is taken at its bin's midpoint; out-of-range ones count as misses. The cost
        is piecewise linear in the keep-until point ``b``, so only upper edges of non-empty bins
        are candidates.
        """
        n = hist.total + hist.oob
        width = hist.bin_s
        nonempty = [(i, c) for i, c in enumerate(hist.counts) if c]
        best_cost = value  # release at once: the next need is a cold start
        best = Windows(0.0, 0.0)
        starts = {0} | {hist.percentile_bin(q) for q in self._heads if hist.total}
        for ia in sorted(starts):
            a = ia * width * (1 - self.margin)
            hits = 0
            g_sum = 0.0  # summed idle times (bin midpoints) of the hits
            below_b = sum(c for i, c in nonempty if i < ia)
            for ib, c in nonempty:
                if ib < ia:
                    continue
                hits += c
                below_b += c
                g_sum += c * (ib + 0.5) * width
                b = (ib + 1) * width
                idle = g_sum - hits * a + (n - below_b) * (b - a)
                cost = (value * (n - hits) + mb * idle) / n
                if cost < best_cost:
                    best_cost = cost
                    best = Windows(a, b * (1 + self.margin) - a)
        return best

    def _with_fire(self, w: Windows, until_fire: float, value: float, mb: float) -> Windows:
        """``w`` changed so that an instance is loaded around a fire ``until_fire`` from now.

        The learned window is kept and stretched to the fire when the idle time that bridges
        the two costs less than a cold start is worth; otherwise only the fire is covered.
        """
        start_at, hold = prewarm_plan(until_fire, self.cold_start_s, self.schedule_lead_s)
        start = max(0.0, start_at)
        end = start_at + hold
        w_end = w.prewarm_s + w.keepalive_s
        if w.keepalive_s > 0 and w.prewarm_s <= start and (start - w_end) * mb < value:
            return Windows(w.prewarm_s, max(w_end, end) - w.prewarm_s)
        return Windows(start, end - start)
