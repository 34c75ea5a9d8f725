"""Keep-alive and pre-warm policies, driven by explicit ``now`` values."""

from __future__ import annotations

import math
import random

import pytest

from faasbox.autoscaler import (
    DEFAULT_POLICY,
    POLICIES,
    FaasboxPolicy,
    FixedKeepAlive,
    HybridHistogramPolicy,
    KeepAlivePolicy,
    Windows,
    make_policy,
    prewarm_plan,
)
from faasbox.autoscaler.gaps import cheapest, smoothed

MIN = 60.0


def regular(policy: KeepAlivePolicy, gap_s: float, times: int, fn: str = "f") -> float:
    """Invoke ``fn`` every ``gap_s`` (zero-length executions); return the last idle time."""
    t = 0.0
    for _ in range(times):
        policy.on_invocation(fn, t)
        policy.windows(fn, t)
        t += gap_s
    return t - gap_s


def test_registry_and_default() -> None:
    assert set(POLICIES) == {"fixed", "hybrid", "faasbox"}
    assert DEFAULT_POLICY == "faasbox"
    assert isinstance(make_policy("hybrid"), HybridHistogramPolicy)
    assert make_policy("fixed", ttl_s=5).windows("f", 0) == Windows(0.0, 5.0)
    with pytest.raises(ValueError, match="unknown keep-alive policy"):
        make_policy("lru")


@pytest.mark.parametrize("ttl", [0.0, 600.0, math.inf])
def test_fixed_ttl(ttl: float) -> None:
    policy = FixedKeepAlive(ttl)
    policy.on_invocation("f", 0)
    assert policy.windows("f", 1) == Windows(prewarm_s=0.0, keepalive_s=ttl)
    assert FixedKeepAlive().windows("f", 0).keepalive_s == 600.0
    with pytest.raises(ValueError):
        FixedKeepAlive(-1)


def test_hybrid_regular_arrivals_prewarm_before_and_cover_after() -> None:
    policy = HybridHistogramPolicy()
    last_idle = regular(policy, 30 * MIN, 20)
    w = policy.windows("f", last_idle)
    assert w.prewarm_s == pytest.approx(27 * MIN)  # 5th percentile (30 min) - 10 %
    assert w.prewarm_s + w.keepalive_s >= 33 * MIN  # 99th percentile + 10 %, from the idle
    assert w.prewarm_s + w.keepalive_s <= 35 * MIN


def test_hybrid_without_enough_samples_keeps_alive_for_the_range() -> None:
    policy = HybridHistogramPolicy()
    regular(policy, 30 * MIN, 3)
    assert policy.windows("f", 3 * 30 * MIN) == Windows(0.0, 4 * 3600.0)


def test_hybrid_flat_histogram_is_not_representative() -> None:
    policy = HybridHistogramPolicy()
    t = 0.0
    for i in range(200):  # idle times spread over every bin of the 4 h range
        policy.windows("f", t)
        t += (i % 240) * MIN + 1
        policy.on_invocation("f", t)
    assert policy.histogram("f").cv() < 2
    assert policy.windows("f", t) == Windows(0.0, 4 * 3600.0)


def test_hybrid_idle_times_out_of_range_use_the_forecast() -> None:
    policy = HybridHistogramPolicy()
    regular(policy, 5 * 3600.0, 6)
    hist = policy.histogram("f")
    assert hist.oob == 5 and hist.oob_forecast == pytest.approx(5 * 3600.0)
    w = policy.windows("f", 30 * 3600.0)
    assert w.prewarm_s == pytest.approx(0.85 * 5 * 3600.0)
    assert w.keepalive_s == pytest.approx(0.30 * 5 * 3600.0)


def test_hybrid_forecast_follows_changing_idle_times() -> None:
    policy = HybridHistogramPolicy()
    regular(policy, 5 * 3600.0, 4)
    t = 3 * 5 * 3600.0
    for _ in range(3):
        t += 8 * 3600.0
        policy.on_invocation("f", t)
        policy.windows("f", t)
    forecast = policy.histogram("f").oob_forecast
    assert forecast is not None and 5 * 3600.0 < forecast < 8 * 3600.0


def test_hybrid_arrival_during_busy_period_is_not_an_idle_time() -> None:
    policy = HybridHistogramPolicy()
    policy.on_invocation("f", 0)
    policy.on_invocation("f", 10)  # overlaps the first
    policy.windows("f", 20)
    policy.on_invocation("f", 80)
    assert policy.histogram("f").total == 1


def test_prewarm_plan() -> None:
    start, hold = prewarm_plan(next_fire=1000.0, cold_start_s=0.5, lead_s=5.0)
    assert start == pytest.approx(994.5) and hold == pytest.approx(10.5)
    assert start + 0.5 + 5.0 == pytest.approx(1000.0)  # ready lead_s before the fire
    with pytest.raises(ValueError):
        prewarm_plan(1000.0, -1.0, 5.0)


def test_faasbox_without_history_keeps_larger_instances_shorter() -> None:
    policy = FaasboxPolicy()
    policy.set_memory("small", 128)
    policy.set_memory("large", 4096)
    for fn in ("small", "large"):
        policy.on_invocation(fn, 0)
    small = policy.windows("small", 1)
    large = policy.windows("large", 1)
    assert small.prewarm_s == large.prewarm_s == 0.0
    assert large.keepalive_s < small.keepalive_s <= policy.range_s
    # ski-rental break-even: the memory kept equals what a cold start is worth
    assert large.keepalive_s * 4096 == pytest.approx(policy.cold_value("large", 1))


def test_faasbox_without_history_keeps_a_bursts_higher_levels_shorter() -> None:
    """A first burst of 4: the instance that goes idle while 3 calls still run (level 4) is
    kept half as long as the last one (level 1), the break-even divided by sqrt(4)."""
    policy = FaasboxPolicy()
    policy.set_memory("f", 4096)
    for _ in range(4):
        policy.on_invocation("f", 0)
    fourth, third, second, first = (policy.windows("f", 1) for _ in range(4))
    assert first.keepalive_s * 4096 == pytest.approx(policy.cold_value("f", 1))
    assert fourth.keepalive_s == pytest.approx(first.keepalive_s / 2)
    assert fourth.keepalive_s < third.keepalive_s < second.keepalive_s < first.keepalive_s


def test_faasbox_starts_instances_ahead_of_a_rising_burst_worth_their_memory() -> None:
    policy = FaasboxPolicy(burst_ahead=2, ahead_keep_s=60.0, ahead_from=2)
    policy.set_memory("small", 128)
    policy.set_memory("huge", 10_000)
    policy.on_invocation("small", 0)
    for i in range(1000):  # a busy function: a cold start of it is worth less
        policy.on_invocation("huge", i * 0.1)
    assert policy.ahead("small", 0, 1) == ()  # a lone call: no burst yet
    assert policy.ahead("small", 0, 2) == (60.0, 60.0)  # kept at most ahead_keep_s
    # an unused instance never costs more idle memory than a cold start of it is worth
    keep = policy.cold_value("huge", 100) / 10_000
    assert keep < 60.0
    assert policy.ahead("huge", 100, 5) == pytest.approx((keep, keep))
    assert FaasboxPolicy(burst_ahead=0).ahead("small", 0, 9) == ()
    assert len(FaasboxPolicy(burst_ahead=3, max_levels=4).ahead("small", 0, 2)) == 2
    with pytest.raises(ValueError):
        FaasboxPolicy(burst_ahead=-1)


def test_faasbox_rarely_called_functions_are_worth_more() -> None:
    policy = FaasboxPolicy()
    for i in range(100):
        policy.on_invocation("busy", i * 10.0)
    policy.on_invocation("rare", 0)
    assert policy.cold_value("rare", 1000) > 5 * policy.cold_value("busy", 1000)


def test_faasbox_detects_a_timer_and_prewarms_tightly() -> None:
    policy = FaasboxPolicy()
    policy.set_memory("f", 1024)
    last_idle = regular(policy, 30 * MIN, 8)
    w = policy.windows("f", last_idle)
    assert 30 * MIN - 30 <= w.prewarm_s < 30 * MIN
    assert 30 * MIN < w.prewarm_s + w.keepalive_s <= 30 * MIN + 30
    assert w.keepalive_s < HybridHistogramPolicy().margin * 30 * MIN  # tighter than hybrid


def test_faasbox_levels_learn_separately() -> None:
    """Two overlapping invocations every 10 min, the second one only every other time:
    the level-2 instance is needed half as often, so it is not kept like the first."""
    policy = FaasboxPolicy(period_min=100)  # histograms only
    policy.set_memory("f", 2048)
    t = 0.0
    for i in range(40):
        policy.on_invocation("f", t)
        if i % 2 == 0:
            policy.on_invocation("f", t + 1)
            policy.windows("f", t + 5)  # level 2 goes idle
        policy.windows("f", t + 6)  # level 1 goes idle
        t += 10 * MIN
    first = policy.windows("f", t)  # level 1 (nothing else in flight)
    assert first.prewarm_s < 10 * MIN - 6 < first.prewarm_s + first.keepalive_s
    policy.on_invocation("f", t + 1)
    policy.on_invocation("f", t + 2)
    second = policy.windows("f", t + 3)  # level 2: needed again after 20 min, not 10
    assert 10 * MIN < second.prewarm_s < 20 * MIN - 5 < second.prewarm_s + second.keepalive_s


def test_faasbox_prewarms_before_a_known_fire() -> None:
    policy = FaasboxPolicy(cold_value_mb_s=1.0)  # so cheap that without a schedule: release
    policy.set_memory("cron", 2048)
    policy.on_invocation("cron", 10)
    assert policy.windows("cron", 11).keepalive_s < 1.0
    policy.set_schedule("cron", lambda now: (math.floor(now / 3600) + 1) * 3600.0)
    policy.on_invocation("cron", 3600)
    now = 3612.0
    w = policy.windows("cron", now)
    fire = 7200.0
    assert now + w.prewarm_s <= fire - policy.schedule_lead_s - policy.cold_start_s
    assert now + w.prewarm_s + w.keepalive_s >= fire + policy.schedule_lead_s
    assert w.keepalive_s <= 2 * policy.schedule_lead_s + policy.cold_start_s + 1e-9
    policy.set_schedule("cron", None)
    policy.on_invocation("cron", 7200)
    assert policy.windows("cron", 7201).keepalive_s < 1.0


def test_policies_are_pure_per_function() -> None:
    a, b = FaasboxPolicy(), FaasboxPolicy()
    regular(a, 30 * MIN, 8, fn="f")
    regular(b, 30 * MIN, 8, fn="f")
    regular(b, 7 * MIN, 50, fn="other")  # another function does not change f's decision
    assert a.windows("f", 7 * 30 * MIN) == b.windows("f", 7 * 30 * MIN)


def burst_timer(policy: FaasboxPolicy, period_s: float, calls: int, spacing_s: float,
                periods: int, fn: str = "f") -> float:
    """``calls`` 1-s invocations ``spacing_s`` apart every ``period_s``; returns when the
    last one went idle."""
    idle = 0.0
    for i in range(periods):
        for j in range(calls):
            start = i * period_s + j * spacing_s
            policy.on_invocation(fn, start)
            idle = start + 1.0
            policy.windows(fn, idle)
    return idle


def test_faasbox_holds_through_a_burst_then_prewarms_for_the_next() -> None:
    """5 calls 10 s apart every 15 min: after each call the instance is held long enough for
    the next call of the burst, released, and loaded again just before the next burst."""
    policy = FaasboxPolicy()
    policy.set_memory("f", 1024)
    burst_timer(policy, 15 * MIN, 5, 10.0, 12)
    policy.on_invocation("f", 12 * 15 * MIN)
    w = policy.windows("f", 12 * 15 * MIN + 1.0)
    between_bursts = 15 * MIN - 41.0  # from the burst's last call to the next burst
    assert 9.0 <= w.hold_s < 60.0  # the rest of the burst, not the quarter-hour
    assert between_bursts - 60.0 < w.prewarm_s < between_bursts  # shortly before
    assert w.prewarm_s + w.keepalive_s > between_bursts
    assert w.hold_s + w.keepalive_s < 2 * MIN  # loaded 1-2 minutes of 15, not all of it


def test_faasbox_releases_a_bursts_extra_instances_early() -> None:
    """One call a minute, and every 2 h a burst of 8 at once: the level-1 instance is kept
    through the minute, the burst's extra instances are let go well before the next burst."""
    policy = FaasboxPolicy()
    policy.set_memory("f", 1024)
    t = 0.0
    for minute in range(6 * 60):
        t = minute * MIN
        if minute % 120 == 0:
            for _ in range(8):
                policy.on_invocation("f", t)
            extra = [policy.windows("f", t + 5.0) for _ in range(7)]
            policy.windows("f", t + 5.0)
        else:
            policy.on_invocation("f", t)
            first = policy.windows("f", t + 1.0)
    assert first.prewarm_s <= MIN - 1.0 < first.prewarm_s + first.keepalive_s  # next minute
    for w in extra:  # levels 8..2, needed again only 2 h later: not kept for long
        if w.prewarm_s == 0:
            assert w.keepalive_s < 5 * MIN
        else:
            assert w.hold_s < 5 * MIN and w.prewarm_s > 100 * MIN


def brute_cost(edges: tuple[float, ...], counts: list[float], oob: float, value: float,
               mb: float, h: int, a: int, b: int) -> float:
    """Cost per gap of loading [0, edges[h]) + [edges[a], edges[b]), gaps at bin midpoints."""
    bins = len(counts)
    total = 0.0
    for i, c in enumerate([*counts, oob]):
        gap = (edges[i] + edges[i + 1]) / 2 if i < bins else math.inf
        second = a < b and edges[a] <= gap < edges[b]
        idle = min(gap, edges[h])
        if a < b:
            idle += max(0.0, min(gap, edges[b]) - edges[a])
        total += c * ((0.0 if gap < edges[h] or second else value) + mb * idle)
    return total / (sum(counts) + oob)


def test_faasbox_cheapest_is_the_exact_optimum() -> None:
    """The one-pass search equals a brute force over every loaded set [0, h) + [a, b)."""
    rng = random.Random(5)
    edges = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    bins = len(edges) - 1
    for _ in range(200):
        counts = [float(rng.choice([0, 0, 1, 3])) for _ in range(bins)]
        oob = float(rng.choice([0, 1, 2]))
        if not sum(counts) + oob:
            continue
        value, mb = rng.choice([5.0, 50.0, 500.0]), rng.choice([0.5, 1.0, 4.0])
        best = min(brute_cost(edges, counts, oob, value, mb, h, a, b)
                   for h in range(bins + 1) for a in range(h, bins + 1)
                   for b in range(a, bins + 1))
        plan = cheapest(edges, counts, oob, value, mb)
        assert plan.cost == pytest.approx(best)
        assert brute_cost(edges, counts, oob, value, mb, plan.hold, plan.start,
                          plan.end) == pytest.approx(best)


def test_faasbox_smoothing_keeps_every_gap() -> None:
    counts = [0.0] * 20
    counts[0], counts[10], counts[19] = 1.0, 2.0, 3.0
    out, oob = smoothed(counts, 1.0, 6)
    assert sum(out) + oob == pytest.approx(7.0)
    assert out[10] < 2.0 and out[8] > 0 and oob > 1.0  # spread, and past the end: out of range
    assert smoothed(counts, 1.0, 0) == (counts, 1.0)


def test_faasbox_counts_a_level_never_needed_again() -> None:
    policy = FaasboxPolicy()
    policy.on_invocation("f", 0.0)
    policy.on_invocation("f", 0.0)
    policy.windows("f", 1.0)
    policy.windows("f", 1.0)
    for i in range(1, 30):  # only level 1 is needed again, for 5 h
        policy.on_invocation("f", i * 600.0)
        policy.windows("f", i * 600.0 + 1.0)
    level2 = policy._fns["f"].levels[1].hist
    assert level2.oob == 1 and level2.total == 0  # counted once, as out of range


def test_faasbox_prewarms_a_timers_fan_out_from_its_first_gaps() -> None:
    """14 overlapping calls of 90 s every hour: from the second hour's release on, every
    level's pre-warm covers the next hour, long before ``period_min`` gaps make a timer
    (a kernel as wide as for scattered gaps spread these few over hours instead)."""
    policy = FaasboxPolicy()
    policy.set_memory("f", 3000)
    for hour in range(3):
        start = hour * 3600.0
        for i in range(14):
            policy.on_invocation("f", start + 4.0 * i)
        windows = [policy.windows("f", start + 4.0 * i + 90.0) for i in range(14)]
    next_need = 3600.0 - 90.0  # from a release to the same level's call an hour on
    for w in windows:
        assert w.prewarm_s - 60.0 <= next_need < w.prewarm_s + w.keepalive_s
        assert w.prewarm_s > 30 * MIN  # released in between, not kept
    assert max(len(lv.long_gaps) for lv in policy._fns["f"].levels) < policy.period_min
