"""The API's documentation: /docs works offline, and the OpenAPI spec is whole and declares the
error body of every status a route can return."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from faasbox.api.responses import ErrorBody
from tests.conftest import Server

ERROR_STATUSES = {"400", "401", "403", "404", "409", "413", "422", "429", "500", "503", "504"}
V1 = {"401", "403", "500", "503"}
ERROR_REF = "#/components/schemas/ErrorBody"
# the statuses beyond the general ones that particular routes must declare
EXPECTED = {
    ("post", "/v1/functions/{name}/invoke"): {"400", "404", "413", "422", "429", "504"},
    ("post", "/v1/functions/{name}/tasks"): {"400", "404", "413", "429"},
    ("post", "/v1/functions/{name}/tasks:batch"): {"400", "404", "413", "429"},
    ("put", "/v1/functions/{name}"): {"400", "413", "422"},
    ("post", "/v1/functions"): {"400", "409", "413", "422"},
    ("get", "/v1/functions/{name}"): {"404"},
    ("delete", "/v1/functions/{name}"): {"404"},
    ("get", "/v1/tasks/{task_id}"): {"404"},
    ("post", "/v1/jobs"): {"400", "404", "422"},
    ("post", "/v1/functions/{name}/triggers"): {"400", "404", "409", "422"},
    ("get", "/v1/tasks/{task_id}/deliveries"): {"404"},
    ("post", "/v1/tasks:redrive"): {"400"},
    ("post", "/v1/tasks:cancel"): {"400"},
    ("post", "/v1/functions/{name}/queue:pause"): {"404"},
    ("post", "/v1/topics"): {"400", "409"},
    ("post", "/v1/topics/{topic}/publish"): {"400", "404", "413"},
    ("post", "/v1/workflows"): {"400", "404", "422"},
    ("get", "/v1/workflows/{workflow_id}"): {"404"},
}


@pytest.fixture(scope="module")
def spec(server: Server) -> dict[str, Any]:
    resp = server.http.get("/openapi.json")
    assert resp.status_code == 200
    return dict(resp.json())


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                yield method, path, op


def test_docs_load_nothing_from_outside_the_server(server: Server) -> None:
    page = server.http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.findall(r"https?://", html), re.findall(r"https?://\S+", html)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {a.rsplit(".", 1)[-1] for a in assets} >= {"js", "css"}, assets
    for asset in assets:
        assert asset.startswith("/"), asset
        resp = server.http.get(asset)
        assert resp.status_code == 200, asset
        assert len(resp.content) > 1000, asset
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert server.http.get("/redoc").status_code == 404  # its bundle loads a logo from outside


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert "#/components/schemas/ProvisionedWindow" in refs  # nested in the deploy bodies
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and part in target, f"unresolvable $ref {ref}"
            target = target[part]


def test_every_operation_declares_its_errors_with_the_error_body(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["ErrorBody"]["required"]) == {"error"}
    assert {"code", "message"} <= set(schemas["ErrorDetail"]["required"])
    declared: set[str] = set()
    for method, path, op in operations(spec):
        statuses = {s for s in op["responses"] if s[0] in "45"}
        declared |= statuses
        where = f"{method} {path}"
        for status in statuses:
            body = op["responses"][status]["content"]["application/json"]["schema"]
            assert body == {"$ref": ERROR_REF}, (where, status, body)
        assert "500" in statuses, where
        if path.startswith("/v1/"):
            assert V1 <= statuses, (where, statuses)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in statuses, where  # request validation errors have the error body
        assert EXPECTED.get((method, path), set()) <= statuses, (where, statuses)
        if "429" in statuses:
            assert "Retry-After" in op["responses"]["429"]["headers"], where
    assert declared == ERROR_STATUSES
    assert {p for _, p, _ in operations(spec)} >= {p for _, p in EXPECTED}


def test_spec_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)


def test_errors_have_the_declared_body(server: Server) -> None:
    server.deploy("o-errors", {"main.py": "def handler(e, c):\n    return e\n"})
    responses = {
        400: server.http.post("/v1/functions/o-errors/tasks:batch", content=b"[oops",
                              headers={"content-type": "application/json"}),
        404: server.http.get("/v1/functions/nope"),
        409: server.http.post("/v1/functions", json={"name": "o-errors",
                                                     "handler": "main:handler"}),
        422: server.http.get("/v1/invocations", params={"limit": 0}),
    }
    for status, resp in responses.items():
        assert resp.status_code == status, (status, resp.text)
        ErrorBody.model_validate(resp.json())
