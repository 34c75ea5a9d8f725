"""Who may call what: every route of the API with every kind of key.

The route list is the server's own: ``faasbox.api.auth.SCOPES`` (the table each route reads its
scope from) and the live ``/openapi.json`` must name the same routes, and :data:`ROUTES` here
must cover each of them with the scope this test expects, so a route added without deciding
who may call it fails here.

Each route is called with eight keys against the resources of tenant ``A`` (a function, a task,
a job, a trigger, an invocation and its trace, a topic, a workflow and a workflow definition;
tenant ``B`` has the same of its own, under other names):

- no key, a malformed key, a revoked key: 401 ``unauthenticated`` with ``WWW-Authenticate``;
- a key whose scope is below the route's: 403 ``forbidden``;
- tenant B's developer key on A's resources: 404 (another tenant's things do not exist for
  it), and its listings never show A's things;
- an invoke key limited to other functions: 403 on routes naming a function, 404 for a task
  of a function it may not call;
- A's invoke and developer keys, and the admin key (of the default tenant, with
  ``?tenant=A``): the route's success status.

A route that destroys or changes something acts on a victim of A's (a function, a trigger, a
topic, a subscription, a definition, a dead task, a queued task, a running workflow, the webhook
secret, ...): a refused request, and tenant B's accepted one (which acts in B), must leave it
as it was; one of A's accepted requests must have changed it, and gets a fresh victim next
time.
"""

from __future__ import annotations

import itertools
import time
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
# A's other functions: one whose queue is paused (its tasks and workflows wait), one that fails
PARKED, FAILING = "alpha-parked", "alpha-failing"
ECHO = {"main.py": """
    def handler(event, context):
        return {"event": event}
"""}
FAIL = {"main.py": """
    def handler(event, context):
        raise RuntimeError("fails on purpose")
"""}
KEYS = ("none", "malformed", "revoked", "other_tenant", "invoke", "invoke_other", "developer",
        "admin")
KEY_SCOPE = {"invoke": "invoke", "invoke_other": "invoke", "developer": "developer",
             "other_tenant": "developer", "admin": "admin"}
RANK = {"invoke": 0, "developer": 1, "admin": 2}
TERMINAL = {"succeeded", "failed", "cancelled", "expired", "dead", "redriven"}
HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"}


@dataclass
class World:
    server: Server
    keys: dict[str, str | None]
    # A's ids: function, task, job, invocation, trace, topic, workflow, definition
    a: dict[str, str]
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
        a = {"tenant": A}
        if kind == "function":
            resp = http.put(f"/v1/functions/{name}", params=a, json={
                "handler": "main:handler", "check": False,
                "code_zip": code_zip(self.server, name, ECHO)})
        elif kind == "trigger":
            resp = http.put(f"/v1/functions/{FN_A}/triggers/{name}", params=a,
                            json={"cron": "0 4 * * *"})
        elif kind == "tenant":
            resp = http.post("/v1/tenants", json={"name": f"mx-{name}"})
            name = f"mx-{name}"
        elif kind == "group":
            resp = http.post("/v1/service-groups", params=a,
                             json={"name": name, "memory_mb": 128})
        elif kind == "key":
            resp = http.post(f"/v1/tenants/{A}/keys", json={"scope": "invoke"})
            name = resp.json().get("key_id", "")
        elif kind in ("topic", "bare-topic", "subscription"):
            resp = http.post("/v1/topics", params=a, json={"name": name})
            if kind == "subscription":
                assert resp.status_code == 201, resp.text
                resp = http.post(f"/v1/topics/{name}/subscriptions", params=a,
                                 json={"function": FN_A})
        elif kind == "definition":
            resp = http.put(f"/v1/workflow-definitions/{name}", params=a,
                            json={"chain": [FN_A]})
        elif kind in ("dead-task", "dead-letter"):  # to redrive, to purge
            resp = http.post(f"/v1/functions/{FAILING}/tasks", params=a, json={})
            name = resp.json().get("task_id", "")
            assert _wait_task(self, name)["status"] == "dead"
        elif kind == "queued-task":
            resp = http.post(f"/v1/functions/{PARKED}/tasks", params=a, json={})
            name = resp.json().get("task_id", "")
        elif kind == "workflow":  # running: its one task waits in a paused queue
            resp = http.post("/v1/workflows", params=a, json={"chain": [PARKED]})
            name = resp.json().get("workflow_id", "")
        else:  # the webhook secret
            resp = http.get("/v1/webhook-secret", params=a)
            name = resp.json().get("secret", "")
        assert resp.status_code in (200, 201, 202), resp.text
        return name

    def untouched(self, kind: str) -> bool:
        """Whether the victim is still as it was made."""
        http, name = self.server.http, self.victims[kind]
        a = {"tenant": A}
        if kind == "function":
            return http.get(f"/v1/functions/{name}", params=a).status_code == 200
        if kind == "trigger":
            return http.get(f"/v1/functions/{FN_A}/triggers/{name}",
                            params=a).status_code == 200
        if kind == "tenant":
            return http.get(f"/v1/tenants/{name}").status_code == 200
        if kind == "group":
            return http.get(f"/v1/service-groups/{name}", params=a).status_code == 200
        if kind == "key":
            keys = http.get(f"/v1/tenants/{A}/keys").json()["keys"]
            return any(k["key_id"] == name for k in keys)
        if kind in ("topic", "bare-topic", "subscription"):
            resp = http.get(f"/v1/topics/{name}", params=a)
            subscribers = [s["function"] for s in resp.json().get("subscriptions", [])]
            return resp.status_code == 200 and subscribers == (
                [FN_A] if kind == "subscription" else [])
        if kind == "definition":
            return http.get(f"/v1/workflow-definitions/{name}", params=a).status_code == 200
        if kind in ("dead-task", "dead-letter", "queued-task"):
            resp = http.get(f"/v1/tasks/{name}", params=a)
            return resp.status_code == 200 and resp.json()["status"] == (
                "queued" if kind == "queued-task" else "dead")
        if kind == "workflow":
            return http.get(f"/v1/workflows/{name}", params=a).json()["status"] == "running"
        return bool(http.get("/v1/webhook-secret", params=a).json()["secret"] == name)

    def client(self, key: str) -> httpx.Client:
        if key not in self.clients:
            self.clients[key] = self.server.client(self.keys[key])
        return self.clients[key]


@dataclass(frozen=True)
class Case:
    """A route: the least scope it needs, what it acts on, its success status and a request
    to it (path and JSON body, None for none) against tenant A's resources.

    ``target``: ``open`` (no key needed), ``own`` (the caller's own tenant: lists, whoami,
    creating something new, operations on tasks picked by a filter), ``function`` (names A's
    function), ``resource`` (names one of A's tasks, jobs, invocations, traces, topics,
    workflows or workflow definitions), ``platform`` (tenants, node, metrics).
    ``victim``: the kind of A's thing the request destroys or changes (see World)."""

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
    ("GET", "/v1/nodes"): Case("admin", "platform", 200, lambda w: ("/v1/nodes", None)),
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
    # delivery: a task's deliveries, the webhook secret
    ("GET", "/v1/tasks/{task_id}/deliveries"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/tasks/{w.a['task']}/deliveries", None)),
    ("GET", "/v1/webhook-secret"): Case(
        "developer", "own", 200, lambda w: ("/v1/webhook-secret", None)),
    ("POST", "/v1/webhook-secret:rotate"): Case(
        "developer", "own", 200, lambda w: ("/v1/webhook-secret:rotate", None),
        victim="secret"),
    # task operations: by filter (the ids of A's tasks; B's filter finds none of them)
    ("POST", "/v1/tasks:redrive"): Case(
        "developer", "own", 200,
        lambda w: ("/v1/tasks:redrive", {"ids": [w.victim("dead-task")]}), victim="dead-task"),
    ("POST", "/v1/tasks:cancel"): Case(
        "developer", "own", 200,
        lambda w: ("/v1/tasks:cancel", {"ids": [w.victim("queued-task")]}),
        victim="queued-task"),
    ("POST", "/v1/tasks:purge"): Case(
        "developer", "own", 200,
        lambda w: ("/v1/tasks:purge", {"ids": [w.victim("dead-letter")]}),
        victim="dead-letter"),
    ("POST", "/v1/functions/{name}/queue:pause"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/queue:pause", None)),
    ("POST", "/v1/functions/{name}/queue:resume"): Case(
        "developer", "function", 200, lambda w: (f"{FN}/queue:resume", None)),
    # topics
    ("POST", "/v1/topics"): Case(
        "developer", "own", 201, lambda w: ("/v1/topics", {"name": w.fresh("topic")})),
    ("GET", "/v1/topics"): Case("developer", "own", 200, lambda w: ("/v1/topics", None)),
    ("GET", "/v1/topics/{topic}"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/topics/{w.a['topic']}", None)),
    ("DELETE", "/v1/topics/{topic}"): Case(
        "developer", "resource", 204, lambda w: (f"/v1/topics/{w.victim('topic')}", None),
        victim="topic"),
    ("POST", "/v1/topics/{topic}/subscriptions"): Case(
        "developer", "resource", 201,
        lambda w: (f"/v1/topics/{w.victim('bare-topic')}/subscriptions", {"function": FN_A}),
        victim="bare-topic"),
    ("DELETE", "/v1/topics/{topic}/subscriptions/{function}"): Case(
        "developer", "resource", 204,
        lambda w: (f"/v1/topics/{w.victim('subscription')}/subscriptions/{FN_A}", None),
        victim="subscription"),
    ("POST", "/v1/topics/{topic}/publish"): Case(
        "developer", "resource", 202,
        lambda w: (f"/v1/topics/{w.a['topic']}/publish", {"message": {"x": 1}})),
    # workflows (a run names A's function) and their definitions
    ("POST", "/v1/workflows"): Case(
        "developer", "function", 202,
        lambda w: ("/v1/workflows", {"chain": [FN_A], "input": 1})),
    ("GET", "/v1/workflows"): Case("developer", "own", 200, lambda w: ("/v1/workflows", None)),
    ("GET", "/v1/workflows/{workflow_id}"): Case(
        "developer", "resource", 200, lambda w: (f"/v1/workflows/{w.a['workflow']}", None)),
    ("POST", "/v1/workflows/{workflow_id}/cancel"): Case(
        "developer", "resource", 200,
        lambda w: (f"/v1/workflows/{w.victim('workflow')}/cancel", None), victim="workflow"),
    # a new definition in the caller's tenant (its steps name no function of A: B's would
    # otherwise show A's function name in its own listing)
    ("PUT", "/v1/workflow-definitions/{workflow}"): Case(
        "developer", "own", 200,
        lambda w: (f"/v1/workflow-definitions/{w.fresh('flow')}", {"chain": ["any-step"]})),
    ("GET", "/v1/workflow-definitions"): Case(
        "developer", "own", 200, lambda w: ("/v1/workflow-definitions", None)),
    ("GET", "/v1/workflow-definitions/{workflow}"): Case(
        "developer", "resource", 200,
        lambda w: (f"/v1/workflow-definitions/{w.a['definition']}", None)),
    ("DELETE", "/v1/workflow-definitions/{workflow}"): Case(
        "developer", "resource", 204,
        lambda w: (f"/v1/workflow-definitions/{w.victim('definition')}", None),
        victim="definition"),
    # service groups: the admin manages them, a developer reads its own tenant's
    ("POST", "/v1/service-groups"): Case(
        "admin", "platform", 201,
        lambda w: ("/v1/service-groups", {"name": w.fresh("grp"), "memory_mb": 128})),
    ("GET", "/v1/service-groups"): Case(
        "developer", "own", 200, lambda w: ("/v1/service-groups", None)),
    ("GET", "/v1/service-groups/{group}"): Case(
        "developer", "resource", 200,
        lambda w: (f"/v1/service-groups/{w.victim('group')}", None)),
    ("PATCH", "/v1/service-groups/{group}"): Case(
        "admin", "platform", 200,
        lambda w: (f"/v1/service-groups/{w.victim('group')}", {"min_instances": 0})),
    ("DELETE", "/v1/service-groups/{group}"): Case(
        "admin", "platform", 204, lambda w: (f"/v1/service-groups/{w.victim('group')}", None),
        victim="group"),
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


def _wait_task(w: World, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        resp = w.server.http.get(f"/v1/tasks/{task_id}", params={"tenant": A, "wait": 5})
        assert resp.status_code == 200, resp.text
        if resp.json()["status"] in TERMINAL:
            return dict(resp.json())
        assert time.monotonic() < deadline, resp.text


def _populate(server: Server, dev: str, fn: str, prefix: str) -> dict[str, str]:
    """A function with an invocation (and its trace), a finished task, job and workflow, a
    trigger, a topic it subscribes to and a workflow definition."""
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
    topic, definition = f"{prefix}-topic", f"{prefix}-flow"
    made = client.post("/v1/topics", json={"name": topic})
    assert made.status_code == 201, made.text
    made = client.post(f"/v1/topics/{topic}/subscriptions", json={"function": fn})
    assert made.status_code == 201, made.text
    made = client.put(f"/v1/workflow-definitions/{definition}", json={"chain": [fn]})
    assert made.status_code == 200, made.text
    workflow = client.post("/v1/workflows", json={"name": definition, "input": 1})
    assert workflow.status_code == 202, workflow.text
    ids = {"function": fn, "invocation": inv.headers["x-faasbox-request-id"],
           "trace": inv.headers["x-faasbox-trace-id"], "task": task.json()["task_id"],
           "job": job.json()["job_id"], "topic": topic, "definition": definition,
           "workflow": workflow.json()["workflow_id"]}
    wait_task(client, ids["task"])
    wait_job(client, ids["job"])
    server.wait_for(lambda: client.get(f"/v1/workflows/{ids['workflow']}").json()[
        "status"] == "succeeded", timeout=60, what="the workflow")
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
    w = World(server, keys, _populate(server, keys["developer"], FN_A, "alpha"),
              _populate(server, keys["other_tenant"], FN_B, "beta"))
    dev = w.client("developer")
    deploy(server, dev, PARKED, ECHO)
    assert dev.post(f"/v1/functions/{PARKED}/queue:pause").status_code == 200
    deploy(server, dev, FAILING, FAIL)
    resp = dev.put(f"/v1/functions/{FAILING}/task-policy", json={"max_attempts": 1})
    assert resp.status_code == 200, resp.text
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
    secret = w.server.http.get("/v1/webhook-secret", params={"tenant": A}).json()["secret"]
    return [FN_A, PARKED, FAILING, *(v for k, v in w.a.items() if k != "function"),
            "victim-", *w.victims.values(), secret]


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
        if case.victim is not None:
            world.victim(case.victim)  # made before the request, which may not name it
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
            if resp.status_code < 300 and key != "other_tenant":
                if world.untouched(case.victim):
                    problems.append(f"{key}: answered {resp.status_code}, yet A's"
                                    f" {case.victim} is as it was")
                world.consume(case.victim)  # A's own request did it: a fresh one next
            elif not world.untouched(case.victim):  # refused, or done in B: A's stays
                problems.append(f"{key}: answered {resp.status_code}, yet A's"
                                f" {case.victim} was changed")
                world.consume(case.victim)  # so that the next key's answer is its own
    assert got == {key: expected(case, key) for key in KEYS}, problems
    assert not problems, problems
