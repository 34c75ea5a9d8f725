"""Helpers for the multi-tenancy tests: tenants, keys and deploys through the real API.

The server's admin key (``server.http``) makes tenants and keys; everything a tenant does goes
through a client holding one of its own keys (``server.client(key)``), as a tenant would.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

from faasbox.codestore import zip_folder
from tests.conftest import Server


class Clients:
    """Clients with a key each (``clients(server, key)``), all closed at the end of a test."""

    def __init__(self) -> None:
        self.made: list[httpx.Client] = []

    def __call__(self, server: Server, key: str | None) -> httpx.Client:
        self.made.append(server.client(key))
        return self.made[-1]

    def close(self) -> None:
        for client in self.made:
            client.close()


def make_tenant(server: Server, name: str, **limits: Any) -> dict[str, Any]:
    resp = server.http.post("/v1/tenants", json={"name": name, "limits": limits})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def set_limits(server: Server, tenant: str, **limits: Any) -> dict[str, Any]:
    resp = server.http.patch(f"/v1/tenants/{tenant}", json={"limits": limits})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def make_key(server: Server, tenant: str, scope: str,
             functions: list[str] | None = None) -> str:
    resp = server.http.post(f"/v1/tenants/{tenant}/keys",
                            json={"scope": scope, "functions": functions})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def key_id(key: str) -> str:
    """The id part of ``fbx_<id>_<secret>``."""
    return key.split("_")[1]


def revoke(server: Server, tenant: str, key: str) -> None:
    resp = server.http.delete(f"/v1/tenants/{tenant}/keys/{key_id(key)}")
    assert resp.status_code == 204, resp.text


def code_zip(server: Server, folder: str, files: dict[str, str]) -> str:
    return base64.b64encode(zip_folder(server.folder(folder, files))).decode()


def deploy(server: Server, client: httpx.Client, name: str, files: dict[str, str], *,
           expect: int | tuple[int, ...] = (200, 201), params: dict[str, str] | None = None,
           **spec: Any) -> httpx.Response:
    """PUT ``name`` with ``files`` as its code through ``client`` (a tenant's key)."""
    body = {"handler": "main:handler", "code_zip": code_zip(
        server, f"{name}-{time.monotonic_ns()}", files), **spec}
    resp = client.put(f"/v1/functions/{name}", json=body, params=params)
    wanted = (expect,) if isinstance(expect, int) else expect
    assert resp.status_code in wanted, resp.text
    return resp


def wait_task(client: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/tasks/{task_id}", params={"wait": 5})
        assert resp.status_code == 200, resp.text
        body = dict(resp.json())
        if body["status"] in ("succeeded", "failed", "dead", "expired", "cancelled"):
            return body
        assert time.monotonic() < deadline, body


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 5})
        assert resp.status_code == 200, resp.text
        body = dict(resp.json())
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body["progress"]


def error_code(resp: httpx.Response) -> str:
    """The ``error.code`` of an error answer (fails on anything else)."""
    body = resp.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


def invocations(client: httpx.Client, function: str | None = None) -> list[dict[str, Any]]:
    resp = client.get("/v1/invocations", params={"function": function, "limit": 1000}
                      if function else {"limit": 1000})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["invocations"])
