"""Service groups without a server: the carved memory pools, schedule windows and how a group's
warm floor is spread over its functions."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from faasbox.resources import Node, ResourceManager
from faasbox.scheduler.groups import Member, base_floor, spread
from faasbox.tenancy.groups import GroupWindow, ServiceGroupSpec

T0 = dt.datetime(2026, 1, 5, 2, 0, 0, tzinfo=dt.UTC).timestamp()  # a Monday, 02:00 UTC


def test_a_carved_pool_is_only_for_its_own_instances() -> None:
    rm = ResourceManager([Node("local", 1024, 2)])
    pool = rm.carve("t/g", 512)
    assert pool is not None and pool.parent is rm.nodes["local"]
    assert rm.nodes["local"].free_mb == 512 and rm.carvable_mb() == 512
    # outside the pool: only what the node has left
    outside = [rm.reserve(256), rm.reserve(256)]
    assert all(n is rm.nodes["local"] for n in outside) and rm.reserve(128) is None
    # inside: the pool's memory, counted per instance
    assert rm.reserve(384, within=pool) is pool and pool.reservations == 1
    assert rm.reserve(256, within=pool) is None
    assert rm.reserve(128, within=pool) is pool and pool.free_mb == 0
    rm.release(pool, 128)
    assert pool.reservations == 1 and pool.free_mb == 128 and rm.nodes["local"].free_mb == 0
    assert rm.carve("t/h", 128) is None  # no free memory left on the node
    # resize: shrinking below what instances hold, or growing past the node, is refused
    assert not rm.resize(pool, 256)
    rm.release(outside[0], 256)
    assert not rm.resize(pool, 1024) and rm.resize(pool, 768)
    assert rm.nodes["local"].free_mb == 0 and pool.free_mb == 384
    rm.release(pool, 384)
    rm.uncarve(pool)
    assert rm.nodes["local"].reserved_mb == 256 and rm.reserve(128, within=pool) is None
    assert rm.describe()[0]["service_groups_mb"] == 0


def test_schedule_windows() -> None:
    w = GroupWindow(cron="0 2 * * *", duration_s=3600, instances=3)
    assert w.open_at(T0) and w.open_at(T0 + 3599) and not w.open_at(T0 + 3600)
    assert not w.open_at(T0 - 1) and w.next_open(T0) == T0 + 86400
    spec = ServiceGroupSpec(name="g", memory_mb=512, min_instances=1, max_instances=3,
                            schedule=[w, GroupWindow(cron="0 2 * * *", duration_s=60,
                                                     instances=1)])
    assert base_floor(spec, T0 - 10, lead_s=2) == 1
    assert base_floor(spec, T0 - 1, lead_s=2) == 3  # pre-warmed for the window, capped
    assert base_floor(spec, T0 + 3600, lead_s=2) == 1
    with pytest.raises(ValidationError, match="cron"):
        GroupWindow(cron="0 2 *", duration_s=60, instances=1)
    with pytest.raises(ValidationError, match="min_instances"):
        ServiceGroupSpec(name="g", memory_mb=512, min_instances=4, max_instances=3)


def member(name: str, own: int = 0, used: float = 0.0, memory: int = 128,
           most: int = 10) -> Member:
    return Member(name, memory, most, own, used)


def test_the_floor_goes_round_robin_most_recently_used_first() -> None:
    members = [member("a", used=1.0), member("b", used=5.0), member("c")]
    assert spread(members, 4096, 10, base=4) == {"b": 2, "a": 1, "c": 1}
    assert spread(members, 4096, 10, base=0) == {"a": 0, "b": 0, "c": 0}


def test_own_floors_come_first_and_everything_fits_the_group() -> None:
    # a function's own floor (e.g. a known cron fire) counts toward the group's
    members = [member("online", own=1, used=9.0), member("batch", own=3, used=1.0)]
    assert spread(members, 4096, 10, base=2) == {"online": 1, "batch": 3}
    # the group's max_instances and memory cap the floors, whoever asks
    assert spread(members, 4096, 3, base=2) == {"online": 1, "batch": 2}
    big = [member("big", own=2, memory=512, used=2.0), member("small", own=1, used=1.0)]
    assert spread(big, 640, 10, base=0) == {"big": 1, "small": 1}
    # and each function's own max_instances
    assert spread([member("capped", most=1)], 4096, 10, base=5) == {"capped": 1}
