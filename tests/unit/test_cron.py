"""Cron planning on a virtual clock: fire times, timezones, misfire policies."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from faasbox.clock import VirtualClock
from faasbox.triggers.cron import Schedule, TriggerSpec, fire_event, plan

T0 = dt.datetime(2026, 1, 5, 0, 0, 0, tzinfo=dt.UTC).timestamp()  # a Monday


def spec(**kw: Any) -> TriggerSpec:
    return TriggerSpec(**{"cron": "* * * * *", **kw})


def run(s: TriggerSpec, clock: VirtualClock, until: float, step: float) -> list[float]:
    """Drive ``plan`` like the service does, ticking every ``step`` seconds."""
    fired: list[float] = []
    nxt = plan(s, None, clock.now()).next_fire_at
    while clock.now() < until:
        clock.advance(step)
        p = plan(s, nxt, clock.now())
        fired += p.fires
        nxt = p.next_fire_at
    return fired


def test_every_ten_seconds_fires_exactly_on_the_marks() -> None:
    clock = VirtualClock(T0 + 0.5)
    fired = run(spec(cron="*/10 * * * * *"), clock, T0 + 60, 0.25)
    assert fired == [T0 + s for s in (10, 20, 30, 40, 50, 60)]


def test_five_fields_in_a_timezone_across_dst() -> None:
    s = spec(cron="30 9 * * mon-fri", timezone="Europe/Berlin")
    sched = s.schedule()
    first = sched.after(T0)  # Monday 09:30 CET = 08:30 UTC
    assert first == T0 + 8.5 * 3600
    # 2026-03-30 is the Monday after the switch to CEST: 09:30 is 07:30 UTC
    monday = dt.datetime(2026, 3, 30, tzinfo=dt.UTC).timestamp()
    assert sched.after(monday) == monday + 7.5 * 3600
    # the weekend is skipped: Friday's fire is followed by Monday's
    friday = T0 + 4 * 86400 + 8.5 * 3600
    assert sched.after(friday) == T0 + 7 * 86400 + 8.5 * 3600


def test_aliases_and_upcoming() -> None:
    assert Schedule("@hourly").upcoming(T0, 3) == [T0 + 3600, T0 + 7200, T0 + 10800]
    assert Schedule("@daily", "Asia/Shanghai").after(T0) == T0 + 16 * 3600


@pytest.mark.parametrize("bad, words", [
    ({"cron": "* * *"}, "5 fields"),
    ({"cron": "61 * * * *"}, "not a valid"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "* * * * *", "timezone": "America"}, "unknown time zone"),  # a directory
    ({"cron": "* * * * *", "timezone": "x" * 300}, "unknown time zone"),  # too long a file
    ({"cron": "* * * * *", "misfire": "sometimes"}, "misfire"),
    ({"cron": "* * * * *", "overlap": "maybe"}, "overlap"),
])
def test_bad_specs_say_why(bad: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        TriggerSpec(**bad)


def down_for(s: TriggerSpec, minutes: float) -> tuple[list[float], int]:
    """The server made the fire at T0 + 1 min, then was down; it plans again at restart."""
    nxt = s.schedule().after(T0 + 60)
    p = plan(s, nxt, T0 + 60 + minutes * 60)
    return p.fires, p.missed


def test_misfire_skip() -> None:
    fires, missed = down_for(spec(misfire="skip", misfire_grace_s=10), 5.5)
    assert fires == [] and missed == 5


def test_misfire_fire_once() -> None:
    fires, missed = down_for(spec(misfire="fire_once", misfire_grace_s=10), 5.5)
    assert fires == [T0 + 6 * 60] and missed == 4  # the latest missed one stands for all


def test_misfire_fire_all_bounded_by_max_catchup() -> None:
    fires, missed = down_for(spec(misfire="fire_all", max_catchup=3, misfire_grace_s=10), 5.5)
    assert fires == [T0 + m * 60 for m in (4, 5, 6)] and missed == 2
    fires, missed = down_for(spec(misfire="fire_all", max_catchup=10, misfire_grace_s=10), 5.5)
    assert fires == [T0 + m * 60 for m in (2, 3, 4, 5, 6)] and missed == 0


def test_a_fire_within_the_grace_is_on_time_whatever_the_policy() -> None:
    fires, missed = down_for(spec(misfire="skip", misfire_grace_s=60), 1.5)
    assert fires == [T0 + 120] and missed == 0


def test_disabled_plans_nothing_and_reenabling_starts_from_now() -> None:
    s = spec(enabled=False)
    assert plan(s, T0, T0 + 3600) .fires == []
    assert plan(s, T0, T0 + 3600).next_fire_at is None
    p = plan(spec(), None, T0 + 3600 + 1)
    assert p.fires == [] and p.next_fire_at == T0 + 3660


def test_default_event_describes_the_fire() -> None:
    assert fire_event(spec(), "fn", "nightly", T0) == {
        "trigger": "nightly", "function": "fn", "scheduled_time": "2026-01-05T00:00:00Z"}
    assert fire_event(spec(event={"a": 1}), "fn", "n", T0) == {"a": 1}
