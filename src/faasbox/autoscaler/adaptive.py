"""faasbox's keep-alive policy: per-concurrency-level gap histograms, priced in memory.

It keeps the idea of the hybrid histogram policy (learn when a function is needed again from
the gaps it leaves) and changes what is learned and what is decided:

1. **Levels.** An instance that goes idle while ``k - 1`` invocations of its function are still
   running is the *level-k* instance: it is needed again when concurrency next reaches ``k``.
   Each level has its own histogram of *re-need gaps* (time from concurrency dropping below
   ``k`` to reaching ``k`` again), so the 20th instance of a burst is not kept as if it were
   the first. Level 1 is the function's idle time, as in the hybrid policy. This assumes the
   platform reuses the most recently used idle instance first (the simulator does).
2. **Two windows, chosen exactly.** An idle instance may be kept for the rest of a burst
   (``hold``), released, and loaded again just before the predicted next need (``[start,
   end)``): :class:`~faasbox.autoscaler.base.Windows` with ``hold_s``. Among all such loaded
   sets ``[0, hold) + [start, end)`` on the histogram's bin edges the policy takes the one of
   least expected cost, found exactly in one pass (:func:`cheapest`)::

       cost = V_f * P(the next need falls outside the loaded set) + MB_f * E[idle loaded s]

   Bins are log-spaced (1 s, then 10 % wider each, to ``range_s`` = 4 h): fine for the gaps
   inside a burst, relative for the long ones. A release shorter than ``min_release_s`` is
   not worth a restart and is kept instead.
3. **Little data, wide kernel.** The histogram is smoothed by a triangular kernel of about
   ``smooth_bins / sqrt(n)`` bins each side (``n`` gaps), so that a few gaps do not leave
   holes the next gap falls into, while a well-known level gets sharp windows. Never wider,
   though, than the gaps' own spread calls for (``spread_factor * sd * n ** -0.2`` bins, at
   least 2, with ``sd`` the standard deviation of their bins; 2.6 is Silverman's rule of
   thumb for a triangular kernel): gaps that agree (a timer's fan-out, each of its levels
   seeing the same hour) give a window around them from the first few, where a kernel as
   wide as for scattered gaps spread them over hours and loaded no instance for them. A young
   level's own gaps are blended with a prior worth ``prior_samples`` gaps: the gaps the
   function's levels showed while they were young themselves (so a burst's new levels learn
   from the previous bursts' new levels, not from level 1). A level vacated longer than
   ``range_s`` counts as one out-of-range gap (else levels never needed again would never be
   counted).
4. **A price.** ``V_f`` is what one avoided cold start of function ``f`` is worth in MB·s:
   ``cold_value_mb_s * max(calls_per_hour_f, min_rate_per_h) ** -fairness``. With
   ``fairness`` 0 every cold start is worth the same (minimises total cold starts); with 1 a
   cold start is worth its share of the function's cold-start percentage (minimises the mean
   per-function cold-start %); the default 0.75 leans to the per-function figures. Large
   instances therefore get tighter windows, and rarely called functions wider ones.
5. **Periods.** When the last ``period_min`` long gaps (≥ 6 min) of a level agree within
   ``period_tol_s`` (a timer), the second window is ``period_lead_s`` before the earliest of
   them to ``period_lead_s`` after the latest: tighter than bins allow. The hold still covers
   the burst around each fire.
6. **Known fires.** ``set_schedule(fn, next_fire)`` tells the policy when a cron trigger fires
   next; the level-1 instance is then always loaded over ``[fire - lead, fire + lead]``.

7. **Bursts.** A call that finds no idle instance cold-starts one, and with it ``burst_ahead``
   more (:meth:`FaasboxPolicy.ahead`): when a function's concurrency rises past what it had
   loaded, the next calls of the burst find these ready instead of each starting its own. An
   instance started ahead that no call takes is kept ``min(ahead_keep_s, V_f / MB_f)``: it
   never wastes more memory than one cold start of the function is worth. A call that takes
   one still starting counts as a cold start and starts its own ``burst_ahead`` more, so a
   steep burst doubles or triples its instances at each step, as a panicking autoscaler does.

Without history (fewer than ``min_samples`` gaps at the level and in the prior) the policy
keeps the level-1 instance for the ski-rental break-even ``V_f / MB_f`` (at most ``range_s``),
which costs at most twice the best choice made in hindsight, and the level-k instance for
``V_f / MB_f / sqrt(k)`` (at most ``new_level_cap_s``): the higher levels of a first burst are
needed again less often than its first. Decisions are cached per level and recomputed when
its gaps or the prior grow by ``recompute_growth`` or ``V_f`` moves as much.

Everything is online: a decision uses only the calls seen so far.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from faasbox.autoscaler.base import Windows, prewarm_plan
from faasbox.autoscaler.gaps import GapHistogram, cheapest, gap_edges, smoothed, spread

NextFire = Callable[[float], float | None]


def _capped(w: Windows, cap: float) -> Windows:
    """``w`` with nothing loaded beyond ``cap`` seconds after the instance went idle."""
    if w.prewarm_s <= 0:
        return Windows(0.0, min(w.keepalive_s, cap))
    if w.prewarm_s >= cap:
        return Windows(0.0, min(w.hold_s, cap))
    return Windows(w.prewarm_s, min(w.prewarm_s + w.keepalive_s, cap) - w.prewarm_s, w.hold_s)


@dataclass
class _Level:
    hist: GapHistogram
    long_gaps: deque[float]
    vacated_at: float | None = None
    cached: Windows | None = None
    cached_adds: int = -1
    cached_pooled: int = -1
    cached_value: float = 0.0


@dataclass
class _Function:
    pooled: GapHistogram
    inflight: int = 0
    first: float | None = None
    last: float = 0.0
    decayed_calls: float = 0.0
    swept_at: float = 0.0
    levels: list[_Level] = field(default_factory=list)


class FaasboxPolicy:
    """See the module docstring. Pure: every decision takes ``now``; state is per function.

    The policy counts invocations in flight from its own calls, so the caller must call
    :meth:`windows` once per finished invocation (one instance serving one at a time).
    """

    name = "faasbox"

    def __init__(
        self,
        bin_ratio: float = 1.1,
        range_s: float = 4 * 3600.0,
        smooth_bins: int = 32,
        spread_factor: float = 2.6,
        prior_samples: float = 3.0,
        min_release_s: float = 30.0,
        margin: float = 0.0,
        min_samples: int = 10,
        cold_value_mb_s: float = 2.0e7,
        fairness: float = 0.75,
        min_rate_per_h: float = 1.0 / 24,
        rate_window_s: float = 24 * 3600.0,
        rate_floor_s: float = 3600.0,
        new_level_cap_s: float = 4 * 3600.0,
        period_min: int = 4,
        period_tol_s: float = 90.0,
        period_lead_s: float = 10.0,
        schedule_lead_s: float = 5.0,
        cold_start_s: float = 0.5,
        default_memory_mb: float = 128.0,
        burst_ahead: int = 2,
        ahead_keep_s: float = 60.0,
        ahead_from: int = 1,
        max_levels: int = 1024,
        recompute_growth: float = 0.1,
        sweep_s: float = 600.0,
    ) -> None:
        if bin_ratio <= 1 or range_s <= 1:
            raise ValueError("need bin_ratio > 1 and range_s > 1")
        self.edges = gap_edges(bin_ratio, range_s)
        self.smooth_bins = int(smooth_bins)
        self.spread_factor = spread_factor
        self.prior_samples = prior_samples
        self.min_release_s = min_release_s
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
        if burst_ahead < 0 or ahead_keep_s < 0:
            raise ValueError("need burst_ahead >= 0 and ahead_keep_s >= 0")
        self.burst_ahead = int(burst_ahead)
        self.ahead_keep_s = ahead_keep_s
        self.ahead_from = int(ahead_from)
        self.max_levels = int(max_levels)
        self.recompute_growth = recompute_growth
        self.sweep_s = sweep_s
        self._fns: dict[str, _Function] = {}
        self._memory_mb: dict[str, float] = {}
        self._schedules: dict[str, NextFire] = {}

    @property
    def range_s(self) -> float:
        return self.edges[-1]

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
            if lv.hist.samples < self.prior_samples:
                st.pooled.add(gap)
            lv.hist.add(gap)
            if gap >= 4 * self.period_tol_s:
                lv.long_gaps.append(gap)
            lv.vacated_at = None

    def windows(self, fn: str, now: float) -> Windows:
        return self.released(fn, now)()

    def ahead(self, fn: str, now: float, in_flight: int) -> tuple[float, ...]:
        """A call of ``fn`` cold-starts at ``now`` with ``in_flight`` calls of ``fn`` running or
        starting, itself included: the keep-alive of each instance to start beside it, for the
        rest of a rising burst (``burst_ahead`` of them from ``ahead_from`` calls in flight,
        each kept at most what a cold start is worth in idle memory)."""
        st = self._function(fn)
        if self.burst_ahead <= 0 or not self.ahead_from <= in_flight < self.max_levels:
            return ()
        mb = self._memory_mb.get(fn, self.default_memory_mb)
        keep = min(self.ahead_keep_s, self._value(st, now) / mb)
        if keep <= 0:
            return ()
        return (keep,) * min(self.burst_ahead, self.max_levels - in_flight)

    def released(self, fn: str, now: float) -> Callable[[], Windows]:
        """What :meth:`windows` does, in two steps: learn the release now; the function
        returned computes the windows. Call it in the same step (nothing else may reach the
        policy in between), or not at all: an instance that took its next call needs none."""
        st = self._function(fn)
        k = max(1, st.inflight)
        st.inflight = max(0, st.inflight - 1)
        lv = self._level(st, k)
        lv.vacated_at = now
        if now - st.swept_at >= self.sweep_s:
            self._censor(st, now)

        def windows() -> Windows:
            mb = self._memory_mb.get(fn, self.default_memory_mb)
            value = self._value(st, now)
            w = self._learned(st, lv, k, value, mb)
            next_fire = self._schedules.get(fn)
            if k == 1 and next_fire is not None:
                fire = next_fire(now)
                if fire is not None and now <= fire <= now + self.range_s:
                    w = self._with_fire(w, fire - now, value, mb)
            return w

        return windows

    # -- internals -----------------------------------------------------------------------------
    def _function(self, fn: str) -> _Function:
        st = self._fns.get(fn)
        if st is None:
            st = self._fns[fn] = _Function(self._histogram())
        return st

    def _histogram(self) -> GapHistogram:
        return GapHistogram(self.edges)

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

    def _censor(self, st: _Function, now: float) -> None:
        """Levels vacated more than ``range_s`` ago count as out-of-range gaps now (else a
        level never needed again would never be counted), once."""
        st.swept_at = now
        horizon = now - self.range_s
        for lv in st.levels:
            if lv.vacated_at is not None and lv.vacated_at <= horizon:
                if lv.hist.samples < self.prior_samples:
                    st.pooled.add(self.range_s)
                lv.hist.add(self.range_s)
                lv.vacated_at = None

    def _learned(self, st: _Function, lv: _Level, k: int, value: float, mb: float) -> Windows:
        own, pooled = lv.hist, st.pooled
        if own.samples < self.min_samples and pooled.samples < self.min_samples:
            periodic = self._periodic(lv, value, mb)
            if periodic is not None:
                return self._windows(0.0, *periodic)
            cap = self.range_s if k == 1 else self.new_level_cap_s
            # a burst's higher levels are needed again less often than its first
            return Windows(0.0, min(cap, value / mb / math.sqrt(k)))
        cached = lv.cached
        growth = self.recompute_growth
        if (
            cached is not None
            and own.samples - lv.cached_adds < growth * max(1.0, own.samples)
            and pooled.samples - lv.cached_pooled < growth * pooled.samples
            and abs(value - lv.cached_value) <= growth * lv.cached_value
        ):
            return cached
        w = self._decide(own, pooled, lv, value, mb)
        if k > 1 and own.samples == 0:
            w = _capped(w, self.new_level_cap_s)
        lv.cached, lv.cached_adds, lv.cached_pooled, lv.cached_value = (
            w, own.samples, pooled.samples, value)
        return w

    def _decide(
        self, own: GapHistogram, pooled: GapHistogram, lv: _Level, value: float, mb: float
    ) -> Windows:
        """The cheapest window over the level's gaps, with the function's pooled gaps as a
        prior worth ``prior_samples`` gaps."""
        counts, oob = own.scaled(own.samples)
        prior, prior_oob = pooled.scaled(self.prior_samples)
        counts = [a + b for a, b in zip(counts, prior, strict=True)]
        n = own.samples + self.prior_samples
        half = round(self.smooth_bins * n ** -0.5)  # a kernel that narrows as gaps accrue
        if self.spread_factor > 0:
            half = min(half, max(2, round(self.spread_factor * spread(counts) * n ** -0.2)))
        counts, oob = smoothed(counts, oob + prior_oob, half)
        edges = self.edges
        plan = cheapest(edges, counts, oob, value, mb)
        hold = edges[plan.hold]
        start, end = edges[plan.start], edges[plan.end]
        if plan.start >= plan.end:  # no second window
            start = end = math.inf
        elif start - hold < self.min_release_s:  # one window from now on
            hold, start, end = end, math.inf, math.inf
        periodic = self._periodic(lv, value, mb)
        if periodic is not None and hold < periodic[0]:
            start, end = periodic
        return self._windows(hold, start, end)

    def _windows(self, hold: float, start: float, end: float) -> Windows:
        """Windows for the loaded set ``[0, hold) + [start, end)`` (``start`` inf: none),
        with the margins; a release shorter than ``min_release_s`` is not worth it."""
        if math.isinf(start):
            return Windows(0.0, hold * (1 + self.margin))
        start *= 1 - self.margin
        end *= 1 + self.margin
        if hold > 0:
            hold *= 1 + self.margin
        if start - hold < self.min_release_s:
            return Windows(0.0, max(hold, end))
        return Windows(start, end - start, hold)

    def _periodic(self, lv: _Level, value: float, mb: float) -> tuple[float, float] | None:
        """A tight window when the level's last long gaps agree (a timer), if it is worth it."""
        gaps = lv.long_gaps
        if len(gaps) < self.period_min:
            return None
        lo, hi = min(gaps), max(gaps)
        if hi - lo > self.period_tol_s or hi >= self.range_s:
            return None
        start = lo - self.period_lead_s
        end = hi + self.period_lead_s
        if (end - start) * mb >= value:
            return None
        return start, end

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
            return Windows(w.prewarm_s, max(w_end, end) - w.prewarm_s, w.hold_s)
        kept = w.hold_s if w.prewarm_s > 0 else w.keepalive_s
        if kept >= start:
            return Windows(0.0, max(kept, end))
        return Windows(start, end - start, kept)
