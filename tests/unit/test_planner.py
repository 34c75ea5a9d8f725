"""The live platform's per-function planner on virtual time: autoscaler + keep-alive policy,
floors (min_instances, provisioned windows), pre-warm, and known fires (the cron hook)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from faasbox.autoscaler import FaasboxPolicy, FixedKeepAlive, ScalerConfig, Windows
from faasbox.autoscaler.planner import FunctionPlanner, Observation
from faasbox.autoscaler.provisioned import ProvisionedWindow, parse_days, provisioned_at
from faasbox.spec import FunctionSpec

BERLIN = ZoneInfo("Europe/Berlin")
SPEC: dict[str, Any] = {"concurrency": 1, "min_instances": 0, "max_instances": 50,
                        "idle_ttl_s": 300.0, "memory_mb": 128}


def at(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def planner(policy: Any = None, **spec: Any) -> FunctionPlanner:
    p = FunctionPlanner("f", policy or FixedKeepAlive(600.0), ScalerConfig(
        stable_window_s=10.0, panic_window_s=2.0, scale_to_zero_grace_s=5.0))
    p.configure(FunctionSpec(handler="main:handler", **{**SPEC, **spec}))
    return p


def quiet(p: FunctionPlanner, start: float, end: float, **obs: Any) -> None:
    t = start
    while t < end:
        p.plan(t, Observation(demand=0.0, **obs))
        t += 1.0


# -- provisioned windows ----------------------------------------------------------------------
WORKDAY = ProvisionedWindow.model_validate(
    {"instances": 10, "from": "09:00", "to": "17:00", "timezone": "Europe/Berlin",
     "days": "mon-fri"})


@pytest.mark.parametrize(("when", "expected"), [
    ((2026, 1, 12, 8, 59), 0),   # Monday, winter (UTC+1)
    ((2026, 1, 12, 9, 0), 10),
    ((2026, 1, 12, 16, 59), 10),
    ((2026, 1, 12, 17, 0), 0),
    ((2026, 7, 13, 9, 30), 10),  # Monday, summer (UTC+2): still 09:30 local
    ((2026, 7, 13, 8, 30), 0),
    ((2026, 1, 17, 12, 0), 0),   # Saturday
])
def test_workday_window_in_its_own_time_zone(when: tuple[int, ...], expected: int) -> None:
    assert provisioned_at([WORKDAY], at(*when)) == expected


def test_window_is_local_time_not_utc() -> None:
    # 08:30 UTC on a summer Monday is 10:30 in Berlin: inside; 16:30 UTC is 18:30: outside
    assert provisioned_at([WORKDAY], at(2026, 7, 13, 8, 30, tz=ZoneInfo("UTC"))) == 10
    assert provisioned_at([WORKDAY], at(2026, 7, 13, 16, 30, tz=ZoneInfo("UTC"))) == 0


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    night = ProvisionedWindow(instances=3, start="22:00", end="06:00", timezone="UTC",
                              days="fri")
    utc = ZoneInfo("UTC")
    assert provisioned_at([night], at(2026, 1, 16, 23, 0, tz=utc)) == 3  # Friday night
    assert provisioned_at([night], at(2026, 1, 17, 5, 59, tz=utc)) == 3  # Saturday morning
    assert provisioned_at([night], at(2026, 1, 17, 6, 0, tz=utc)) == 0
    assert provisioned_at([night], at(2026, 1, 17, 23, 0, tz=utc)) == 0  # Saturday night
    assert provisioned_at([night], at(2026, 1, 16, 5, 0, tz=utc)) == 0  # Friday morning


def test_overlapping_windows_take_the_largest_and_24_00_ends_the_day() -> None:
    windows = [{"instances": 2, "start": "00:00", "end": "24:00"},
               {"instances": 5, "start": "12:00", "end": "13:00"}]
    utc = ZoneInfo("UTC")
    assert provisioned_at(windows, at(2026, 3, 1, 23, 59, tz=utc)) == 2
    assert provisioned_at(windows, at(2026, 3, 1, 12, 30, tz=utc)) == 5


def test_days() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("daily") == frozenset(range(7))


@pytest.mark.parametrize(("window", "message"), [
    ({"instances": 1, "from": "9:00", "to": "17:00"}, "HH:MM"),
    ({"instances": 1, "from": "09:00", "to": "09:00"}, "empty"),
    ({"instances": 1, "from": "24:00", "to": "09:00"}, "24:00"),
    ({"instances": 1, "from": "09:00", "to": "17:00", "timezone": "Mars/Olympus"}, "time zone"),
    ({"instances": 1, "from": "09:00", "to": "17:00", "days": "weekdays"}, "mon-fri"),
    ({"instances": 0, "from": "09:00", "to": "17:00"}, "greater than or equal"),
    ({"instances": 1, "from": "09:00", "to": "17:00", "extra": 1}, "Extra inputs"),
])
def test_bad_windows_are_refused(window: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FunctionSpec(handler="main:handler", provisioned=[window])


def test_provisioned_cannot_exceed_max_instances() -> None:
    with pytest.raises(ValidationError, match="cannot exceed max_instances"):
        FunctionSpec(handler="main:handler", max_instances=5,
                     provisioned=[{"instances": 10, "from": "09:00", "to": "17:00"}])


def test_planner_warms_provisioned_capacity_before_the_window_opens() -> None:
    p = planner(provisioned=[WORKDAY.model_dump()], min_instances=1)
    nine = at(2026, 1, 12, 9, 0)
    assert p.plan(nine - 60, Observation(0.0)).floor == 1  # min_instances: the floor
    early = p.plan(nine - p.lead_s + 0.5, Observation(0.0))
    assert (early.floor, early.target) == (10, 10)  # started ahead: warm at 09:00
    assert p.plan(at(2026, 1, 12, 17, 0, 1), Observation(0.0)).floor == 1


# -- autoscaler and keep-alive --------------------------------------------------------------
def test_burst_asks_for_every_instance_at_once_then_zero_after_the_grace() -> None:
    p = planner()
    burst = p.plan(0.0, Observation(demand=50.0, busy=50, live=50))
    assert burst.panic and burst.target == 50 and burst.desired == 50
    quiet(p, 1.0, 12.0, ready=50, live=50)  # panic holds a stable window
    assert p.last_plan is not None and p.last_plan.hold > 0
    quiet(p, 12.0, 40.0, ready=1, live=1)
    assert p.last_plan.desired == 0 and p.last_plan.target == 0


def test_stable_count_holds_while_panic_and_backlog_start_ahead() -> None:
    p = planner()
    for t in range(11):  # a steady load of 3 for a stable window
        steady = p.plan(float(t), Observation(demand=3.0, busy=3, ready=3, live=3))
    assert not steady.panic and steady.desired == 5  # 3 / 0.7
    assert steady.target == 0 and steady.hold == 5  # calls start their own; 5 are kept
    queued = p.plan(11.0, Observation(demand=3.0, busy=3, queue_depth=4, ready=3, live=3))
    assert queued.target == queued.desired > 5  # the backlog is worked off ahead
    p2 = planner()
    p2.plan(0.0, Observation(demand=1.0, busy=1, ready=1, live=1))
    after = p2.plan(1.0, Observation(demand=0.0, ready=0, live=0))  # it died meanwhile
    assert after.desired == 1 and after.target == 0  # remembered demand starts nothing


def test_idle_ttl_caps_the_learned_keep_alive_and_zero_disables_headroom() -> None:
    p = planner(idle_ttl_s=5.0)  # fixed policy: 600 s
    p.arrival(0.0, cold=True)
    w = p.finished(1.0)
    assert w.keep_until == 6.0 and w.hard_until == 6.0
    assert p.expired(w, 5.9) is None and p.expired(w, 6.0) == "hard"
    z = planner(idle_ttl_s=0.0)
    z.arrival(0.0, cold=True)
    assert z.expired(z.finished(0.5), 0.5) == "hard"
    plan = z.plan(0.6, Observation(demand=1.0, busy=1, queue_depth=3, ready=1, live=1))
    assert plan.desired > 1 and plan.target == 0  # nothing ahead for idle_ttl_s 0


def test_ttl_cut_does_not_restart_what_it_stopped() -> None:
    p = planner(idle_ttl_s=1.0)
    p.plan(0.0, Observation(demand=1.0, busy=1, ready=1, live=1))
    p.arrival(0.0, cold=True)
    w = p.finished(0.5)
    assert p.expired(w, 1.5) == "hard"
    p.retired(w, 1.5, "hard")
    again = p.plan(2.0, Observation(demand=0.2, queue_depth=1, ready=0, live=0))
    assert again.desired >= 1 and again.target == 0


def test_cold_start_observations_move_the_lead() -> None:
    p = planner()
    before = p.lead_s
    for _ in range(20):
        p.observe_cold_start(3.0)
    assert p.lead_s > before and p.lead_s == pytest.approx(3.0 + 2.0, abs=0.01)


# -- pre-warm from the learned windows --------------------------------------------------------
def test_a_release_is_learned_even_when_its_window_is_never_computed() -> None:
    """The slot's release asks for a window only when its instance went idle
    (planner.released): calls back to back compute none, and the policy learns the same.
    (Without its cache of decisions, which a window computed more often refreshes less.)"""
    eager = planner(FaasboxPolicy(recompute_growth=0.0))
    lazy = planner(FaasboxPolicy(recompute_growth=0.0))
    t, windows = 0.0, []
    for i in range(40):  # bursts of 2 overlapping calls every 7 minutes, then one more
        t = (i // 2) * 420.0 + (i % 2) * 0.5
        for p in (eager, lazy):
            p.arrival(t, cold=False)
        windows.append(eager.finished(t + 2.0))
        lazy.released(t + 2.0)  # never asked
    eager.arrival(t + 420.0, cold=False)
    lazy.arrival(t + 420.0, cold=False)
    last = eager.finished(t + 421.0)
    assert lazy.released(t + 421.0)() == last
    assert len({(w.keep_until - w.since, w.prewarm_at) for w in windows}) > 1  # it learned
    assert lazy.finished(t + 430.0) == eager.finished(t + 430.0)


def test_periodic_function_is_released_and_prewarmed_before_its_next_call() -> None:
    policy = FaasboxPolicy()
    p = planner(policy)
    t = 0.0
    window = None
    for _ in range(6):  # a 10-minute timer taking 1 s
        p.arrival(t, cold=window is None)
        window = p.finished(t + 1.0)
        t += 600.0
    assert window is not None and window.prewarm_at is not None
    idle_at = t - 600.0 + 1.0
    assert p.expired(window, idle_at + 1.0) == "soft"  # nothing to keep it for
    p.retired(window, idle_at + 1.0, "soft")
    assert len(p.pending) == 1
    start_at = p.pending[0].start_at
    assert idle_at + 500 < start_at < t  # shortly before the next call
    assert p.plan(start_at - 1.0, Observation(0.0)).prewarms == ()
    due = p.plan(start_at, Observation(0.0))
    assert len(due.prewarms) == 1 and due.prewarms[0] > 0
    assert p.pending == []


def test_a_cold_start_cancels_a_pending_prewarm() -> None:
    p = planner(FaasboxPolicy())
    w = p.finished(0.0)
    w.prewarm_at, w.prewarm_keep_s = 100.0, 30.0
    p.retired(w, 1.0, "soft")
    assert len(p.pending) == 1
    p.arrival(50.0, cold=True)
    assert p.pending == []


def test_instance_held_into_its_prewarm_window_is_kept_there() -> None:
    p = planner()
    w = p.finished(0.0)
    w.prewarm_at, w.prewarm_keep_s, w.keep_until = 100.0, 30.0, 0.0
    assert p.expired(w, 50.0) == "soft"
    assert p.expired(w, 100.0) is None
    assert p.expired(w, 130.0) == "soft"


# -- known fires (the cron hook) ----------------------------------------------------------------
def test_known_fire_warms_ahead_and_lets_go_when_its_work_is_done() -> None:
    p = planner()
    for _ in range(10):
        p.observe_cold_start(1.5)
    fire = 1000.0
    p.set_known_fires([fire, fire + 3600.0], instances=3)
    lead = p.lead_s
    assert lead == pytest.approx(3.5, abs=0.05)
    assert p.plan(fire - lead - 0.5, Observation(0.0)).floor == 0
    ahead = p.plan(fire - lead + 0.1, Observation(0.0))
    assert (ahead.floor, ahead.target) == (3, 3)  # ready by the fire
    for _ in range(3):
        p.arrival(fire + 0.05, cold=False)
    working = p.plan(fire + 1.0, Observation(demand=3.0, busy=3, ready=3, live=3))
    assert working.floor == 3 and not working.release_idle
    for _ in range(3):
        p.finished(fire + 2.0)
    done = p.plan(fire + 2.5, Observation(demand=0.5, busy=0, ready=3, live=3))
    assert done.floor == 0 and done.release_idle
    assert [f.at for f in p.fires] == [fire + 3600.0]
    later = p.plan(fire + 3600.0 - lead + 0.1, Observation(0.0))
    assert later.floor == 3


def test_known_fire_with_no_call_is_let_go_after_the_no_show_time() -> None:
    p = planner()
    p.set_known_fires([100.0])
    assert p.plan(99.0, Observation(0.0)).floor == 1
    assert p.plan(100.0 + p.no_show_s - 0.1, Observation(0.0)).floor == 1
    gone = p.plan(100.0 + p.no_show_s, Observation(0.0))
    assert gone.floor == 0 and not gone.release_idle and p.fires == []


def test_known_fires_reach_the_faasbox_policy() -> None:
    policy = FaasboxPolicy()
    p = planner(policy)
    p.set_known_fires([5000.0])
    p.arrival(0.0, cold=True)
    w = p.finished(1.0)
    # the learned window is stretched or moved so that an instance is loaded at the fire
    loaded_from = w.prewarm_at if w.prewarm_at is not None else w.since
    loaded_until = (w.prewarm_at + w.prewarm_keep_s) if w.prewarm_at is not None \
        else w.keep_until
    assert loaded_from <= 5000.0 or loaded_until >= 5000.0
    p.set_known_fires([])
    assert p.fires == []


def test_floor_never_exceeds_max_instances() -> None:
    p = planner(max_instances=2)
    p.set_known_fires([10.0], instances=5)
    assert p.plan(9.0, Observation(0.0)).floor == 2


class _HoldPolicy:
    name = "hold"

    def on_invocation(self, fn: str, now: float) -> None:
        return None

    def windows(self, fn: str, now: float) -> Windows:
        return Windows(50.0, 20.0, hold_s=5.0)


def test_a_hold_keeps_the_instance_then_it_goes_until_its_prewarm() -> None:
    p = planner(_HoldPolicy())
    p.arrival(0.0, cold=True)
    window = p.finished(1.0)
    assert (window.keep_until, window.prewarm_at, window.prewarm_keep_s) == (6.0, 51.0, 20.0)
    assert p.expired(window, 5.0) is None  # held for the rest of a burst
    assert p.expired(window, 6.0) == "soft"
    p.retired(window, 6.0, "soft")
    assert len(p.pending) == 1 and p.pending[0].start_at == pytest.approx(51.0 - p.cold_start_s)


def test_a_cold_start_asks_for_room_for_burst_ahead_more_calls() -> None:
    policy = FaasboxPolicy(burst_ahead=2, ahead_keep_s=60.0)
    one = planner(policy)
    policy.on_invocation("f", 0.0)
    assert one.ahead(0.0, 1, 1) == (60.0, 60.0)  # one call per instance: two more
    assert one.ahead(0.0, 3, 4) == (60.0,)  # a start already under way counts
    assert planner(FixedKeepAlive(600.0)).ahead(0.0, 1, 1) == ()  # no ahead in the policy
    four = planner(policy, concurrency=4)
    assert four.ahead(0.0, 1, 1) == ()  # its own instance has room for three more calls
    assert four.ahead(0.0, 4, 1) == (60.0,)  # full: room for two more takes one instance
    assert planner(policy, idle_ttl_s=0).ahead(0.0, 1, 1) == ()
    assert planner(policy, idle_ttl_s=10).ahead(0.0, 1, 1) == (10.0, 10.0)  # capped
