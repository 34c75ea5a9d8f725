"""Cron triggers: a platform on a virtual clock (restarts, misfire and overlap policies) and a
live server with a per-second schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from faasbox.clock import VirtualClock
from faasbox.codestore import zip_folder
from faasbox.config import Settings
from faasbox.platform import Platform
from faasbox.spec import FunctionSpec
from faasbox.store.queue import TaskRow
from faasbox.triggers.cron import TriggerSpec
from tests.conftest import Server, open_tempdir, write_function

T0 = dt.datetime(2026, 1, 5, 0, 0, 0, tzinfo=dt.UTC).timestamp()
WORK = {"main.py": """
    import time
    def handler(event, context):
        time.sleep((event or {}).get("sleep", 0) if isinstance(event, dict) else 0)
        return {"event": event}
"""}


@asynccontextmanager
async def platform(data: Path, clock: VirtualClock, **settings: Any) -> AsyncIterator[Platform]:
    p = Platform(Settings(data=data, reap_interval_s=0.2, acquire_timeout_s=5, **settings),
                 clock)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def deploy(p: Platform, root: Path) -> None:
    folder = write_function(root / "functions" / "cronfn", WORK)
    await p.registry.deploy("cronfn", FunctionSpec(handler="main:handler", max_instances=4),
                            zip_folder(folder))


async def cron_tasks(p: Platform) -> list[TaskRow]:
    rows = await p.queue.list("cronfn", None, 1000, None)
    return sorted((r for r in rows if r.source == "cron"), key=lambda r: r.created_at)


def scheduled(task: TaskRow) -> float:
    when = orjson.loads(task.event)["scheduled_time"]
    return dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())


def test_fires_on_the_virtual_clock_and_resumes_after_restart() -> None:
    root = open_tempdir()
    clock = VirtualClock(T0 + 0.5)

    async def main() -> None:
        async with platform(root / "data", clock) as p:
            await deploy(p, root)
            await p.triggers.put("cronfn", "tick", TriggerSpec(cron="*/10 * * * * *"), True)
            for _ in range(100):  # 25 virtual seconds in quarter steps
                clock.advance(0.25)
                await p.triggers.tick()
            fired = [scheduled(t) for t in await cron_tasks(p)]
            assert fired == [T0 + 10, T0 + 20]
            assert p.triggers.get("cronfn", "tick").next_fire_at == T0 + 30
        # a restart before the next fire neither repeats nor loses one
        clock.set(T0 + 29)
        async with platform(root / "data", clock) as p:
            assert len(await cron_tasks(p)) == 2
            clock.set(T0 + 30)
            await p.triggers.tick()
            assert [scheduled(t) for t in await cron_tasks(p)] == [T0 + 10, T0 + 20, T0 + 30]
            # a crash between enqueueing a fire and saving the state: the fire is planned
            # again and its idempotency key finds the task already queued
            await p.trigger_store.update_trigger(
                "cronfn", "tick", next_fire_at=T0 + 30, last_fire_at=None, last_run=None,
                pending_fires=0, fired=0, skipped=0, now=clock.now())
        async with platform(root / "data", clock) as p:
            await p.triggers.tick()
            assert len(await cron_tasks(p)) == 3
            assert p.triggers.get("cronfn", "tick").next_fire_at == T0 + 40
            row = await p.trigger_store.get_trigger("cronfn", "tick")
            assert row is not None and row.next_fire_at == T0 + 40

    run(main)


@pytest.mark.parametrize("misfire, extra, expected", [
    ("skip", {}, []),
    ("fire_once", {}, [T0 + 360]),
    ("fire_all", {"max_catchup": 3}, [T0 + 240, T0 + 300, T0 + 360]),
])
def test_restart_across_fire_times(misfire: str, extra: dict[str, Any],
                                   expected: list[float]) -> None:
    root = open_tempdir()
    clock = VirtualClock(T0 + 30)
    spec = TriggerSpec(cron="* * * * *", misfire=misfire, misfire_grace_s=10, **extra)

    async def main() -> None:
        async with platform(root / "data", clock) as p:
            await deploy(p, root)
            await p.triggers.put("cronfn", "minutely", spec, True)
            clock.set(T0 + 60)
            await p.triggers.tick()
            assert [scheduled(t) for t in await cron_tasks(p)] == [T0 + 60]
        clock.set(T0 + 390)  # down through the fires of minutes 2 to 6
        async with platform(root / "data", clock) as p:
            fired = sorted(scheduled(t) for t in await cron_tasks(p))[1:]
            assert fired == expected
            row = p.triggers.get("cronfn", "minutely")
            assert row.fires == 1 + len(expected) and row.skipped == 5 - len(expected)
            assert row.next_fire_at == T0 + 420

    run(main)


def test_same_trigger_name_on_two_functions_starts_a_job_for_each() -> None:
    root = open_tempdir()
    clock = VirtualClock(T0 + 1)
    spec = TriggerSpec.model_validate({"cron": "*/10 * * * * *", "job": {"shards": [1, 2]}})

    async def main() -> None:
        async with platform(root / "data", clock) as p:
            folder = write_function(root / "functions" / "cronfn", WORK)
            for name in ("cron-a", "cron-b"):
                await p.registry.deploy(name, FunctionSpec(handler="main:handler"),
                                        zip_folder(folder))
                await p.triggers.put(name, "nightly", spec, True)
            clock.set(T0 + 10)
            await p.triggers.tick()
            for name in ("cron-a", "cron-b"):
                [job] = await p.trigger_store.list_jobs(name, None, 10, None)
                assert job.function == name and job.trigger_name == "nightly"
                assert p.triggers.get(name, "nightly").last_run == job.id

    run(main)


async def _busy(p: Platform, task_id: str) -> None:
    for _ in range(200):
        row = await p.queue.get(task_id)
        if row is not None and row.status == "running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the first fire never started")


@pytest.mark.parametrize("overlap", ["allow", "skip", "queue", "replace"])
def test_overlap_policies(overlap: str) -> None:
    root = open_tempdir()
    clock = VirtualClock(T0 + 1)
    spec = TriggerSpec(cron="*/10 * * * * *", overlap=overlap, event={"sleep": 1.5})

    async def main() -> None:
        async with platform(root / "data", clock, start_mode=os.environ.get("SM", "auto")) as p:
            await deploy(p, root)
            await p.triggers.put("cronfn", "slow", spec, True)
            clock.set(T0 + 10)
            await p.triggers.tick()
            [first] = await cron_tasks(p)
            await _busy(p, first.id)
            clock.set(T0 + 20)  # the next fire comes while the first still runs
            await p.triggers.tick()
            tasks = await cron_tasks(p)
            row = p.triggers.get("cronfn", "slow")
            if overlap == "allow":
                assert len(tasks) == 2
            elif overlap == "skip":
                assert len(tasks) == 1 and row.skipped == 1
            elif overlap == "queue":
                assert len(tasks) == 1 and row.pending_fires == 1
                done = await p.tasks.wait(first.id, 10)
                assert done.status == "succeeded"
                for _ in range(100):  # the end of the first run releases the queued fire
                    await asyncio.sleep(0.05)
                    if len(await cron_tasks(p)) == 2:
                        break
                await p.triggers.tick()
                tasks = await cron_tasks(p)
                assert len(tasks) == 2 and p.triggers.get("cronfn", "slow").pending_fires == 0
            else:  # replace
                assert len(tasks) == 2
                old = await p.queue.get(first.id)
                assert old is not None and old.status == "cancelled"
                assert row.last_run == tasks[1].id

    run(main)


# -- live -----------------------------------------------------------------------------------
def test_per_second_schedule_live(server: Server) -> None:
    server.deploy("cron-live", WORK)
    resp = server.http.post("/v1/functions/cron-live/triggers",
                            json={"name": "every-second", "cron": "* * * * * *"})
    assert resp.status_code == 201, resp.text
    view = resp.json()
    assert view["name"] == "every-second" and len(view["upcoming"]) == 3

    def fired() -> Any:
        tasks = server.http.get("/v1/tasks", params={"function": "cron-live"}).json()["tasks"]
        done = [t for t in tasks if t["status"] == "succeeded" and t["source"] == "cron"]
        return done if len(done) >= 3 else None

    done = server.wait_for(fired, timeout=30, what="three fires")
    times = sorted(dt.datetime.fromisoformat(
        t["result"]["event"]["scheduled_time"].replace("Z", "+00:00")).timestamp()
        for t in done)
    assert all(b - a == 1.0 for a, b in itertools.pairwise(times))
    assert all(t["trigger"] == "every-second" for t in done)
    # disable: fires stop
    resp = server.http.patch("/v1/functions/cron-live/triggers/every-second",
                             json={"enabled": False})
    assert resp.status_code == 200 and resp.json()["next_fire_at"] is None
    # fires and changes take the same lock: none comes after the change returned
    count = server.http.get("/v1/functions/cron-live/triggers/every-second").json()["fires"]
    time.sleep(1.5)  # a second and a half of a per-second schedule: no fire in it
    view = server.http.get("/v1/functions/cron-live/triggers/every-second").json()
    assert view["fires"] == count
    assert server.http.delete(
        "/v1/functions/cron-live/triggers/every-second").status_code == 204
    assert server.http.get("/v1/functions/cron-live/triggers").json() == {"triggers": []}


def test_instances_are_warm_before_each_fire(server: Server) -> None:
    # idle instances are stopped after 1 s, fires come every 5 s: without pre-warm each
    # fire would start cold
    server.deploy("cron-warm", WORK, idle_ttl_s=1)
    resp = server.http.put("/v1/functions/cron-warm/triggers/five",
                           json={"cron": "*/5 * * * * *"})
    assert resp.status_code == 200, resp.text

    def records() -> Any:
        recs = server.http.get("/v1/invocations", params={"function": "cron-warm"}).json()[
            "invocations"]
        return recs if len(recs) >= 4 else None

    recs = sorted(server.wait_for(records, timeout=30, what="four fires"),
                  key=lambda r: r["started_at"])
    # the first fire may come too soon after the trigger for a pre-warm; of the next three,
    # all are cold without pre-warm, and a loaded machine may delay one start past its fire
    warm = [not r["cold_start"] for r in recs[1:4]]
    assert sum(warm) >= 2, [(r["started_at"], r["cold_start"]) for r in recs]
    server.http.delete("/v1/functions/cron-warm/triggers/five")


def test_cron_starts_a_job(server: Server) -> None:
    server.deploy("cron-job", {"main.py": """
        def handler(event, context):
            return {"i": context.shard["index"], "p": event}
    """})
    resp = server.http.put("/v1/functions/cron-job/triggers/batch", json={
        "cron": "* * * * * *", "overlap": "skip",
        "job": {"shards": {"count": 3, "params": {"day": "today"}}, "max_parallel": 2}})
    assert resp.status_code == 200, resp.text

    def a_job() -> Any:
        jobs = server.http.get("/v1/jobs", params={"function": "cron-job"}).json()["jobs"]
        return next((j for j in jobs if j["status"] == "succeeded"), None)

    job = server.wait_for(a_job, timeout=10, what="a job started by cron")
    assert job["trigger"] == "batch"
    full = server.http.get(f"/v1/jobs/{job['job_id']}").json()
    assert full["results"] == [{"i": i, "p": {"day": "today"}} for i in range(3)]
    server.http.delete("/v1/functions/cron-job/triggers/batch")


def test_trigger_bad_input(server: Server) -> None:
    server.deploy("cron-bad", WORK)
    base = "/v1/functions/cron-bad/triggers"
    for body, status, words in [
        ({"cron": "* * *"}, 422, "5 fields"),
        ({"cron": "* * * * *", "timezone": "Nowhere/Land"}, 422, "time zone"),
        ({"cron": "* * * * *", "name": "Bad Name"}, 422, "trigger name"),
        ({"cron": "* * * * *", "job": {"shards": []}}, 422, "shards"),
        ({"cron": "* * * * *", "colour": "red"}, 422, "colour"),
    ]:
        resp = server.http.post(base, json=body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.json()["error"]["message"], resp.text
    assert server.http.post("/v1/functions/nope/triggers",
                            json={"cron": "* * * * *"}).status_code == 404
    assert server.http.post(base, json={"cron": "0 0 * * *", "name": "a"}).status_code == 201
    resp = server.http.post(base, json={"cron": "0 0 * * *", "name": "a"})
    assert resp.status_code == 409
    resp = server.http.patch(f"{base}/a", json={"cron": "nonsense"})
    assert resp.status_code == 422, resp.text
    resp = server.http.patch(f"{base}/a", json={"when": 1})
    assert resp.status_code == 400
    assert server.http.patch(f"{base}/zzz", json={"enabled": False}).status_code == 404
    assert server.http.delete(f"{base}/zzz").status_code == 404
    # deleting the function deletes its triggers
    assert server.http.delete("/v1/functions/cron-bad").status_code == 204
    triggers = server.http.get("/v1/triggers").json()["triggers"]
    assert not [t for t in triggers if t["function"] == "cron-bad"]
