"""The KPA-like autoscaler on virtual time: windows, panic, rate bounds, clamps, zero, backlog."""

from __future__ import annotations

import math
from typing import Any

import pytest

from faasbox.autoscaler import Autoscaler, ScalerConfig
from faasbox.autoscaler.window import BucketedWindow


def feed(scaler: Autoscaler, start: float, end: float, in_flight: float, **kw: Any) -> None:
    """One observation per second in [start, end)."""
    t = start
    while t < end:
        scaler.observe(t, in_flight, **kw)
        t += 1.0


@pytest.mark.parametrize("load", [1.0, 7.0, 10.0, 33.0])
def test_steady_load_gives_load_over_target_utilisation(load: float) -> None:
    scaler = Autoscaler()
    expected = math.ceil(load / (1.0 * 0.7))
    feed(scaler, 0, 60, load)
    d = scaler.decide(60, ready_instances=expected)
    assert (d.desired, d.panic, d.reason) == (expected, False, "stable")


def test_target_concurrency_divides_the_demand() -> None:
    scaler = Autoscaler(ScalerConfig(target_concurrency=10))
    feed(scaler, 0, 60, 70)
    assert scaler.decide(60, ready_instances=10).desired == 10


def test_panic_at_twice_capacity_and_no_scale_down_while_panicking() -> None:
    scaler = Autoscaler()
    feed(scaler, 0, 60, 3)  # 5 instances carry it
    calm = scaler.decide(59.5, ready_instances=5)
    assert (calm.desired, calm.panic) == (5, False)
    feed(scaler, 60, 62, 7)  # 7 / 0.7 = 10 = 2 x capacity of 5
    burst = scaler.decide(61.5, ready_instances=5)
    assert burst.panic and burst.desired == 10
    feed(scaler, 62, 100, 0)  # the burst is over, but the stable window has not passed
    for t in (70.0, 90.0, 100.0):
        d = scaler.decide(t, ready_instances=10)
        assert d.panic and d.desired == 10, t
    feed(scaler, 100, 130, 0)
    out = scaler.decide(122.5, ready_instances=10)  # a stable window after the last threshold
    assert not out.panic and out.desired < 10


def test_panic_can_still_scale_up() -> None:
    scaler = Autoscaler()
    feed(scaler, 0, 2, 14)
    first = scaler.decide(2, ready_instances=1)
    feed(scaler, 2, 4, 70)
    second = scaler.decide(4, ready_instances=first.desired)
    assert first.panic and second.panic and second.desired > first.desired


def test_scale_up_rate_is_bounded_per_decision() -> None:
    scaler = Autoscaler(ScalerConfig(max_scale_up_rate=2.0))
    feed(scaler, 0, 10, 100)
    d = scaler.decide(10, ready_instances=3)
    assert d.desired == 6 and "rate-limited" in d.reason


def test_scale_down_rate_is_bounded_per_decision() -> None:
    scaler = Autoscaler()
    feed(scaler, 0, 60, 1)
    assert scaler.decide(60, ready_instances=40).desired == 20
    assert scaler.decide(62, ready_instances=20).desired == 10
    assert scaler.decide(64, ready_instances=10).desired == 5


def test_max_and_min_instances_clamp() -> None:
    capped = Autoscaler(ScalerConfig(max_instances=5))
    feed(capped, 0, 10, 100)
    d = capped.decide(10, ready_instances=5)
    assert d.desired == 5 and "max_instances" in d.reason
    floor = Autoscaler(ScalerConfig(min_instances=2))
    feed(floor, 0, 100, 0)
    assert floor.decide(100, ready_instances=2).desired == 2


def test_scale_to_zero_only_after_the_grace_period() -> None:
    cfg = ScalerConfig(stable_window_s=10, panic_window_s=2, scale_to_zero_grace_s=30)
    scaler = Autoscaler(cfg)
    feed(scaler, 0, 10, 1)
    feed(scaler, 10, 60, 0)  # last demand at t=9
    held = scaler.decide(25, ready_instances=1)
    assert (held.desired, held.reason) == (1, "scale-to-zero grace")
    assert scaler.decide(38.5, ready_instances=1).desired == 1
    assert scaler.decide(39.5, ready_instances=1).desired == 0


def test_nothing_observed_and_nothing_ready_is_zero() -> None:
    assert Autoscaler().decide(0, ready_instances=0).desired == 0


def test_burst_from_zero_gives_the_full_count_at_once() -> None:
    scaler = Autoscaler()
    feed(scaler, 0, 60, 0)
    scaler.observe(60, 50)
    d = scaler.decide(60, ready_instances=0)
    assert d.panic and d.desired == math.ceil(50 / 0.7)


def test_queue_depth_drives_scale_up() -> None:
    scaler = Autoscaler(ScalerConfig(queue_drain_s=10))
    feed(scaler, 0, 10, 0, queue_depth=100, per_instance_rate=1.0)
    d = scaler.decide(10, ready_instances=10)
    assert d.desired == 10 and "queue" in d.reason  # 100 tasks / (1 task/s x 10 s)
    scaler.observe(11, 0, queue_depth=400)  # the rate stays the last one observed
    assert scaler.decide(11, ready_instances=10).desired == 40


def test_queue_depth_without_a_rate_counts_as_concurrency() -> None:
    scaler = Autoscaler()
    scaler.observe(0, 0, queue_depth=7)
    assert scaler.decide(0, ready_instances=10).desired == 10


def test_latency_above_target_boosts_but_never_lowers() -> None:
    cfg = ScalerConfig(latency_target_ms=100, max_latency_boost=2.0)
    slow = Autoscaler(cfg)
    feed(slow, 0, 60, 7, latency_ms=150)
    d = slow.decide(60, ready_instances=15)
    assert d.desired == 15 and "latency" in d.reason  # 10 x 1.5
    fast = Autoscaler(cfg)
    feed(fast, 0, 60, 7, latency_ms=10)
    assert fast.decide(60, ready_instances=10).desired == 10


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ScalerConfig(target_utilization=0)
    with pytest.raises(ValueError):
        ScalerConfig(min_instances=3, max_instances=2)
    with pytest.raises(ValueError):
        ScalerConfig(panic_window_s=90)


def test_window_is_bounded_and_forgets_old_buckets() -> None:
    w = BucketedWindow(window_s=6, bucket_s=1)
    for i in range(10_000):
        w.record(i * 0.01, 5.0)  # many samples, 100 buckets' worth of time
    assert w.nbuckets == 6 and len(w._sum) == 6
    assert w.average(99.99) == 5.0
    w.record(100.0, 11.0)
    assert w.average(100.0) == pytest.approx((5.0 * 5 + 11.0) / 6)
    assert w.latest(100.0) == 11.0
    assert w.average(200.0) is None and w.latest(200.0) is None
