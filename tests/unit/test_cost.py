"""The cost models and the waste report on hand-computed values."""

from __future__ import annotations

import pytest

from faasbox.metering.cost import HourUsage, PriceBook, models, reserved_cost, sum_hours
from faasbox.metering.usage import Usage, hour_of, ms_bucket, rss_bucket
from faasbox.metering.waste import FunctionFacts, report, right_size

BOOK = PriceBook()  # AWS Lambda x86: 0.0000166667 per GB-s, 0.20 per 1M requests


def test_pay_per_use_is_gb_s_times_rate_plus_requests() -> None:
    m = models([HourUsage(0, 1000.0, 2_000_000)], 30 * 86400, BOOK)
    # 1000 GB-s x 0.0000166667 = 0.0166667; 2M requests x 0.20 = 0.40
    assert m.pay_per_use == pytest.approx(0.0166667 + 0.40)
    assert m.spot == pytest.approx(m.pay_per_use)  # nothing interruptible
    assert m.cheapest == "pay_per_use"


def test_reserved_pays_when_capacity_is_used_above_break_even() -> None:
    # one hour, 1 GB used all the hour (3600 GB-s), the period is that hour
    hours = [HourUsage(0, 3600.0, 0)]
    m = models(hours, 3600, BOOK)
    fee_per_gb_s = 36.50 / (730 * 3600)  # 0.0000138889
    assert m.reserved_gb == pytest.approx(1.0)
    assert m.reserved == pytest.approx(3600 * fee_per_gb_s)  # 0.05 USD, no overage
    assert m.pay_per_use == pytest.approx(3600 * 0.0000166667)  # 0.06 USD
    assert m.reserved_utilisation == pytest.approx(1.0)
    assert m.break_even == pytest.approx(fee_per_gb_s / 0.0000166667)  # 0.8333
    assert m.cheapest == "reserved"


def test_reserved_capacity_is_the_cheapest_and_overage_is_pay_per_use() -> None:
    # two hours in a 2-hour period: 2 GB in one, 0.5 GB in the other
    hours = [HourUsage(0, 7200.0, 10), HourUsage(3600, 1800.0, 10)]
    fee = 36.50 / (730 * 3600)
    rate = 0.0000166667
    # candidates: 0 GB, 0.5 GB, 2 GB (the hours' averages)
    c0 = 9000 * rate
    c05 = 0.5 * 7200 * fee + (7200 - 1800) * rate
    c2 = 2 * 7200 * fee
    for cap, want in ((0.0, c0), (0.5, c05), (2.0, c2)):
        assert reserved_cost(hours, cap, 7200, BOOK) == pytest.approx(want + 20 / 1e6 * 0.2)
    m = models(hours, 7200, BOOK)
    assert m.reserved == pytest.approx(min(c0, c05, c2) + 20 / 1e6 * 0.2)
    assert m.reserved_gb == 0.5  # c05 = 0.0500 + 0.0900 < c0 = 0.1500 and c2 = 0.2000


def test_spot_discounts_only_interruptible_work() -> None:
    m = models([HourUsage(0, 100.0, 1000, spot_gb_s=60.0)], 86400, BOOK)
    rate = 0.0000166667
    assert m.spot == pytest.approx(40 * rate + 60 * rate * 0.3 + 1000 / 1e6 * 0.2)
    assert m.cheapest == "spot"


def test_a_tenants_hours_add_up_per_hour() -> None:
    got = sum_hours([HourUsage(0, 1.0, 1), HourUsage(0, 2.0, 2, 1.0), HourUsage(3600, 4.0, 4)])
    assert got == [HourUsage(0, 3.0, 3, 1.0), HourUsage(3600, 4.0, 4, 0.0)]


def test_buckets_and_hours() -> None:
    assert hour_of(7199.9) == 3600
    assert rss_bucket(41.2) == 44.0 and rss_bucket(40.0) == 40.0 and rss_bucket(0.1) == 4.0
    assert ms_bucket(3.0) == 5.0 and ms_bucket(1e9) == float("inf")


def test_right_size_is_p99_plus_a_fifth_in_steps_of_64() -> None:
    assert right_size(172.0) == 256  # 206.4 -> 256
    assert right_size(50.0) == 128  # never below 128
    assert right_size(160.0) == 192  # 192.0 exactly


def test_waste_report_by_hand() -> None:
    u = Usage(invocations=100, gb_s=50.0, busy_s=10.0, cpu_s=0.5, loaded_mb_s=1024 * 20,
              idle_mb_s=1024 * 8, held_mb_s=1024 * 3, cold_starts=10, cold_start_ms=2000.0,
              memory_mb=1024)
    for _ in range(99):
        u.hist[("rss", rss_bucket(100.0))] += 1
    u.hist[("rss", rss_bucket(900.0))] += 1  # the one above the p99
    period = 730 * 3600 / 2  # half a month: savings per month double
    rate = 0.0000166667
    found = {f.kind: f for f in report(FunctionFacts("fn", 1024, 1, 1, 60.0), u, period, BOOK)}
    mem = found["memory"]
    assert mem.data["p99_peak_rss_mb"] == 100.0
    assert mem.data["suggested_memory_mb"] == 128  # 120 -> 128
    assert mem.saving_per_month == pytest.approx(50.0 * (1 - 128 / 1024) * rate * 2)
    cpu = found["cpu"]  # 0.05 CPU-s per busy second: concurrency min(8, floor(0.5 / 0.05))
    assert cpu.data["suggested_concurrency"] == 8
    assert cpu.saving_per_month == pytest.approx(20 * (1 - 1 / 8) * rate * 2)
    assert found["keep_alive"].saving_per_month == pytest.approx(5 * rate * 2)
    assert found["min_instances"].saving_per_month == pytest.approx(3 * rate * 2)
    cold = found["cold_start"]
    assert cold.saving_per_month == pytest.approx(2.0 * 1.0 * rate * 2)
    assert "min_instances: 1" in cold.recommendation  # 10 % of calls were cold
    savings = [f.saving_per_month for f in report(FunctionFacts("fn", 1024), u, period, BOOK)]
    assert savings == sorted(savings, reverse=True)


def test_no_memory_finding_when_the_size_fits() -> None:
    u = Usage(invocations=1, gb_s=1.0)
    u.hist[("rss", 100.0)] += 1
    assert not [f for f in report(FunctionFacts("fn", 128), u, 3600, BOOK) if f.kind == "memory"]
