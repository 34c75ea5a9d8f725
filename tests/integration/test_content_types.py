"""Every route that takes a body reads it as JSON whatever its Content-Type.

``curl -d`` sends ``application/x-www-form-urlencoded``; other clients send ``text/plain`` or
no Content-Type at all. Each JSON route accepts its body under every one of them, and a body
that is not JSON is a 400 error object (never a 500, never a form-parsing 422).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from faasbox.codestore import zip_folder
from tests.conftest import Server

FN = {"main.py": """
    def handler(event, context):
        return {"event": event}
"""}
CONTENT_TYPES = ["application/x-www-form-urlencoded", "text/plain", None, "application/json"]
_n = itertools.count()


def code_zip(server: Server) -> str:
    return base64.b64encode(zip_folder(server.folder("ct-fn", FN))).decode()


# every JSON route (method and path template, as in the OpenAPI spec): a request to it with a
# valid body (a fresh name where a name is taken) and the status that answers it
ROUTES: dict[tuple[str, str], Callable[[Server], tuple[str, Any, int]]] = {
    ("PUT", "/v1/functions/{name}"): lambda s: (
        f"/v1/functions/ct-new-{next(_n)}", {"handler": "main:handler", "code_zip": code_zip(s)},
        201),
    ("POST", "/v1/functions"): lambda s: (
        "/v1/functions", {"name": f"ct-made-{next(_n)}", "handler": "main:handler",
                          "code_zip": code_zip(s)}, 201),
    ("POST", "/v1/functions/{name}/invoke"): lambda s: (
        "/v1/functions/ct-fn/invoke", {"name": "ada"}, 200),
    ("POST", "/v1/functions/{name}/tasks"): lambda s: (
        "/v1/functions/ct-fn/tasks", {"name": "ada"}, 202),
    ("POST", "/v1/functions/{name}/tasks:batch"): lambda s: (
        "/v1/functions/ct-fn/tasks:batch", [{"a": 1}, 2], 202),
    ("PUT", "/v1/functions/{name}/task-policy"): lambda s: (
        "/v1/functions/ct-fn/task-policy", {"max_attempts": 2}, 200),
    ("POST", "/v1/jobs"): lambda s: (
        "/v1/jobs", {"function": "ct-fn", "shards": {"count": 2}}, 202),
    ("POST", "/v1/functions/{name}/triggers"): lambda s: (
        "/v1/functions/ct-fn/triggers", {"name": f"t{next(_n)}", "cron": "0 2 * * *"}, 201),
    ("PUT", "/v1/functions/{name}/triggers/{trigger}"): lambda s: (
        "/v1/functions/ct-fn/triggers/daily", {"cron": "0 3 * * *", "timezone": "Asia/Tokyo"},
        200),
    ("PATCH", "/v1/functions/{name}/triggers/{trigger}"): lambda s: (
        "/v1/functions/ct-fn/triggers/daily", {"enabled": False}, 200),
    ("PATCH", "/v1/functions/{name}"): lambda s: (
        "/v1/functions/ct-fn", {"description": f"d{next(_n)}"}, 200),
    ("POST", "/v1/tenants"): lambda s: (
        "/v1/tenants", {"name": f"ct-tenant-{next(_n)}"}, 201),
    ("PATCH", "/v1/tenants/{tenant}"): lambda s: (
        "/v1/tenants/default", {"weight": 1}, 200),
    ("POST", "/v1/tenants/{tenant}/keys"): lambda s: (
        "/v1/tenants/default/keys", {"scope": "invoke"}, 201),
    ("POST", "/v1/service-groups"): lambda s: (
        "/v1/service-groups", {"name": f"ct-group-{next(_n)}", "memory_mb": 128}, 201),
    ("PATCH", "/v1/service-groups/{group}"): lambda s: (
        f"/v1/service-groups/{_group(s)}", {"min_instances": 0}, 200),
    ("POST", "/v1/tasks:redrive"): lambda s: ("/v1/tasks:redrive", {"ids": ["nope"]}, 200),
    ("POST", "/v1/tasks:cancel"): lambda s: ("/v1/tasks:cancel", {"ids": ["nope"]}, 200),
    ("POST", "/v1/tasks:purge"): lambda s: ("/v1/tasks:purge", {"ids": ["nope"]}, 200),
    ("POST", "/v1/topics"): lambda s: ("/v1/topics", {"name": f"ct-topic-{next(_n)}"}, 201),
    ("POST", "/v1/topics/{topic}/subscriptions"): lambda s: (
        f"/v1/topics/{new_topic(s)}/subscriptions", {"function": "ct-fn"}, 201),
    ("POST", "/v1/topics/{topic}/publish"): lambda s: (
        f"/v1/topics/{new_topic(s)}/publish", {"message": {"a": 1}}, 202),
    ("POST", "/v1/workflows"): lambda s: (
        "/v1/workflows", {"chain": ["ct-fn"], "input": {"a": 1}}, 202),
    ("PUT", "/v1/workflow-definitions/{workflow}"): lambda s: (
        "/v1/workflow-definitions/ct-flow", {"chain": ["ct-fn"]}, 200),
}
IDS = [f"{method} {path}" for method, path in ROUTES]


def _group(server: Server) -> str:
    """A service group to change (made once)."""
    if server.http.get("/v1/service-groups/ct-patched").status_code == 404:
        resp = server.http.post("/v1/service-groups", json={"name": "ct-patched",
                                                            "memory_mb": 128})
        assert resp.status_code == 201, resp.text
    return "ct-patched"


def new_topic(server: Server) -> str:
    name = f"ct-topic-{next(_n)}"
    assert server.http.post("/v1/topics", json={"name": name}).status_code == 201
    return name


@pytest.fixture(scope="module")
def ct_server(server: Server) -> Server:
    server.deploy("ct-fn", FN)
    server.http.put("/v1/functions/ct-fn/triggers/daily", json={"cron": "0 3 * * *"})
    return server


def send(server: Server, method: str, path: str, body: bytes,
         content_type: str | None) -> Any:
    headers = {} if content_type is None else {"content-type": content_type}
    return server.http.request(method, path, content=body, headers=headers)


def test_every_route_with_a_body_is_covered_here(ct_server: Server) -> None:
    spec = ct_server.http.get("/openapi.json").json()
    with_body = {(method.upper(), path) for path, ops in spec["paths"].items()
                 for method, op in ops.items() if "requestBody" in op}
    assert with_body == set(ROUTES)


@pytest.mark.parametrize("route", list(ROUTES), ids=IDS)
def test_a_json_body_is_json_whatever_the_content_type(
        ct_server: Server, route: tuple[str, str]) -> None:
    method = route[0]
    for content_type in CONTENT_TYPES:
        path, body, status = ROUTES[route](ct_server)
        resp = send(ct_server, method, path, orjson.dumps(body), content_type)
        assert resp.status_code == status, (content_type, resp.text)
        if path.endswith("/invoke"):
            assert resp.json() == {"event": body}


@pytest.mark.parametrize("route", list(ROUTES), ids=IDS)
def test_a_body_that_is_not_json_is_a_400_error_object(
        ct_server: Server, route: tuple[str, str]) -> None:
    method = route[0]
    path, _, _ = ROUTES[route](ct_server)
    for content_type, body in itertools.product(CONTENT_TYPES, [b'{"name": ', b"name=ada",
                                                                b"\xff\xfe{}"]):
        resp = send(ct_server, method, path, body, content_type)
        assert resp.status_code == 400, (content_type, body, resp.text)
        error = resp.json()["error"]
        assert error["code"] in ("malformed_json", "invalid_request"), error
        assert error["message"], error
