"""Service groups on a live server: the API and its errors, dedicated capacity (memory that
nothing outside the group may use, the group's own memory and instance caps), the parent
cgroup and its degraded form, and the warm floor (min_instances, schedule windows, pre-warm
before the cron fires of the group's functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, open_tempdir

ECHO = {"main.py": """
    def handler(event, context):
        return {"event": event}
"""}
# a call holds its instance until the file ``event["gate"]`` exists in the function's code
# folder (bound into a sandboxed instance as it is on the host: the instance sees it appear)
GATE = {"main.py": """
    import os, time
    def handler(event, context):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), event["gate"])
        deadline = time.time() + 60
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.02)
        return {"opened": os.path.exists(path)}
"""}


def group(srv: Server, name: str, expect: int = 201, client: httpx.Client | None = None,
          **spec: Any) -> dict[str, Any]:
    resp = (client or srv.http).post("/v1/service-groups", json={"name": name, **spec})
    assert resp.status_code == expect, resp.text
    return dict(resp.json())


def show(srv: Server, name: str, client: httpx.Client | None = None) -> dict[str, Any]:
    resp = (client or srv.http).get(f"/v1/service-groups/{name}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def busy(srv: Server, function: str) -> int:
    return sum(i["state"] == "busy" for i in srv.instances(function))


def ready(srv: Server, function: str) -> int:
    return sum(i["state"] in ("idle", "busy") for i in srv.instances(function))


class Gate:
    """Calls to gated functions, held until ``open()``."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.folder: Path | None = None
        self.opened = 0
        self.pool = ThreadPoolExecutor(16)
        self.calls: list[Future[httpx.Response]] = []

    def at(self, deployed: httpx.Response) -> None:
        """The gate is in the code folder of this deploy (every gated function's)."""
        self.folder = self.srv.data / "code" / deployed.json()["code_sha256"]

    @property
    def event(self) -> dict[str, str]:
        return {"gate": f"gate{self.opened}"}

    def call(self, function: str) -> Future[httpx.Response]:
        fut = self.pool.submit(self.srv.invoke, function, self.event)
        self.calls.append(fut)
        return fut

    def hold(self, function: str, n: int) -> None:
        """``n`` more calls of ``function`` holding an instance each."""
        before = busy(self.srv, function)
        for _ in range(n):
            self.call(function)
        self.srv.wait_for(lambda: busy(self.srv, function) == before + n, timeout=30,
                          what=f"{before + n} busy instances of {function}")

    def _touch(self) -> None:
        assert self.folder is not None
        (self.folder / self.event["gate"]).write_text("")

    def open(self) -> list[httpx.Response]:
        """Let every held call end; later calls are held by a new gate."""
        self._touch()
        done = [f.result(timeout=60) for f in self.calls]
        self.calls.clear()
        self.opened += 1
        return done

    def close(self) -> None:
        if self.folder is not None:
            self._touch()
        self.pool.shutdown(wait=True)


# -- the API ----------------------------------------------------------------------------------
def test_create_list_show_change_delete(server: Server) -> None:
    # an hour-long window twelve hours from now (UTC): closed whenever the test runs
    closed = f"0 {(time.gmtime().tm_hour + 12) % 24} * * *"
    made = group(server, "crud", memory_mb=512, cpus=1.5, min_instances=0, max_instances=4,
                 schedule=[{"cron": closed, "duration_s": 3600, "instances": 2}])
    assert made["memory_mb"] == 512 and made["cpus"] == 1.5 and made["tenant"] == "default"
    assert made["usage"] == {"instances": 0, "memory_mb": 0, "free_mb": 512, "idle": 0,
                             "busy": 0, "starting": 0}
    assert made["windows"][0]["open"] is False
    names = [g["name"] for g in server.http.get("/v1/service-groups").json()["service_groups"]]
    assert "crud" in names
    view = show(server, "crud")
    assert view["functions"] == [] and view["schedule"][0]["cron"] == closed
    node = server.http.get("/v1/status").json()["nodes"][0]
    assert node["service_groups_mb"] >= 512  # carved out of the node

    resp = server.http.patch("/v1/service-groups/crud", json={"memory_mb": 640, "cpus": None})
    assert resp.status_code == 200, resp.text
    assert resp.json()["memory_mb"] == 640 and resp.json()["cpus"] is None
    assert resp.json()["min_instances"] == 0 and len(resp.json()["schedule"]) == 1

    server.deploy("crud-fn", ECHO, service_group="crud", memory_mb=256)
    assert show(server, "crud")["functions"] == ["crud-fn"]
    assert server.invoke("crud-fn", {"x": 1}).json() == {"event": {"x": 1}}
    # a group that functions use is not deleted, nor shrunk below one of their instances
    resp = server.http.delete("/v1/service-groups/crud")
    assert resp.status_code == 409 and "crud-fn" in resp.json()["error"]["message"], resp.text
    resp = server.http.patch("/v1/service-groups/crud", json={"memory_mb": 128})
    assert resp.status_code == 422 and "crud-fn" in resp.json()["error"]["message"], resp.text
    # a function leaves the group by a new version without it
    server.http.patch("/v1/functions/crud-fn", json={"service_group": None})
    assert show(server, "crud")["functions"] == []
    assert server.http.delete("/v1/service-groups/crud").status_code == 204
    assert server.http.get("/v1/service-groups/crud").status_code == 404
    actions = [(a["action"], a["target"]) for a in server.http.get(
        "/v1/audit", params={"limit": 1000}).json()["audit"]]
    for action in ("create", "update", "delete"):
        assert (f"service_group.{action}", "crud") in actions
    server.http.delete("/v1/functions/crud-fn")


def test_bad_requests(server: Server) -> None:
    group(server, "bad", memory_mb=256, max_instances=2)
    for body, status, words in [
        ({"name": "bad", "memory_mb": 256}, 409, "already exists"),
        ({"name": "Bad Name", "memory_mb": 256}, 422, "name"),
        ({"name": "x", "memory_mb": 64}, 422, "memory_mb"),
        ({"name": "x", "memory_mb": 256, "min_instances": 3, "max_instances": 2}, 422,
         "min_instances"),
        ({"name": "x", "memory_mb": 256, "cpus": 0}, 422, "cpus"),
        ({"name": "x", "memory_mb": 256, "schedule": [{"cron": "* *", "duration_s": 1,
                                                        "instances": 1}]}, 422, "cron"),
        ({"name": "x", "memory_mb": 100_000_000}, 422, "node"),
        ({"name": "x", "memory_mb": 256, "colour": "red"}, 422, "colour"),
    ]:
        resp = server.http.post("/v1/service-groups", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.text, (body, resp.text)
    # a function names a group of its tenant, and fits in it
    resp = server.deploy("bad-fn", ECHO, service_group="nope", expect=422)
    assert resp.json()["error"]["code"] == "service_group_not_found"
    resp = server.deploy("bad-fn", ECHO, service_group="bad", memory_mb=512, expect=422)
    assert resp.json()["error"]["code"] == "service_group_memory_exceeded"
    resp = server.deploy("bad-fn", ECHO, service_group="Not A Name", expect=422)
    assert "service_group" in resp.text
    assert server.http.patch("/v1/service-groups/none-such", json={}).status_code == 404
    assert server.http.delete("/v1/service-groups/none-such").status_code == 404
    assert server.http.delete("/v1/service-groups/bad").status_code == 204


def test_groups_belong_to_a_tenant(server: Server) -> None:
    assert server.http.post("/v1/tenants", json={"name": "acme-g"}).status_code == 201
    dev = server.client(server.http.post("/v1/tenants/acme-g/keys", json={
        "scope": "developer"}).json()["key"])
    other = server.client(server.http.post("/v1/tenants/default/keys", json={
        "scope": "developer"}).json()["key"])
    # the admin manages groups; ?tenant= names the owner
    resp = server.http.post("/v1/service-groups", params={"tenant": "acme-g"},
                            json={"name": "shared-name", "memory_mb": 256})
    assert resp.status_code == 201 and resp.json()["tenant"] == "acme-g", resp.text
    group(server, "shared-name", memory_mb=128)  # the default tenant's, the same name
    # a developer reads its own tenant's groups, and manages none
    listed = dev.get("/v1/service-groups").json()["service_groups"]
    assert [(g["name"], g["memory_mb"]) for g in listed] == [("shared-name", 256)]
    view = show(server, "shared-name", client=dev)
    assert view["tenant"] == "acme-g" and "cgroup" not in view
    assert "cgroup" in show(server, "shared-name")  # the admin sees where it is
    for method, path, body in [("POST", "/v1/service-groups", {"name": "x", "memory_mb": 128}),
                               ("PATCH", "/v1/service-groups/shared-name", {"cpus": 1}),
                               ("DELETE", "/v1/service-groups/shared-name", None)]:
        assert dev.request(method, path, json=body).status_code == 403
    assert dev.get("/v1/service-groups", params={"tenant": "default"}).status_code == 403
    # 404 across tenants
    resp = server.http.post("/v1/service-groups", params={"tenant": "acme-g"},
                            json={"name": "acme-only", "memory_mb": 128})
    assert resp.status_code == 201, resp.text
    assert other.get("/v1/service-groups/acme-only").status_code == 404
    assert server.http.get("/v1/service-groups/acme-only").status_code == 404
    assert dev.get("/v1/service-groups/acme-only").status_code == 200
    # a function can only join a group of its own tenant
    body = {"handler": "main:handler", "service_group": "acme-only"}
    resp = server.http.put("/v1/functions/acme-fn", json=body)
    assert resp.status_code == 422, resp.text
    # deleting the tenant deletes its groups: a new tenant of that name has none
    assert server.http.delete("/v1/tenants/acme-g").status_code == 204
    assert server.http.get("/v1/service-groups", params={"tenant": "acme-g"}).status_code == 404
    assert server.http.post("/v1/tenants", json={"name": "acme-g"}).status_code == 201
    assert server.http.get("/v1/service-groups", params={"tenant": "acme-g"}).json() == {
        "service_groups": []}
    assert server.http.delete("/v1/tenants/acme-g").status_code == 204
    assert server.http.delete("/v1/service-groups/shared-name").status_code == 204
    dev.close()
    other.close()


def test_groups_survive_a_restart(make_server: Any) -> None:
    data = open_tempdir() / "data"
    srv = make_server(env={"FAASBOX_NODE_MEMORY_MB": "1024"}, data=data)
    dirs = group(srv, "kept", memory_mb=384, cpus=0.5, max_instances=2)["cgroup"] or {}
    srv.deploy("kept-fn", ECHO, service_group="kept")
    assert srv.invoke("kept-fn", 1).status_code == 200
    srv.stop()
    assert not any(Path(d).exists() for d in dirs.values())  # a stopped server leaves none
    again = make_server(env={"FAASBOX_NODE_MEMORY_MB": "1024"}, data=data)
    view = show(again, "kept")
    assert view["memory_mb"] == 384 and view["functions"] == ["kept-fn"]
    assert view["cgroup"] == (dirs or None) and all(Path(d).is_dir() for d in dirs.values())
    assert again.http.get("/v1/status").json()["nodes"][0]["service_groups_mb"] == 384
    assert again.invoke("kept-fn", 1).status_code == 200


# -- capacity ---------------------------------------------------------------------------------
def test_nothing_outside_the_group_uses_its_memory(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_NODE_MEMORY_MB": "1024", "FAASBOX_ACQUIRE_TIMEOUT_S": "1"})
    gate = Gate(srv)
    try:
        group(srv, "reserved", memory_mb=512, max_instances=4)
        gate.at(srv.deploy("outside", GATE, memory_mb=256, max_instances=10))
        srv.deploy("inside", GATE, memory_mb=256, service_group="reserved")
        # the node's 512 MB outside the group are held...
        gate.hold("outside", 2)
        node = srv.http.get("/v1/status").json()["nodes"][0]
        assert node["reserved_mb"] == 1024 and node["service_groups_mb"] == 512
        # ...so one more instance outside is refused, though the group's 512 MB are free
        resp = srv.invoke("outside", gate.event)
        assert resp.status_code == 429, resp.text
        assert show(srv, "reserved")["usage"]["memory_mb"] == 0
        # while the group's functions still start in the group's memory
        gate.hold("inside", 2)
        usage = show(srv, "reserved")["usage"]
        assert usage["instances"] == 2 and usage["memory_mb"] == 512 and usage["busy"] == 2
        assert all(r.status_code == 200 and r.json() == {"opened": True} for r in gate.open())
    finally:
        gate.close()


def test_group_functions_stay_within_the_group(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_NODE_MEMORY_MB": "4096", "FAASBOX_ACQUIRE_TIMEOUT_S": "1"})
    gate = Gate(srv)
    try:
        group(srv, "small", memory_mb=512, max_instances=3)
        gate.at(srv.deploy("many", GATE, memory_mb=128, max_instances=10,
                           service_group="small"))
        srv.deploy("wide", GATE, memory_mb=384, max_instances=10, service_group="small")
        # max_instances: 3 instances of the group, though 128 MB are left and the node
        # has 3.5 GB free
        gate.hold("many", 3)
        resp = srv.invoke("many", gate.event)
        assert resp.status_code == 429, resp.text
        assert show(srv, "small")["usage"]["instances"] == 3
        gate.open()
        # memory: 384 + 128 MB fill the group; one more instance of either does not fit
        srv.wait_for(lambda: busy(srv, "many") == 0, what="idle instances")
        gate.hold("wide", 1)  # the idle instances of "many" make room for it
        gate.hold("many", 1)
        assert show(srv, "small")["usage"]["memory_mb"] == 512
        for fn in ("wide", "many"):
            resp = srv.invoke(fn, gate.event)
            assert resp.status_code == 429, (fn, resp.text)
        node = srv.http.get("/v1/status").json()["nodes"][0]
        assert node["reserved_mb"] == 512  # nothing of it outside the group
        assert all(r.status_code == 200 for r in gate.open())
    finally:
        gate.close()


# -- cgroups ----------------------------------------------------------------------------------
def limits_of(dirs: dict[str, str]) -> tuple[int, str]:
    """``(memory limit in bytes, cpu quota as 'quota period')`` of a cgroup, v1 or v2."""
    memory, cpu = Path(dirs["memory"]), Path(dirs["cpu"])
    if (memory / "memory.max").exists():
        return int((memory / "memory.max").read_text()), (cpu / "cpu.max").read_text().strip()
    quota = (cpu / "cpu.cfs_quota_us").read_text().strip()
    period = (cpu / "cpu.cfs_period_us").read_text().strip()
    return int((memory / "memory.limit_in_bytes").read_text()), f"{quota} {period}"


def test_the_group_is_a_parent_cgroup(server: Server) -> None:
    if not (server.feature("memory limit") and server.feature("cpu weight")):
        pytest.skip("cgroups are not writable here (the degraded path is tested below)")
    view = group(server, "cg", memory_mb=384, cpus=0.5, max_instances=2)
    assert view["isolation"].startswith("cgroup v"), view["isolation"]
    assert "384 MB" in view["isolation"] and "0.5 cpus" in view["isolation"]
    dirs = view["cgroup"]
    assert all(Path(d).name == "grp-default.cg" for d in dirs.values()), dirs
    assert limits_of(dirs) == (384 * 2**20, "5000 10000")  # a 10 ms period
    server.deploy("cg-fn", ECHO, service_group="cg", memory_mb=128)
    assert server.invoke("cg-fn", 1).status_code == 200
    [inst] = server.instances("cg-fn")
    for c, d in dirs.items():  # the instance's cgroups are children of the group's
        if c == "cpuset":  # one for the group: the instance is in it
            assert str(inst["pid"]) in (Path(d) / "cgroup.procs").read_text().split()
            continue
        assert (Path(d) / inst["id"]).is_dir(), (d, os.listdir(d))
        assert str(inst["pid"]) in (Path(d) / inst["id"] / "cgroup.procs").read_text().split()
    # new limits
    resp = server.http.patch("/v1/service-groups/cg", json={"memory_mb": 512, "cpus": 1.5})
    assert resp.status_code == 200, resp.text
    assert limits_of(dirs) == (512 * 2**20, "15000 10000")
    resp = server.http.patch("/v1/service-groups/cg", json={"cpus": None})
    assert "cpu not limited" in resp.json()["isolation"]
    assert limits_of(dirs)[1] in ("-1 10000", "max 10000")
    server.http.delete("/v1/functions/cg-fn")
    assert server.http.delete("/v1/service-groups/cg").status_code == 204
    server.wait_for(lambda: not any(Path(d).exists() for d in dirs.values()),
                    what="the group's cgroup removed")


def test_without_writable_cgroups_groups_are_pools_only(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_SANDBOX": "off", "FAASBOX_ACQUIRE_TIMEOUT_S": "1"})
    gate = Gate(srv)
    try:
        view = group(srv, "plain", memory_mb=256, cpus=1, max_instances=1)
        assert view["isolation"] == ("none (cgroups not writable: sandbox disabled"
                                     " (FAASBOX_SANDBOX=off))")
        assert view["cgroup"] is None
        gate.at(srv.deploy("plain-fn", GATE, service_group="plain", max_instances=5))
        gate.hold("plain-fn", 1)
        # still a pool: max_instances 1 of the group holds
        assert srv.invoke("plain-fn", gate.event).status_code == 429
        assert [r.status_code for r in gate.open()] == [200]
    finally:
        gate.close()


AFFINITY = {"main.py": """
    import os
    def handler(event, context):
        try:  # every CPU of the machine: a cpuset clips this to its own
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass
        return sorted(os.sched_getaffinity(0))
"""}


def test_a_group_with_cpus_gets_cpus_of_its_own(make_server: Any) -> None:
    """``cpus`` dedicates CPUs (a cpuset) to the group: its instances run only there, and the
    server, its other instances and a function that asks for every CPU run elsewhere."""
    cpus = sorted(os.sched_getaffinity(0))
    srv = make_server()
    if not srv.feature("dedicated cpus") or len(cpus) < 2:
        pytest.skip("no writable cpuset controller, or one CPU (the degraded path is below)")
    mine, rest = cpus[-1], cpus[:-1]
    view = group(srv, "pinned", memory_mb=512, cpus=1, max_instances=2)
    assert f"cpuset.cpus {mine} dedicated" in view["isolation"], view["isolation"]
    assert Path(view["cgroup"]["cpuset"]).name == "grp-default.pinned"
    srv.deploy("pinned-fn", AFFINITY, service_group="pinned")
    srv.deploy("free-fn", AFFINITY)
    assert srv.invoke("pinned-fn", {}).json() == [mine]
    assert srv.invoke("free-fn", {}).json() == rest  # asked for every CPU, got the shared
    assert sorted(os.sched_getaffinity(srv.proc.pid)) == rest  # the server itself
    # without cpus the group gives its CPU back, and its running instance moves out
    resp = srv.http.patch("/v1/service-groups/pinned", json={"cpus": None})
    assert resp.status_code == 200 and "cpuset" not in resp.json()["isolation"], resp.text
    assert srv.invoke("pinned-fn", {}).json() == cpus
    assert sorted(os.sched_getaffinity(srv.proc.pid)) == cpus
    # and takes one again; removing the group gives it back
    resp = srv.http.patch("/v1/service-groups/pinned", json={"cpus": 0.5})
    assert f"cpuset.cpus {mine} dedicated" in resp.json()["isolation"], resp.text
    assert srv.invoke("pinned-fn", {}).json() == [mine]
    srv.http.delete("/v1/functions/pinned-fn")
    assert srv.http.delete("/v1/service-groups/pinned").status_code == 204
    assert srv.invoke("free-fn", {}).json() == cpus
    assert sorted(os.sched_getaffinity(srv.proc.pid)) == cpus


def test_cpus_stay_shared_where_they_cannot_be_dedicated(make_server: Any) -> None:
    """A group that would take the last shared CPU, or a node without the cpuset controller,
    keeps the quota on shared CPUs and says why."""
    cpus = sorted(os.sched_getaffinity(0))
    srv = make_server()
    if not srv.feature("dedicated cpus"):
        pytest.skip("no writable cpuset controller here")
    view = group(srv, "greedy", memory_mb=256, cpus=len(cpus), max_instances=1)
    n = len(cpus)
    assert (f"cpus shared ({n} dedicated CPU{'s' * (n > 1)} would leave no CPU shared: {n} of"
            f" {n} are not dedicated)") in view["isolation"], view["isolation"]
    srv.deploy("greedy-fn", AFFINITY, service_group="greedy")
    assert srv.invoke("greedy-fn", {}).json() == cpus
    off = make_server(env={"FAASBOX_SANDBOX_DISABLE": "dedicated cpus"})
    assert not off.feature("dedicated cpus")
    view = group(off, "plain", memory_mb=256, cpus=1, max_instances=1)
    assert "cpus shared (disabled by FAASBOX_SANDBOX_DISABLE)" in view["isolation"], view
    off.deploy("plain-fn", AFFINITY, service_group="plain")
    assert off.invoke("plain-fn", {}).json() == cpus


# -- warm floor -------------------------------------------------------------------------------
def test_min_instances_are_spread_over_the_functions(server: Server) -> None:
    group(server, "spread", memory_mb=1024, min_instances=2, max_instances=4)
    server.deploy("spread-a", ECHO, service_group="spread")
    server.deploy("spread-b", ECHO, service_group="spread")
    server.wait_for(lambda: (ready(server, "spread-a"), ready(server, "spread-b")) == (1, 1),
                    what="one warm instance of each function")
    assert server.invoke("spread-b", 1).status_code == 200
    resp = server.http.patch("/v1/service-groups/spread", json={"min_instances": 3})
    assert resp.status_code == 200, resp.text
    # the most recently used function gets the third
    server.wait_for(lambda: (ready(server, "spread-a"), ready(server, "spread-b")) == (1, 2),
                    what="two warm instances of spread-b")
    assert show(server, "spread")["warm_floor"] == {"now": 3, "base": 3}
    server.http.delete("/v1/functions/spread-a")
    server.http.delete("/v1/functions/spread-b")
    server.http.delete("/v1/service-groups/spread")


def test_a_schedule_window_raises_the_floor(server: Server) -> None:
    always = {"cron": "* * * * * *", "duration_s": 3600, "instances": 2}
    group(server, "window", memory_mb=512, max_instances=4, schedule=[always])
    server.deploy("window-fn", ECHO, service_group="window", idle_ttl_s=1)
    server.wait_for(lambda: ready(server, "window-fn") == 2, what="two warm instances")
    view = show(server, "window")
    assert view["windows"][0]["open"] is True and view["warm_floor"]["base"] == 2
    # the window closes: the instances go once idle_ttl_s is over
    resp = server.http.patch("/v1/service-groups/window", json={"schedule": []})
    assert resp.status_code == 200, resp.text
    server.wait_for(lambda: not server.instances("window-fn"), what="instances released")
    server.http.delete("/v1/functions/window-fn")
    server.http.delete("/v1/service-groups/window")


def test_cron_fires_of_its_functions_prewarm_the_group(server: Server) -> None:
    # idle instances stop after 1 s and fires come every 5 s: without pre-warm each fire
    # would start cold
    group(server, "nightly", memory_mb=512, max_instances=2)
    server.deploy("nightly-fn", ECHO, service_group="nightly", idle_ttl_s=1)
    resp = server.http.put("/v1/functions/nightly-fn/triggers/five",
                           json={"cron": "*/5 * * * * *"})
    assert resp.status_code == 200, resp.text
    fires = server.wait_for(lambda: show(server, "nightly")["next_fires"], what="known fires")
    assert fires[0]["function"] == "nightly-fn" and fires[0]["instances"] == 1

    def records() -> Any:
        recs = server.http.get("/v1/invocations", params={"function": "nightly-fn"}).json()[
            "invocations"]
        return recs if len(recs) >= 4 else None

    seen_empty = seen_warm = False

    def watch() -> Any:
        nonlocal seen_empty, seen_warm
        usage = show(server, "nightly")["usage"]
        seen_empty = seen_empty or usage["instances"] == 0
        seen_warm = seen_warm or usage["idle"] > 0
        return records()

    recs = sorted(server.wait_for(watch, timeout=40, what="four fires"),
                  key=lambda r: r["started_at"])
    # the first fire may come too soon after the trigger for a pre-warm; of the next three,
    # a loaded machine may delay one start past its fire
    warm = [not r["cold_start"] for r in recs[1:4]]
    assert sum(warm) >= 2, [(r["started_at"], r["cold_start"]) for r in recs]
    # between fires the group's instance is let go, and comes back warm before the next
    assert seen_empty and seen_warm
    server.http.delete("/v1/functions/nightly-fn/triggers/five")
    server.http.delete("/v1/functions/nightly-fn")
    server.http.delete("/v1/service-groups/nightly")


# -- the CLI and stack files ------------------------------------------------------------------
def cli(srv: Server, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "faasbox", *args], capture_output=True,
                          text=True, env={**os.environ, **srv.cli_env(), "COLUMNS": "200"},
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode == 0) == ok, (proc.stdout, proc.stderr)
    return proc


def test_the_cli_and_stack_files(server: Server) -> None:
    made = cli(server, "group", "create", "cli-batch", "--memory", "512", "--cpus", "1",
               "--max", "3", "--window", "0 2 * * *,3600,2", "--timezone", "Europe/Berlin")
    assert "created service group cli-batch" in made.stdout and "isolation:" in made.stdout
    view = json.loads(cli(server, "group", "show", "cli-batch", "--json").stdout)
    assert view["schedule"] == [{"cron": "0 2 * * *", "duration_s": 3600.0, "instances": 2,
                                 "timezone": "Europe/Berlin"}]
    folder = server.folder("cli-fn", ECHO)
    cli(server, "deploy", str(folder), "--service-group", "cli-batch")
    assert show(server, "cli-batch")["functions"] == ["cli-fn"]
    listed = cli(server, "group", "ls").stdout
    assert "cli-batch" in listed and "512" in listed
    shown = cli(server, "group", "show", "cli-batch").stdout
    assert "cli-fn" in shown and "0 2 * * *" in shown
    refused = cli(server, "group", "rm", "cli-batch", ok=False)
    assert "error: service group 'cli-batch' is used by functions: cli-fn" in refused.stderr
    cli(server, "group", "update", "cli-batch", "--cpus", "0", "--no-windows", "--max", "2")
    view = show(server, "cli-batch")
    assert (view["cpus"], view["schedule"], view["max_instances"]) == (None, [], 2)
    # a stack file names the group as any spec field
    stack = folder.parent / "stack.yaml"
    stack.write_text(f"functions:\n  cli-fn:\n    path: {folder}\n    handler: main:handler\n"
                     "    service_group: cli-batch\n    memory: 256\n")
    cli(server, "deploy", "-f", str(stack))
    fn = server.http.get("/v1/functions/cli-fn").json()
    assert fn["spec"]["service_group"] == "cli-batch" and fn["spec"]["memory_mb"] == 256
    cli(server, "deploy", str(folder), "--service-group", "")
    assert show(server, "cli-batch")["functions"] == []
    assert "deleted service group cli-batch" in cli(server, "group", "rm", "cli-batch").stdout
    server.http.delete("/v1/functions/cli-fn")
