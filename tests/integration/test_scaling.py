"""The live scaling loop: a burst scales out in parallel and back to zero after the grace
period; provisioned capacity is kept warm; the status endpoint shows it all."""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, gate_dir, open_tempdir

BURST = 50
SLEEPY = {"main.py": """
    import os, time
    def handler(event, context):
        event = event or {}
        if "gate" in event:  # hold the instance until the file exists (at most 100 s)
            if not os.path.isdir(os.path.dirname(event["gate"])):
                raise RuntimeError("the gate dir is not visible in the instance")
            deadline = time.monotonic() + 100
            while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(event.get("sleep", 1.0))
        return context.instance_id
"""}
# the autoscaler alone decides when instances go: the keep-alive policy keeps nothing
# (fixed, 0 s), the windows are short, and the grace period is 2 s
SCALING_ENV = {
    "FAASBOX_NODE_MEMORY_MB": str(BURST * 128 + 1024),
    "FAASBOX_ACQUIRE_TIMEOUT_S": "30",
    "FAASBOX_KEEPALIVE_POLICY": "fixed",
    "FAASBOX_KEEPALIVE_ARGS": "ttl_s=0",
    "FAASBOX_STABLE_WINDOW_S": "3",
    "FAASBOX_PANIC_WINDOW_S": "1",
    "FAASBOX_SCALE_TO_ZERO_GRACE_S": "2",
}


@pytest.fixture(scope="module")
def scaling_server() -> Iterator[Server]:
    root = open_tempdir()
    srv = Server(root / "data", SCALING_ENV).start()
    srv.http.close()
    srv.http = httpx.Client(base_url=srv.url, timeout=120,
                            limits=httpx.Limits(max_connections=BURST + 10),
                            headers={"Authorization": f"Bearer {srv.admin_key}"})
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


def status(server: Server, name: str) -> dict[str, Any]:
    body = server.http.get("/v1/status").json()
    return dict(next(f for f in body["functions"] if f["name"] == name))


def test_burst_scales_out_in_parallel_and_back_to_zero_after_grace(
        scaling_server: Server) -> None:
    server = scaling_server
    name = f"s-burst-{uuid.uuid4().hex[:8]}"  # its own name each run: the rates are its own
    version = server.deploy(name, SLEEPY, max_instances=BURST, memory_mb=128,
                            idle_ttl_s=60, timeout_s=120).json()["latest_version"]
    gate = gate_dir() / f"gate-{uuid.uuid4().hex}"
    start = threading.Barrier(BURST)

    def call(_: int) -> httpx.Response:
        start.wait()
        return server.invoke(name, {"gate": str(gate)})

    def busy() -> int:
        return sum(i["state"] == "busy" and i["version"] == version
                   for i in server.instances(name))

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        calls = [pool.submit(call, i) for i in range(BURST)]
        try:
            # every handler holds its instance until the gate opens: all fifty at once
            server.wait_for(lambda: busy() == BURST, timeout=90,
                            what=f"{BURST} calls running at once")
        finally:
            opened = time.monotonic()  # before any call ends, so before the grace begins
            gate.touch()
        results = [c.result() for c in calls]
    assert all(r.status_code == 200 for r in results), [r.text for r in results][:3]
    assert len({r.json() for r in results}) == BURST
    after = status(server, name)
    # not dropped at once: the stable window still averages the burst (how many are kept
    # depends on how long the burst lasted in that window), and zero comes after the grace
    assert after["instances"]["total"] >= 1
    # calls that started instances (a few may find one the panicking autoscaler started)
    assert 1 <= after["cold_starts_per_min"] <= BURST
    server.wait_for(lambda: server.instances(name) == [], timeout=60,
                    what="scale to zero after the grace period")
    # the panic hold (a 3 s stable window) and the 2 s grace come first
    assert time.monotonic() - opened > 2.0
    assert status(server, name)["desired"] == 0


def test_provisioned_capacity_is_kept_warm(scaling_server: Server) -> None:
    server = scaling_server
    server.deploy("s-prov", SLEEPY, max_instances=5, provisioned=[
        {"instances": 2, "from": "00:00", "to": "24:00", "timezone": "Europe/Berlin"}])
    server.wait_for(lambda: sum(i["state"] == "idle" for i in server.instances("s-prov")) == 2,
                    what="two provisioned instances")
    time.sleep(1.0)  # several ticks: the autoscaler (0 demand) must not take them away
    assert len(server.instances("s-prov")) == 2
    assert status(server, "s-prov")["floor"] == 2
    resp = server.invoke("s-prov", {"sleep": 0})
    assert resp.headers["x-faasbox-cold-start"] == "false"
    spec = server.http.get("/v1/functions/s-prov").json()["spec"]
    assert spec["provisioned"] == [{"instances": 2, "start": "00:00", "end": "24:00",
                                    "timezone": "Europe/Berlin", "days": "daily"}]


@pytest.mark.parametrize(("window", "needle"), [
    ({"instances": 1, "from": "09:00", "to": "17:00", "timezone": "Europe/Nowhere"},
     "unknown time zone"),
    ({"instances": 1, "from": "09:00", "to": "17:00", "timezone": "America"},
     "unknown time zone"),  # a directory of zones, not one
    ({"instances": 1, "from": "09:00", "to": "17:00", "timezone": "x" * 300},
     "unknown time zone"),  # longer than a file name
    ({"instances": 1, "from": "9am", "to": "17:00"}, "HH:MM"),
    ({"instances": 99, "from": "09:00", "to": "17:00"}, "cannot exceed max_instances"),
])
def test_bad_provisioned_window_is_a_clear_422(scaling_server: Server,
                                               window: dict[str, Any], needle: str) -> None:
    resp = scaling_server.deploy("s-bad", SLEEPY, expect=422, provisioned=[window])
    assert needle in resp.text


def test_status_lists_every_function(scaling_server: Server) -> None:
    server = scaling_server
    server.deploy("s-status", SLEEPY)
    server.invoke("s-status", {"sleep": 0})
    body = server.http.get("/v1/status").json()
    assert {"time", "keepalive_policy", "nodes", "functions"} <= set(body)
    assert body["keepalive_policy"] == "fixed"
    fn = next(f for f in body["functions"] if f["name"] == "s-status")
    assert set(fn["instances"]) == {"starting", "idle", "busy", "stopping", "total"}
    for key in ("in_flight", "waiting", "queue_depth", "desired", "target", "floor", "panic",
                "reason", "cold_starts_per_min", "min_instances", "max_instances"):
        assert key in fn
    assert fn["cold_starts_per_min"] == 1
