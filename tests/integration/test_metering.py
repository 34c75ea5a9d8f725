"""Metering on real runs: a known workload's usage, its cost under the three models and a
right-size suggestion, each checked against values computed here by hand from the workload's
own invocation records; instance memory-time, floors, throttles; tenants see their own."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.tenants import deploy, invocations, make_key, make_tenant, wait_task

pytestmark = pytest.mark.xdist_group("metering")

RATE, REQ, FEE_MONTH, SPOT = 0.0000166667, 0.20, 36.50, 0.70
MONTH_S = 730 * 3600
WORK = {"main.py": """
    import time

    def handler(event, context):
        block = bytearray(event.get("mb", 0) * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(event.get("sleep", 0))
        end = time.process_time() + event.get("spin", 0)
        while time.process_time() < end:
            pass
        return {"ok": len(block)}
"""}


@pytest.fixture(scope="module")
def tenant(server: Server) -> Iterator[httpx.Client]:
    make_tenant(server, "mt-a")
    client = server.client(make_key(server, "mt-a", "developer"))
    yield client
    client.close()


def hour_of(t: float) -> int:
    return int(t // 3600 * 3600)


def p99_bucket(values: list[float]) -> float:
    """Nearest-rank p99, as the upper edge of its 4 MB bucket."""
    v = sorted(values)[max(1, math.ceil(0.99 * len(values))) - 1]
    return max(4.0, math.ceil(v / 4) * 4)


def test_a_known_workload_by_hand(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "work", WORK, memory_mb=1024)
    for _ in range(6):
        resp = tenant.post("/v1/functions/work/invoke", json={"mb": 150, "sleep": 0.05})
        assert resp.status_code == 200, resp.text
    # interruptible tasks: the spot model's share
    assert tenant.put("/v1/functions/work/task-policy",
                      json={"interruptible": True}).status_code == 200
    for _ in range(3):
        task = tenant.post("/v1/functions/work/tasks", json={"mb": 150, "sleep": 0.05})
        assert task.status_code == 202, task.text
        assert wait_task(tenant, task.json()["task_id"])["status"] == "succeeded"
    records = invocations(tenant, "work")
    assert len(records) == 9
    hours = sorted({hour_of(r["started_at"]) for r in records})
    lo, hi = hours[0], hours[-1] + 3600
    period = hi - lo

    # usage: the records' billed ms and GB-s, by trigger, cold starts
    body = tenant.get("/v1/usage", params={"function": "work", "from": lo, "to": hi}).json()
    total = body["functions"][0]["total"]
    assert body["functions"][0]["function"] == "work"
    billed = sum(r["billed_ms"] for r in records)
    gb_s = billed / 1000 * 1024 / 1024
    spot_gb_s = sum(r["billed_ms"] for r in records if r["trigger"] == "task") / 1000
    assert total["invocations"] == 9
    assert total["by_trigger"] == {"sync": 6, "task": 3}
    assert total["by_status"] == {"succeeded": 9}
    assert total["billed_ms"] == billed
    assert total["gb_s"] == pytest.approx(gb_s, abs=1e-6)
    assert total["spot_gb_s"] == pytest.approx(spot_gb_s, abs=1e-6)
    assert total["cold_starts"] == sum(1 for r in records if r["cold_start"])
    assert total["cold_start_ms"] == pytest.approx(
        sum(r["init_ms"] or 0 for r in records if r["cold_start"]), abs=1e-3)
    assert total["peak_rss_mb_p99"] == p99_bucket([r["peak_rss_mb"] for r in records])

    # cost: the three models by hand, on the same hours
    per_hour: dict[int, float] = {}
    for r in records:
        per_hour[hour_of(r["started_at"])] = (per_hour.get(hour_of(r["started_at"]), 0.0)
                                              + r["billed_ms"] / 1000)
    requests = REQ * 9 / 1e6
    ppu = gb_s * RATE + requests
    fee = FEE_MONTH / MONTH_S

    def reserved(cap: float) -> float:
        return (cap * period * fee + sum(max(0.0, g - cap * 3600) for g in per_hour.values())
                * RATE + requests)

    best = min([0.0, *(g / 3600 for g in per_hour.values())], key=lambda c: (reserved(c), c))
    spot = (gb_s - spot_gb_s) * RATE + spot_gb_s * RATE * (1 - SPOT) + requests
    cost = tenant.get("/v1/cost", params={"from": lo, "to": hi}).json()
    fn = next(f for f in cost["functions"] if f["function"] == "work")
    assert fn["models"]["pay_per_use"]["cost"] == pytest.approx(ppu, abs=1e-6)
    assert fn["models"]["reserved"]["cost"] == pytest.approx(reserved(best), abs=1e-6)
    assert fn["models"]["reserved"]["reserved_gb"] == pytest.approx(best, abs=1e-4)
    assert fn["models"]["spot"]["cost"] == pytest.approx(spot, abs=1e-6)
    costs = {"pay_per_use": ppu, "reserved": reserved(best), "spot": spot}
    assert fn["cheapest"] == min(costs, key=lambda k: costs[k])
    assert cost["price_book"]["gb_s"] == RATE

    # waste: right-size from the p99 peak RSS, with its saving per month
    waste = tenant.get("/v1/waste", params={"from": lo, "to": hi}).json()
    memory = next(f for f in waste["findings"] if f["function"] == "work"
                  and f["kind"] == "memory")
    p99 = p99_bucket([r["peak_rss_mb"] for r in records])
    suggested = max(128, math.ceil(p99 * 1.2 / 64) * 64)
    assert memory["suggested_memory_mb"] == suggested < 1024
    assert memory["saving_per_month"] == pytest.approx(
        gb_s * (1 - suggested / 1024) * RATE * MONTH_S / period, abs=1e-4)


def test_instance_memory_time_busy_idle_and_cpu(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "lifetime", WORK, memory_mb=256, idle_ttl_s=0)
    for _ in range(3):
        assert tenant.post("/v1/functions/lifetime/invoke",
                           json={"sleep": 0.1, "spin": 0.1}).status_code == 200
    records = invocations(tenant, "lifetime")
    # idle_ttl_s 0: the instance goes at the next scaling tick; its lifetime is then whole
    server.wait_for(lambda: not tenant.get("/v1/functions/lifetime/instances")
                    .json()["instances"], what="the instance to stop")

    def usage() -> dict[str, Any]:
        body = tenant.get("/v1/usage", params={"function": "lifetime", "from": 0}).json()
        return dict(body["functions"][0]["total"]["instances"])

    inst = server.wait_for(lambda: (u := usage())["ended"] >= 1 and u, what="a lifetime")
    busy = sum(r["duration_ms"] for r in records) / 1000
    assert inst["busy_s"] == pytest.approx(busy, abs=1e-3)
    assert inst["loaded_s"] >= inst["busy_s"] + inst["idle_s"] - 1e-3
    assert inst["loaded_gb_s"] == pytest.approx(inst["loaded_s"] / 4, rel=1e-3, abs=1e-5)
    assert inst["cpu_s"] >= 0.3 - 0.02  # 0.1 CPU-s spun by each call (10 ms ticks)
    assert inst["peak_rss_mb"] > 0


def test_a_floor_holds_idle_memory_time(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "floored", WORK, memory_mb=128, min_instances=1)

    def held() -> float:
        body = tenant.get("/v1/usage", params={"function": "floored", "from": 0}).json()
        funcs = body["functions"]
        return float(funcs[0]["total"]["instances"]["held_gb_s"]) if funcs else 0.0

    server.wait_for(lambda: held() > 0, timeout=30, what="held memory-time")
    waste = tenant.get("/v1/waste", params={"from": time.time() - 3600}).json()
    found = [f for f in waste["findings"] if f["function"] == "floored"]
    assert any(f["kind"] == "min_instances" and f["saving_per_month"] > 0 for f in found)
    assert tenant.delete("/v1/functions/floored").status_code == 204


def test_throttles_are_counted(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "narrow", WORK, memory_mb=128, reserved_concurrency=0)
    resp = tenant.post("/v1/functions/narrow/invoke", json={})
    assert resp.status_code == 429, resp.text
    body = tenant.get("/v1/usage", params={"function": "narrow", "from": 0}).json()
    assert body["functions"][0]["total"]["throttles"] == 1


def test_a_tenant_sees_only_its_own_usage(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "mine", WORK, memory_mb=128)
    assert tenant.post("/v1/functions/mine/invoke", json={}).status_code == 200
    make_tenant(server, "mt-b")
    other = server.client(make_key(server, "mt-b", "developer"))
    try:
        for path in ("/v1/usage", "/v1/cost", "/v1/waste"):
            resp = other.get(path, params={"from": 0})
            assert resp.status_code == 200 and "mine" not in resp.text, resp.text
        assert other.get("/v1/usage", params={"function": "mine"}).status_code == 404
        # the admin may look at any tenant's
        resp = server.http.get("/v1/usage", params={"tenant": "mt-a", "from": 0})
        assert "mine" in {f["function"] for f in resp.json()["functions"]}
    finally:
        other.close()


def test_bad_periods_are_400(tenant: httpx.Client) -> None:
    assert tenant.get("/v1/cost", params={"from": "yesterday"}).status_code == 400
    assert tenant.get("/v1/cost", params={"from": 100, "to": 50}).status_code == 400
    for bad in ("nan", "inf", "-1", "1e300"):
        assert tenant.get("/v1/waste", params={"to": bad}).status_code == 400, bad
    assert tenant.get("/v1/usage", params={"step": "week"}).status_code == 422
    day = tenant.get("/v1/usage", params={"from": "2020-01-01", "step": "day"})
    assert day.status_code == 200 and day.json()["step"] == "day"


SLOW_FIRST = {"main.py": """
    import time

    def handler(event, context):
        if context.attempt == 1:
            time.sleep(120)  # preempted (or cancelled) long before
        return {"attempt": context.attempt}
"""}


def test_interruptible_tasks_are_preempted_for_room_and_retried(make_server: Any) -> None:
    server = make_server(env={"FAASBOX_NODE_MEMORY_MB": "256",
                              "FAASBOX_ACQUIRE_TIMEOUT_S": "2"})
    server.deploy("batch", SLOW_FIRST, memory_mb=256)
    server.deploy("urgent", WORK, memory_mb=256)
    # not interruptible: the sync call finds no room and is throttled
    task = server.http.post("/v1/functions/batch/tasks", json={}).json()["task_id"]
    server.wait_for(lambda: [i for i in server.instances("batch") if i["state"] == "busy"],
                    what="the task to run")
    assert server.invoke("urgent", {}).status_code == 429
    assert server.http.post(f"/v1/tasks/{task}/cancel").status_code == 200
    server.wait_for(lambda: not server.instances("batch"), what="the cancelled task's instance")

    # interruptible: the sync call preempts the task's instance; the task runs again
    assert server.http.put("/v1/functions/batch/task-policy",
                           json={"interruptible": True, "retry_on": ["timeout"],
                                 "backoff_base_s": 0.1, "backoff_cap_s": 0.1}).status_code == 200
    task = server.http.post("/v1/functions/batch/tasks", json={}).json()["task_id"]
    server.wait_for(lambda: [i for i in server.instances("batch") if i["state"] == "busy"],
                    what="the task to run")
    resp = server.invoke("urgent", {})
    assert resp.status_code == 200, resp.text
    done = wait_task(server.http, task)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    records = invocations(server.http, "batch")
    assert [r["error_code"] for r in records if r["task_id"] == task][-1] == "preempted"
    body = server.http.get("/v1/usage", params={"function": "batch", "from": 0}).json()
    assert body["functions"][0]["total"]["by_status"].get("failed", 0) >= 1


def test_prometheus_metering_series(server: Server, tenant: httpx.Client) -> None:
    deploy(server, tenant, "scraped", WORK, memory_mb=512)
    assert tenant.post("/v1/functions/scraped/invoke", json={}).status_code == 200
    job = tenant.post("/v1/jobs", json={"function": "scraped", "shards": [{}, {}]})
    assert job.status_code == 202, job.text
    records = invocations(tenant, "scraped")
    text = server.http.get("/metrics").text
    labels = 'function="scraped",tenant="mt-a"'
    gb_s = next(line for line in text.splitlines()
                if line.startswith(f"faasbox_gb_seconds_total{{{labels}}}"))
    assert float(gb_s.split()[-1]) >= sum(r["gb_s"] for r in records) - 1e-9
    # the call's cold start, and maybe the shards' (they may need a second instance)
    cold = next(line for line in text.splitlines()
                if line.startswith(f"faasbox_cold_start_seconds_count{{{labels}}}"))
    assert float(cold.split()[-1]) >= 1.0
    assert 'faasbox_jobs{function="scraped",state="' in text  # labels in name order
    assert "faasbox_instances{" in text
