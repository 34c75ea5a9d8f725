"""Multi-tenancy end to end: isolation of code, env, listings and traces; keys and their
revocation; the admin's ``?tenant=``; the admin key file; every limit's 429 or 422; the audit
log; who may read ``/metrics``; the Host header check; ``--insecure-no-auth`` refused beyond
loopback."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, free_port, gate_dir, open_tempdir
from tests.tenants import (
    Clients,
    deploy,
    error_code,
    key_id,
    make_key,
    make_tenant,
    revoke,
    set_limits,
    wait_job,
    wait_task,
)

WHO = """
    import os
    def handler(event, context):
        return {"code": "CODE", "secret": os.environ.get("SECRET"),
                "tenant": os.environ.get("FAASBOX_TENANT"), "name": context.function_name,
                "event": event}
"""
ECHO = {"main.py": """
    def handler(event, context):
        return {"event": event}
"""}
BLOCK = {"main.py": """
    import os, time
    def handler(event, context):
        if not os.path.isdir(os.path.dirname(event["release"])):
            raise RuntimeError("the gate dir is not visible in the instance")
        deadline = time.monotonic() + 60
        while not os.path.exists(event["release"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "released"
"""}


@pytest.fixture
def clients() -> Iterator[Clients]:
    pool = Clients()
    yield pool
    pool.close()


def who(code: str) -> dict[str, str]:
    return {"main.py": WHO.replace("CODE", code)}


def traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{'1' * 16}-01"}


# -- isolation ------------------------------------------------------------------------------
def test_same_name_functions_run_their_own_code_and_see_their_own_env(
        server: Server, clients: Clients) -> None:
    make_tenant(server, "ts-a")
    make_tenant(server, "ts-b")
    a = clients(server, make_key(server, "ts-a", "developer"))
    b = clients(server, make_key(server, "ts-b", "developer"))
    deploy(server, a, "hello", who("A"), env={"SECRET": "a-secret"}, expect=201)
    deploy(server, b, "hello", who("B"), env={"SECRET": "b-secret"}, expect=201)  # not 200

    for client, code, secret, tenant in ((a, "A", "a-secret", "ts-a"),
                                         (b, "B", "b-secret", "ts-b")):
        resp = client.post("/v1/functions/hello/invoke", json={"from": code})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"code": code, "secret": secret, "tenant": tenant,
                               "name": "hello", "event": {"from": code}}
        described = client.get("/v1/functions/hello").json()
        assert described["spec"]["env"] == {"SECRET": secret}
        assert [v["version"] for v in client.get("/v1/functions/hello/versions").json()[
            "versions"]] == [1]
    # the admin reaches each tenant's function by naming the tenant
    as_admin = server.http.post("/v1/functions/hello/invoke", params={"tenant": "ts-b"},
                                json=None)
    assert as_admin.json()["code"] == "B"
    # a redeploy by B is a new version of B's function only
    deploy(server, b, "hello", who("B2"), env={"SECRET": "b-secret"}, expect=200)
    assert a.post("/v1/functions/hello/invoke", json=None).json()["code"] == "A"
    assert b.post("/v1/functions/hello/invoke", json=None).json()["code"] == "B2"
    assert "b-secret" not in a.get("/v1/functions").text
    assert "a-secret" not in b.get("/v1/functions").text


def test_listings_and_traces_never_show_the_other_tenant(server: Server, clients: Clients) -> None:
    """Both tenants have a function named ``work`` and use the same trace id and the same
    Idempotency-Key: each still sees only its own things, everywhere."""
    trace = "ab" * 16
    seen: dict[str, dict[str, str]] = {}
    by_tenant: dict[str, httpx.Client] = {}
    for tenant in ("tv-a", "tv-b"):
        make_tenant(server, tenant)
        client = by_tenant[tenant] = clients(server, make_key(server, tenant, "developer"))
        deploy(server, client, "work", ECHO)
        inv = client.post("/v1/functions/work/invoke", json={"t": tenant},
                          headers=traceparent(trace))
        assert inv.status_code == 200, inv.text
        task = client.post("/v1/functions/work/tasks", json={"t": tenant},
                           headers={**traceparent(trace), "Idempotency-Key": "same-key"})
        assert task.status_code == 202 and task.json()["created"], task.text
        job = client.post("/v1/jobs", json={"function": "work", "shards": [1]},
                          headers={**traceparent(trace), "Idempotency-Key": "same-key"})
        assert job.status_code == 202 and job.json()["created"], job.text
        trig = client.post("/v1/functions/work/triggers",
                           json={"name": f"trig-{tenant}", "cron": "0 3 * * *"})
        assert trig.status_code == 201, trig.text
        seen[tenant] = {"invocation": inv.headers["x-faasbox-request-id"],
                        "task": task.json()["task_id"], "job": job.json()["job_id"],
                        "trigger": f"trig-{tenant}"}
        wait_task(client, seen[tenant]["task"])
        wait_job(client, seen[tenant]["job"])

    for me, other in (("tv-a", "tv-b"), ("tv-b", "tv-a")):
        client, mine, theirs = by_tenant[me], seen[me], seen[other]
        listings = {path: client.get(path) for path in (
            "/v1/functions", "/v1/tasks", "/v1/jobs", "/v1/triggers", "/v1/invocations",
            "/v1/status", "/v1/audit", "/v1/functions/work/triggers",
            "/v1/tasks?function=work", "/v1/jobs?function=work",
            "/v1/invocations?function=work", "/v1/invocations?function=work&since=0")}
        for path, resp in listings.items():
            assert resp.status_code == 200, (path, resp.text)
            leaked = [v for v in theirs.values() if v in resp.text] + (
                [other] if other in resp.text else [])
            assert not leaked, (path, leaked)
        assert mine["task"] in listings["/v1/tasks"].text
        assert mine["job"] in listings["/v1/jobs"].text
        assert mine["invocation"] in listings["/v1/invocations"].text
        assert mine["trigger"] in listings["/v1/triggers"].text
        # naming the other tenant's function in a filter finds nothing
        for name in (f"{other}/work", f"../{other}/work", f"{other}%2Fwork"):
            for path in ("/v1/tasks", "/v1/jobs", "/v1/invocations"):
                resp = client.get(path, params={"function": name})
                assert resp.status_code in (200, 422), (path, name, resp.text)
                assert not [v for v in theirs.values() if v in resp.text], (path, name)
        # the shared trace id shows each tenant only its own part
        body = client.get(f"/v1/traces/{trace}").json()
        assert mine["invocation"] in [i["id"] for i in body["invocations"]]
        assert mine["task"] in [t["task_id"] for t in body["tasks"]]
        assert body["jobs"] == [mine["job"]]
        assert not [v for v in theirs.values() if v in str(body)]
        # and the other's things, named directly, do not exist
        for path in (f"/v1/tasks/{theirs['task']}", f"/v1/jobs/{theirs['job']}",
                     f"/v1/invocations/{theirs['invocation']}",
                     f"/v1/functions/work/triggers/{theirs['trigger']}"):
            resp = client.get(path)
            assert resp.status_code == 404, (path, resp.text)
            assert error_code(resp).endswith("not_found")


# -- keys -----------------------------------------------------------------------------------
def test_a_revoked_key_is_refused_from_the_next_request_on(server: Server,
                                                           clients: Clients) -> None:
    make_tenant(server, "tk")
    key = make_key(server, "tk", "developer")
    client = clients(server, key)  # one keep-alive connection before and after
    assert client.get("/v1/whoami").json() == {
        "key_id": key_id(key), "tenant": "tk", "scope": "developer", "functions": None}
    # revoking it through another tenant's path does nothing
    assert server.http.delete(f"/v1/tenants/default/keys/{key_id(key)}").status_code == 404
    assert client.get("/v1/functions").status_code == 200
    revoke(server, "tk", key)
    resp = client.get("/v1/functions")
    assert resp.status_code == 401 and error_code(resp) == "unauthenticated"
    assert resp.headers["www-authenticate"] == 'Bearer realm="faasbox"'
    listed = server.http.get("/v1/tenants/tk/keys").json()["keys"]
    assert key_id(key) not in [k["key_id"] for k in listed]
    assert server.http.delete(f"/v1/tenants/tk/keys/{key_id(key)}").status_code == 404


def test_admin_acts_on_any_tenant_with_the_tenant_parameter_others_cannot(
        server: Server, clients: Clients) -> None:
    make_tenant(server, "tq-a")
    make_tenant(server, "tq-b")
    dev_a = clients(server, make_key(server, "tq-a", "developer"))
    invoke_a = clients(server, make_key(server, "tq-a", "invoke"))
    deploy(server, dev_a, "only-a", ECHO)

    listed = server.http.get("/v1/functions", params={"tenant": "tq-a"}).json()["functions"]
    assert [f["name"] for f in listed] == ["only-a"]
    assert server.http.get("/v1/functions", params={"tenant": "tq-b"}).json() == {
        "functions": []}
    resp = server.http.post("/v1/functions/only-a/invoke", params={"tenant": "tq-a"},
                            json={"by": "admin"})
    assert resp.json() == {"event": {"by": "admin"}}
    deployed = deploy(server, server.http, "by-admin", ECHO, params={"tenant": "tq-b"})
    assert deployed.status_code == 201
    assert [f["name"] for f in server.http.get(
        "/v1/functions", params={"tenant": "tq-b"}).json()["functions"]] == ["by-admin"]

    # a tenant that does not exist is not a place to deploy to
    ghost = server.http.get("/v1/functions", params={"tenant": "tq-ghost"})
    assert ghost.status_code == 404, ghost.text
    assert server.http.put("/v1/functions/x", params={"tenant": "tq-ghost"},
                           json={"handler": "main:handler"}).status_code == 404

    # anyone else: their own tenant only
    assert dev_a.get("/v1/functions", params={"tenant": "tq-a"}).status_code == 200
    for client, path in ((dev_a, "/v1/functions"), (invoke_a, "/v1/functions/x/invoke"),
                         (dev_a, "/v1/audit")):
        method = "POST" if path.endswith("invoke") else "GET"
        for tenant in ("tq-b", "default", "tq-ghost"):
            resp = client.request(method, path, params={"tenant": tenant})
            assert resp.status_code == 403, (path, tenant, resp.text)
            assert error_code(resp) == "forbidden"


def test_first_start_writes_a_0600_admin_key_that_a_restart_keeps(make_server: Any) -> None:
    srv = make_server()
    path: Path = srv.data / "admin.key"
    key = path.read_text().strip()
    assert re.fullmatch(r"fbx_[0-9a-f]{12}_[0-9a-f]{64}", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(srv.data.stat().st_mode) == 0o711
    assert srv.http.get("/v1/whoami").json() == {
        "key_id": key_id(key), "tenant": "default", "scope": "admin", "functions": None}
    srv.stop()

    again = make_server(data=srv.data)
    assert again.admin_key == key == path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again.http.get("/v1/whoami").status_code == 200
    admin_keys = [k for k in again.http.get("/v1/tenants/default/keys").json()["keys"]
                  if k["scope"] == "admin"]
    assert [k["key_id"] for k in admin_keys] == [key_id(key)]
    again.stop()

    path.unlink()  # a lost key file: the next start writes a new key, as carefully
    third = make_server(data=srv.data)
    assert third.admin_key != key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert third.http.get("/v1/whoami").json()["scope"] == "admin"


# -- limits ---------------------------------------------------------------------------------
def _over(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code, resp.text
    if status == 429:
        assert int(resp.headers["retry-after"]) >= 1


def test_rate_limit(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-rate")
    dev = clients(server, make_key(server, "tl-rate", "developer"))
    deploy(server, dev, "fn", ECHO)
    set_limits(server, "tl-rate", rate_per_s=0.001, burst=1)  # one call, then ~1000 s
    assert dev.post("/v1/functions/fn/invoke", json=1).status_code == 200
    _over(dev.post("/v1/functions/fn/invoke", json=2), 429, "rate_exceeded")
    _over(dev.post("/v1/functions/fn/tasks", json=3), 429, "rate_exceeded")
    _over(dev.post("/v1/jobs", json={"function": "fn", "shards": [1]}), 429, "rate_exceeded")
    # back to the default (no rate limit)
    set_limits(server, "tl-rate", rate_per_s=None, burst=None)
    assert dev.post("/v1/functions/fn/invoke", json=4).status_code == 200


def test_queue_limit(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-queue", max_queued_tasks=1)
    dev = clients(server, make_key(server, "tl-queue", "developer"))
    deploy(server, dev, "fn", ECHO)
    _over(dev.post("/v1/functions/fn/tasks:batch", json=[1, 2]), 429, "queue_full")
    _over(dev.post("/v1/jobs", json={"function": "fn", "shards": [1, 2]}), 429, "queue_full")
    # and every other way a request makes tasks: a workflow's first stage, a publish to a
    # topic with two subscribers
    _over(dev.post("/v1/workflows", json={"chain": [{"map": "fn"}], "input": [1, 2]}), 429,
          "queue_full")
    deploy(server, dev, "fn2", ECHO)
    assert dev.post("/v1/topics", json={"name": "t"}).status_code == 201
    for fn in ("fn", "fn2"):
        assert dev.post("/v1/topics/t/subscriptions", json={"function": fn}).status_code == 201
    _over(dev.post("/v1/topics/t/publish", json={"message": 1}), 429, "queue_full")
    assert dev.get("/v1/tasks").json()["tasks"] == []  # nothing of the refused requests
    assert dev.get("/v1/workflows").json()["workflows"] == []
    # nor a cron trigger's job of two shards, every second: its fires are skipped
    resp = dev.post("/v1/functions/fn/triggers", json={
        "name": "big", "cron": "* * * * * *", "job": {"shards": {"count": 2}}})
    assert resp.status_code == 201, resp.text
    view = server.wait_for(lambda: (lambda v: v if v["skipped"] >= 2 else None)(
        dev.get("/v1/functions/fn/triggers/big").json()), what="two fires skipped")
    assert view["fires"] == 0 and dev.get("/v1/jobs").json()["jobs"] == []
    # nor a redrive of two dead tasks at once
    assert dev.delete("/v1/functions/fn/triggers/big").status_code == 204
    deploy(server, dev, "bad", {"main.py": "def handler(e, c):\n    raise ValueError(e)\n"})
    assert dev.put("/v1/functions/bad/task-policy", json={"max_attempts": 1}).status_code == 200
    for n in range(2):
        task = dev.post("/v1/functions/bad/tasks", json=n).json()
        assert wait_task(dev, task["task_id"])["status"] == "dead"
    _over(dev.post("/v1/tasks:redrive", json={"function": "bad"}), 429, "queue_full")
    assert dev.post("/v1/tasks:redrive", json={"function": "x" * 5000}).status_code == 422


def test_tenant_concurrency_limit(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-conc", max_concurrency=1)
    dev = clients(server, make_key(server, "tl-conc", "developer"))
    deploy(server, dev, "block", BLOCK)
    deploy(server, dev, "other", ECHO)
    release = gate_dir() / "release"
    results: list[httpx.Response] = []
    background = clients(server, dev.headers["authorization"].split()[1])
    first = threading.Thread(target=lambda: results.append(background.post(
        "/v1/functions/block/invoke", json={"release": str(release)})))
    first.start()
    try:
        server.wait_for(lambda: server.http.get("/v1/tenants/tl-conc").json()["usage"][
            "running"] == 1, what="the first call running")
        for name in ("other", "block"):
            _over(dev.post(f"/v1/functions/{name}/invoke", json={"release": str(release)}),
                  429, "tenant_concurrency_exceeded")
    finally:
        release.touch()
        first.join(60)
    assert [r.status_code for r in results] == [200]
    assert dev.post("/v1/functions/other/invoke", json=1).status_code == 200


def test_reserved_concurrency_limit(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-res")
    dev = clients(server, make_key(server, "tl-res", "developer"))
    deploy(server, dev, "stopped", ECHO, reserved_concurrency=0)  # 0 stops the function
    _over(dev.post("/v1/functions/stopped/invoke", json=1), 429,
          "reserved_concurrency_exceeded")
    deploy(server, dev, "stopped", ECHO, reserved_concurrency=1)
    assert dev.post("/v1/functions/stopped/invoke", json=1).status_code == 200


def test_tenant_memory_limit(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-mem", max_memory_mb=128)
    dev = clients(server, make_key(server, "tl-mem", "developer"))
    deploy(server, dev, "big", ECHO, memory_mb=256)
    _over(dev.post("/v1/functions/big/invoke", json=1), 429, "tenant_memory_exceeded")
    set_limits(server, "tl-mem", max_memory_mb=512)
    assert dev.post("/v1/functions/big/invoke", json=1).status_code == 200


def test_deploy_caps(server: Server, clients: Clients) -> None:
    make_tenant(server, "tl-deploy", max_functions=1, max_function_memory_mb=128,
                max_function_timeout_s=1, max_concurrency=10)
    dev = clients(server, make_key(server, "tl-deploy", "developer"))
    deploy(server, dev, "f1", ECHO, timeout_s=1, reserved_concurrency=9)
    _over(deploy(server, dev, "f1", ECHO, expect=422, timeout_s=1, memory_mb=256), 422,
          "memory_limit_exceeded")
    _over(deploy(server, dev, "f1", ECHO, expect=422, timeout_s=5), 422,
          "timeout_limit_exceeded")
    _over(deploy(server, dev, "f1", ECHO, expect=422, timeout_s=1, reserved_concurrency=10),
          422, "reserved_concurrency_exceeded")
    _over(deploy(server, dev, "f2", ECHO, expect=422, timeout_s=1), 422,
          "max_functions_exceeded")
    assert [f["name"] for f in dev.get("/v1/functions").json()["functions"]] == ["f1"]
    assert [v["version"] for v in dev.get("/v1/functions/f1/versions").json()[
        "versions"]] == [1]
    # a limit that is not one, or out of range, is refused
    for limits in ({"max_things": 1}, {"max_concurrency": 0}, {"rate_per_s": -1}):
        resp = server.http.patch("/v1/tenants/tl-deploy", json={"limits": limits})
        assert resp.status_code == 422, (limits, resp.text)


# -- audit ----------------------------------------------------------------------------------
def test_the_audit_log_records_who_changed_what(server: Server, clients: Clients) -> None:
    admin = key_id(server.admin_key)
    make_tenant(server, "tau")
    dev_key = make_key(server, "tau", "developer")
    dev = clients(server, dev_key)
    deploy(server, dev, "fn", ECHO)
    assert dev.post("/v1/functions/fn/triggers",
                    json={"name": "t1", "cron": "0 3 * * *"}).status_code == 201
    assert dev.patch("/v1/functions/fn/triggers/t1", json={"enabled": False}).status_code == 200
    assert dev.delete("/v1/functions/fn/triggers/t1").status_code == 204
    assert dev.delete("/v1/functions/fn").status_code == 204
    set_limits(server, "tau", max_concurrency=7)
    assert server.http.patch("/v1/tenants/tau", json={"weight": 2}).status_code == 200
    own_view = dev.get("/v1/audit").json()["audit"]
    revoke(server, "tau", dev_key)
    make_tenant(server, "tau-gone")
    assert server.http.delete("/v1/tenants/tau-gone").status_code == 204

    rows = server.http.get("/v1/audit", params={"tenant": "tau"}).json()["audit"]
    got = [(r["action"], r["key_id"], r["target"]) for r in reversed(rows)]
    dev_id = key_id(dev_key)
    assert got == [
        ("tenant.create", admin, "tau"),
        ("key.create", admin, dev_id),
        ("function.deploy", dev_id, "fn"),
        ("trigger.create", dev_id, "fn/t1"),
        ("trigger.update", dev_id, "fn/t1"),
        ("trigger.delete", dev_id, "fn/t1"),
        ("function.delete", dev_id, "fn"),
        ("tenant.update", admin, "tau"),
        ("tenant.update", admin, "tau"),
        ("key.revoke", admin, dev_id),
    ]
    limit_change = [r for r in rows if r["action"] == "tenant.update"][-1]
    assert limit_change["detail"] == {"limits": {"max_concurrency": 7}}
    assert {r["tenant"] for r in rows} == {"tau"}
    assert rows[0]["at"] >= rows[-1]["at"]
    # a developer sees its own tenant's log only; the admin sees every tenant's
    assert {r["tenant"] for r in own_view} == {"tau"}
    everything = server.http.get("/v1/audit", params={"limit": 1000}).json()["audit"]
    assert ("tenant.delete", "tau-gone") in {(r["action"], r["target"]) for r in everything}
    assert {"tau", "tau-gone", "default"} <= {r["tenant"] for r in everything}


# -- metrics, Host, --insecure-no-auth -------------------------------------------------------
def test_metrics_need_the_admin_key(server: Server) -> None:
    make_tenant(server, "tm")
    for key, status in ((None, 401), (make_key(server, "tm", "developer"), 403),
                        (make_key(server, "tm", "invoke"), 403), (server.admin_key, 200)):
        with server.client(key) as client:
            assert client.get("/metrics").status_code == status, key


def test_metrics_public_serves_metrics_without_a_key_and_nothing_else(
        make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_METRICS_PUBLIC": "1"})
    with srv.client(None) as anonymous:
        resp = anonymous.get("/metrics")
        assert resp.status_code == 200, resp.text
        assert "faasbox_" in resp.text
        for path in ("/v1/functions", "/v1/node", "/v1/status"):
            assert anonymous.get(path).status_code == 401, path
    assert srv.http.get("/metrics").status_code == 200  # a key does no harm
    with srv.client("not-a-key") as bad:
        assert bad.get("/metrics").status_code == 200


def test_a_loopback_server_answers_only_to_loopback_host_names(server: Server) -> None:
    port = server.port
    for host in ("evil.example", "127.0.0.1.evil.example", f"evil.example:{port}",
                 "localhost.evil.example", ""):
        for path in ("/healthz", "/v1/functions"):
            resp = server.http.get(path, headers={"Host": host})
            assert resp.status_code == 400, (host, path, resp.text)
            assert error_code(resp) == "invalid_host"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert server.http.get("/v1/functions", headers={"Host": host}).status_code == 200


def _faasbox_server(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "faasbox", "server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, env", [
    (["--insecure-no-auth", "--host", "0.0.0.0"], {}),
    (["--insecure-no-auth", "--host", "::"], {}),
    (["--host", "0.0.0.0"], {"FAASBOX_INSECURE_NO_AUTH": "1"}),
], ids=["flag", "flag-ipv6", "env"])
def test_insecure_no_auth_is_refused_beyond_loopback(args: list[str],
                                                     env: dict[str, str]) -> None:
    data = open_tempdir() / "data"
    proc = _faasbox_server(*args, "--port", str(free_port()), "--data", str(data), env=env)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the server started with --insecure-no-auth on a public address")
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert "--insecure-no-auth" in stderr and "not a loopback address" in stderr, stderr
    assert not (data / "faasbox.db").exists()  # refused before anything was made


def test_insecure_no_auth_on_loopback_serves_without_keys() -> None:
    data = open_tempdir() / "data"
    port = free_port()
    proc = _faasbox_server("--insecure-no-auth", "--port", str(port), "--data", str(data),
                           "--log-level", "warning")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert client.get("/v1/whoami").json() == {
                "key_id": None, "tenant": "default", "scope": "admin", "functions": None}
            assert client.get("/v1/functions").status_code == 200
            assert client.get("/v1/functions", headers={"Host": "evil.example"}
                              ).status_code == 400
        assert not (data / "admin.key").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert "auth is OFF" in stderr
