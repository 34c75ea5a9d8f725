"""The default keep-alive policy starts two instances beside a cold start (docs/elasticity.md,
"Bursts: instances started ahead"): the next calls of a rising burst find them warm, they
stay within max_instances and the tenant's memory, and go when no call takes them."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, gate_dir
from tests.tenants import Clients, deploy, make_key, make_tenant

GATED = {"main.py": """
    import os, time
    def handler(event, context):
        deadline = time.monotonic() + 60
        while event and not os.path.exists(event["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        return context.instance_id
"""}
DEFAULTS = {"FAASBOX_KEEPALIVE_ARGS": ""}  # the policy as users get it


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    yield made
    made.close()


def ahead(server: Server, name: str) -> list[dict[str, Any]]:
    return [i for i in server.instances(name) if i["started_ahead"]]


def instances_of(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/functions/{name}/instances")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["instances"])


def test_the_next_calls_of_a_burst_find_the_instances_started_beside_its_first(
        make_server: Any) -> None:
    server: Server = make_server(env=DEFAULTS)
    server.deploy("ba-burst", GATED, max_instances=5, memory_mb=128)
    first = server.invoke("ba-burst")
    assert first.headers["x-faasbox-cold-start"] == "true"
    server.wait_for(lambda: [i["state"] for i in ahead(server, "ba-burst")] == ["idle"] * 2,
                    what="two instances started ahead, idle")
    gate = gate_dir() / f"gate-{uuid.uuid4().hex}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = []
        for n in range(1, 4):  # three at once: the first call's instance and the two
            calls.append(pool.submit(server.invoke, "ba-burst", {"gate": str(gate)}))
            server.wait_for(lambda n=n: sum(i["state"] == "busy"
                                            for i in server.instances("ba-burst")) == n,
                            what=f"{n} calls running")
        fourth = pool.submit(server.invoke, "ba-burst", {"gate": str(gate)})
        # the fourth is cold and starts more, but max_instances (5) bounds them: one more
        server.wait_for(lambda: len(server.instances("ba-burst")) == 5, what="5 instances")
        gate.touch()
        results = [c.result() for c in calls]
        last = fourth.result()
    assert [r.headers["x-faasbox-cold-start"] for r in results] == ["false"] * 3
    assert len({r.json() for r in results}) == 3
    assert last.headers["x-faasbox-cold-start"] == "true"
    assert len(server.instances("ba-burst")) == 5


def test_instances_started_ahead_go_when_no_call_takes_them(make_server: Any) -> None:
    server: Server = make_server(env={"FAASBOX_KEEPALIVE_ARGS": "ahead_keep_s=1"})
    server.deploy("ba-unused", GATED, max_instances=5, memory_mb=128)
    served = server.invoke("ba-unused").json()
    server.wait_for(lambda: len(ahead(server, "ba-unused")) == 2, what="two started ahead")
    server.wait_for(lambda: [i["id"] for i in server.instances("ba-unused")] == [served],
                    what="the two unused instances stopped after their keep-alive")


def test_instances_started_ahead_stay_within_the_tenants_memory(
        make_server: Any, clients: Clients) -> None:
    server: Server = make_server(env=DEFAULTS)
    make_tenant(server, "ba-team", max_memory_mb=256)
    dev: httpx.Client = clients(server, make_key(server, "ba-team", "developer"))
    deploy(server, dev, "ba-small", GATED, memory_mb=128, max_instances=5)
    assert dev.post("/v1/functions/ba-small/invoke").status_code == 200
    # one more fits the tenant's 256 MB, not two; and none is taken from anybody else
    server.wait_for(lambda: len(instances_of(dev, "ba-small")) == 2,
                    what="one instance started ahead")
    assert [i["started_ahead"] for i in instances_of(dev, "ba-small")].count(True) == 1
    # the tenant's next function still starts: an idle instance started ahead gives way
    deploy(server, dev, "ba-other", GATED, memory_mb=256, max_instances=1)
    assert dev.post("/v1/functions/ba-other/invoke").status_code == 200
    # and at once after a cold start, while the one started beside it may still be starting
    # (its memory is the tenant's until it is up): the call waits for it, never a 429
    for _ in range(5):
        assert dev.post("/v1/functions/ba-small/invoke").status_code == 200
        resp = dev.post("/v1/functions/ba-other/invoke")
        assert resp.status_code == 200, resp.text
