"""Who may call what: every route of the API with every kind of key.

The route list is the server's own: ``faasbox.api.auth.SCOPES`` (the table each route reads its
scope from) and the live ``/openapi.json`` must name the same routes, and :data:`ROUTES` here
must cover each of them with the scope this test expects, so a route added without deciding
who may call it fails here.

Each route is called with eight keys against the resources of tenant ``A`` (a function, a task,
a job, a trigger, an invocation and its trace; tenant ``B`` has the same of its own):

- no key, a malformed key, a revoked key: 401 ``unauthenticated`` with ``WWW-Authenticate``;
- a key whose scope is below the route's: 403 ``forbidden``;
- tenant B's developer key on A's resources: 404 (another tenant's things do not exist for
  it), and its listings never show A's things;
- an invoke key limited to other functions: 403 on routes naming a function, 404 for a task
  of a function it may not call;
- A's invoke and developer keys, and the admin key (of the default tenant, with
  ``?tenant=A``): the route's success status.

A refused delete must leave its victim in place; an allowed one gets a fresh victim next time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from faasbox.api.auth import SCOPES
from tests.conftest import Server
from tests.tenants import (
    code_zip,
    deploy,
    make_key,
    make_tenant,
    revoke,
    wait_job,
    wait_task,
)

A, B = "mx-a", "mx-b"
FN_A, FN_B = "alpha-fn", "beta-fn"
ECHO = {"main.py": """
    def handler(event, context):
        return {"event": event}
"""}
KEYS = ("none", "malformed", "revoked", "other_tenant", "invoke", "invoke_other", "developer",
        "admin")
KEY_SCOPE = {"invoke": "invoke", "invoke_other": "invoke", "developer": "developer",
             "other_tenant": "developer", "admin": "admin"}
RANK = {"invoke": 0, "developer": 1, "admin": 2}
HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"}


@dataclass
class World:
    server: Server
    keys: dict[str, str | None]
    a: dict[str, str]  # A's ids: function, task, job, trigger, invocation, trace
    b: dict[str, str]
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    victims: dict[str, str] = field(default_factory=dict)
    n: Iterator[int] = field(default_factory=itertools.count)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self.n)}"

    # -- victims of deletes: made by the admin in tenant A ----------------------------------
    def victim(self, kind: str) -> str:
        if kind not in self.victims:
            self.victims[kind] = self._make(kind)
        return self.victims[kind]

    def consume(self, kind: str) -> None:
        self.victims.pop(kind, None)

    def _make(self, kind: str) -> str:
        http, name = self.server.http, self.fresh(f"victim-{kind}")
        if kind == "function":
            resp = http.put(f"/v1/functions/{name}", params={"tenant": A}, json={
                "handler": "main:handler", "check": False,
                "code_zip": code_zip(self.server, name, ECHO)})
        elif kind == "trigger":
            resp = http.put(f"/v1/functions/{FN_A}/triggers/{name}", params={"tenant": A},
                            json={"cron": "0 4 * * *"})
        elif kind == "tenant":
            resp = http.post("/v1/tenants", json={"name": f"mx-{name}"})
            name = f"mx-{name}"
        else:  # key
            resp = http.post(f"/v1/tenants/{A}/keys", json={"scope": "invoke"})
            name = resp.json().get("key_id", "")
        assert resp.status_code in (200, 201), resp.text
        return name

    def exists(self, kind: str) -> bool:
        http, name = self.server.http, self.victims[kind]
        if kind == "function":
            return http.get(f"/v1/functions/{name}", params={"tenant": A}).status_code == 200
        if kind == "trigger":
            return http.get(f"/v1/functions/{FN_A}/triggers/{name}",
                            params={"tenant": A}).status_code == 200
        if kind == "tenant":
            return http.get(f"/v1/tenants/{name}").status_code == 200
        keys = http.get(f"/v1/tenants/{A}/keys").json()["keys"]
        return any(k["key_id"] == name for k in keys)

    def client(self, key: str) -> httpx.Client:
        if key not in self.clients:
            self.clients[key] = self.server.client(self.keys[key])
        return self.clients[key]


@dataclass(frozen=True)
class Case:
    """A route: the least scope it needs, what it acts on, its success status and a request
    to it (path and JSON body, None for none) against tenant A's resources.

    ``target``: ``open`` (no key needed), ``own`` (the caller's own tenant: lists, whoami,
    creating something new), ``function`` (names A's function), ``resource`` (names one of A's
    tasks, jobs, invocations or traces), ``platform`` (tenants, node, metrics)."""

    scope: str
    target: str
    ok: int
    request: Callable[[World], tuple[str, Any]]
    victim: str | None = None


def _deploy_body(w: World, name: str | None = None) -> dict[str, Any]:
    body = {"handler": "main:handler", "check": False,
            "code_zip": code_zip(w.server, w.fresh("code"), ECHO)}
    return body if name is None else {**body, "name": name}


FN = f"/v1/functions/{FN_A}"
ROUTES: dict[tuple[str, str], Case] = {
    ("GET", "/healthz"): Case("open", "open", 200, lambda w: ("/healthz", None)),
    # invoking
    ("POST", "/v1/functions/{name}/invoke"): Case(
        "invoke", "function", 200, lambda w: (f"{FN}/invoke", {"x": 1})),
    ("POST", "/v1/functions/{name}/tasks"): Case(
        "invoke", "function", 202, lambda w: (f"{FN}/tasks", {"x": 1})),
    ("POST", "/v1/functions/{name}/tasks:batch"): Case(
        "invoke", "function", 202, lambda w: (f"{FN}/tasks:batch", [1, 2])),
    ("GET", "/v1/tasks/{task_id}"): Case(
        "invoke", "resource", 200, lambda w: (f"/v1/tasks/{w.a['task']}", None)),
    ("GET", "/v1/whoami"): Case("invoke", "own", 200, lambda w: ("/v1/whoami", None)),
    # tasks, invocations, traces
    ("GET", "/v1/tasks"): Case("developer", "own", 200, lambda w: ("/v1/tasks", None)),
    ("POST", "/v1/tasks/{task_id}/cancel"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/tasks/{w.a['task']}/cancel", None)),
    ("GET", "/v1/invocations"): Case(
        "developer", "own", 200, lambda w: ("/v1/invocations", None)),
    ("GET", "/v1/invocations/{invocation_id}"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/invocations/{w.a['invocation']}", None)),
    ("GET", "/v1/traces/{trace_id}"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/traces/{w.a['trace']}", None)),
    # functions
    ("PUT", "/v1/functions/{name}"): Case(
        "developer", "own", 201,
        lambda w: (f"/v1/functions/{w.fresh('put')}", _deploy_body(w))),
    ("POST", "/v1/functions"): Case(
        "developer", "own", 201, lambda w: ("/v1/functions", _deploy_body(w, w.fresh("post")))),
    ("GET", "/v1/functions"): Case("developer", "own", 200, lambda w: ("/v1/functions", None)),
    ("GET", "/v1/functions/{name}"): Case("developer", "function", 200, lambda w: (FN, None)),
    ("PATCH", "/v1/functions/{name}"): Case(
        "developer", "function", 200, lambda w: (FN, {"description": w.fresh("d")})),
    ("DELETE", "/v1/functions/{name}"): Case(
        "developer", "function", 204,
        lambda w: (f"/v1/functions/{w.victim('function')}", None), victim="function"),
    ("GET", "/v1/functions/{name}/versions"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/versions", None)),
    ("GET", "/v1/functions/{name}/instances"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/instances", None)),
    ("GET", "/v1/functions/{name}/task-policy"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/task-policy", None)),
    ("PUT", "/v1/functions/{name}/task-policy"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/task-policy", {"max_attempts": 3})),
    ("GET", "/v1/functions/{name}/queue"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/queue", None)),
    ("GET", "/v1/status"): Case("developer", "own", 200, lambda w: ("/v1/status", None)),
    # jobs (the body names A's function)
    ("POST", "/v1/jobs"): Case(
        "developer", "function", 202, lambda w: ("/v1/jobs", {"function": FN_A, "shards": [1]})),
    ("GET", "/v1/jobs"): Case("developer", "own", 200, lambda w: ("/v1/jobs", None)),
    ("GET", "/v1/jobs/{job_id}"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/jobs/{w.a['job']}", None)),
    ("POST", "/v1/jobs/{job_id}/cancel"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/jobs/{w.a['job']}/cancel", None)),
    # triggers
    ("POST", "/v1/functions/{name}/triggers"): Case(
        "developer", "function", 201,
        lambda w: (f"{FN}/triggers", {"name": w.fresh("t"), "cron": "0 5 * * *"})),
    ("GET", "/v1/functions/{name}/triggers"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/triggers", None)),
    ("GET", "/v1/triggers"): Case("developer", "own", 200, lambda w: ("/v1/triggers", None)),
    ("GET", "/v1/functions/{name}/triggers/{trigger}"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/triggers/nightly", None)),
    ("PUT", "/v1/functions/{name}/triggers/{trigger}"): Case(
        "developer", "function", 200,
        lambda w: (f"{FN}/triggers/nightly", {"cron": "0 3 * * *"})),
    ("PATCH", "/v1/functions/{name}/triggers/{trigger}"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/triggers/nightly", {"enabled": True})),
    ("DELETE", "/v1/functions/{name}/triggers/{trigger}"): Case(
        "developer", "function", 204,
        lambda w: (f"{FN}/triggers/{w.victim('trigger')}", None), victim="trigger"),
    # the audit log: a developer sees its own tenant's
    ("GET", "/v1/audit"): Case("developer", "own", 200, lambda w: ("/v1/audit", None)),
    # metering: the caller's own tenant
    ("GET", "/v1/usage"): Case("developer", "own", 200, lambda w: ("/v1/usage", None)),
    ("GET", "/v1/cost"): Case("developer", "own", 200, lambda w: ("/v1/cost", None)),
    ("GET", "/v1/waste"): Case("developer", "own", 200, lambda w: ("/v1/waste", None)),
    # the platform: admin only
    ("GET", "/v1/node"): Case("admin", "platform", 200, lambda w: ("/v1/node", None)),
    ("GET", "/metrics"): Case("admin", "platform", 200, lambda w: ("/metrics", None)),
    ("POST", "/v1/tenants"): Case(
        "admin", "platform", 201, lambda w: ("/v1/tenants", {"name": w.fresh("mx-new")})),
    ("GET", "/v1/tenants"): Case("admin", "platform", 200, lambda w: ("/v1/tenants", None)),
    ("GET", "/v1/tenants/{tenant}"): Case(
        "admin", "platform", 200, lambda w: (f"/v1/tenants/{A}", None)),
    ("PATCH", "/v1/tenants/{tenant}"): Case(
        "admin", "platform", 200, lambda w: (f"/v1/tenants/{A}", {"weight": 1})),
    ("DELETE", "/v1/tenants/{tenant}"): Case(
        "admin", "platform", 204, lambda w: (f"/v1/tenants/{w.victim('tenant')}", None),
        victim="tenant"),
    ("POST", "/v1/tenants/{tenant}/keys"): Case(
        "admin", "platform", 201, lambda w: (f"/v1/tenants/{A}/keys", {"scope": "invoke"})),
    ("GET", "/v1/tenants/{tenant}/keys"): Case(
        "admin", "platform", 200, lambda w: (f"/v1/tenants/{A}/keys", None)),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}"): Case(
        "admin", "platform", 204, lambda w: (f"/v1/tenants/{A}/keys/{w.victim('key')}", None),
        victim="key"),
}


def expected(case: Case, key: str) -> int:
    if case.target == "open":
        return case.ok
    if key in ("none", "malformed", "revoked"):
        return 401
    if RANK[KEY_SCOPE[key]] < RANK[case.scope]:
        return 403
    if key == "invoke_other" and case.target == "function":
        return 403  # its own tenant's function, which this key may not call
    if key == "invoke_other" and case.target == "resource":
        return 404  # a task of a function it may not call is not there for it
    if key == "other_tenant" and case.target in ("function", "resource"):
        return 404
    return case.ok


def _populate(server: Server, dev: str, fn: str) -> dict[str, str]:
    """A function with an invocation (and its trace), a finished task and job, a trigger."""
    client = server.client(dev)
    deploy(server, client, fn, ECHO)
    inv = client.post(f"/v1/functions/{fn}/invoke", json={"hello": fn})
    assert inv.status_code == 200, inv.text
    task = client.post(f"/v1/functions/{fn}/tasks", json={"task": fn})
    assert task.status_code == 202, task.text
    job = client.post("/v1/jobs", json={"function": fn, "shards": [1, 2]})
    assert job.status_code == 202, job.text
    trigger = client.put(f"/v1/functions/{fn}/triggers/nightly", json={"cron": "0 3 * * *"})
    assert trigger.status_code in (200, 201), trigger.text
    ids = {"function": fn, "invocation": inv.headers["x-faasbox-request-id"],
           "trace": inv.headers["x-faasbox-trace-id"], "task": task.json()["task_id"],
           "job": job.json()["job_id"]}
    wait_task(client, ids["task"])
    wait_job(client, ids["job"])
    client.close()
    return ids


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    make_tenant(server, A)
    make_tenant(server, B)
    revoked = make_key(server, A, "developer")
    revoke(server, A, revoked)
    keys: dict[str, str | None] = {
        "none": None,
        "malformed": "not-a-faasbox-key",
        "revoked": revoked,
        "other_tenant": make_key(server, B, "developer"),
        "invoke": make_key(server, A, "invoke"),
        "invoke_other": make_key(server, A, "invoke", functions=["some-other-fn"]),
        "developer": make_key(server, A, "developer"),
        "admin": server.admin_key,
    }
    assert keys["developer"] and keys["other_tenant"]
    w = World(server, keys, _populate(server, keys["developer"], FN_A),
              _populate(server, keys["other_tenant"], FN_B))
    yield w
    for client in w.clients.values():
        client.close()


def test_the_matrix_covers_every_route_of_the_live_server(server: Server) -> None:
    spec = server.http.get("/openapi.json").json()
    live = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
            if method.upper() in HTTP_METHODS}
    assert live - set(SCOPES) == set(), "routes served without a scope in SCOPES"
    assert set(SCOPES) - live == set(), "SCOPES names routes the server does not serve"
    assert set(SCOPES) - set(ROUTES) == set(), "routes missing from this test's ROUTES"
    assert set(ROUTES) - set(SCOPES) == set(), "ROUTES names routes that do not exist"
    # the scope each route needs, as this test specifies it, is the one the server enforces
    assert {r: c.scope for r, c in ROUTES.items()} == SCOPES


def _markers(w: World) -> list[str]:
    """Strings that only A's things contain: none may reach tenant B."""
    return [FN_A, *(v for k, v in w.a.items() if k != "function"), "victim-"]


def _problems(w: World, key: str, case: Case, resp: httpx.Response) -> list[str]:
    """What is wrong with an answer whose status was the expected one."""
    status, problems = resp.status_code, []
    if status == 401:
        if resp.headers.get("www-authenticate") != 'Bearer realm="faasbox"':
            problems.append(f"{key}: 401 without WWW-Authenticate: {resp.headers}")
        error = resp.json().get("error", {})
        if error.get("code") != "unauthenticated" or not error.get("message"):
            problems.append(f"{key}: 401 body {resp.text[:200]}")
    elif status == 403 and resp.json()["error"]["code"] != "forbidden":
        problems.append(f"{key}: 403 body {resp.text[:200]}")
    elif status == 404 and not resp.json()["error"]["code"].endswith("not_found"):
        problems.append(f"{key}: 404 body {resp.text[:200]}")
    if key == "other_tenant" and status < 300:
        leaked = [m for m in _markers(w) if m in resp.text]
        if leaked:
            problems.append(f"{key}: tenant B was shown A's {leaked}: {resp.text[:300]}")
    return problems


@pytest.mark.parametrize("route", list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_each_key_gets_exactly_its_answer(world: World, route: tuple[str, str]) -> None:
    method, _ = route
    case = ROUTES[route]
    got: dict[str, int] = {}
    problems: list[str] = []
    for key in KEYS:
        path, body = case.request(world)
        params = {"tenant": A} if key == "admin" else None
        resp = world.client(key).request(method, path, params=params,
                                         **({} if body is None else {"json": body}))
        got[key] = resp.status_code
        if resp.status_code != expected(case, key):
            problems.append(f"{key}: {resp.status_code} {resp.text[:200]}")
        else:
            problems += _problems(world, key, case, resp)
        if case.victim is not None:
            if resp.status_code < 300:
                world.consume(case.victim)
            elif not world.exists(case.victim):
                problems.append(f"{key}: refused with {resp.status_code}, yet the"
                                f" {case.victim} is gone")
    assert got == {key: expected(case, key) for key in KEYS}, problems
    assert not problems, problems
