"""The sync invoke route served in front of FastAPI (api/fast.py) answers exactly as the
framework's route does: the same requests go to a server with the fast path and to one
without (FAASBOX_FAST_INVOKE=0), and every status, error body and header must agree."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Server

FAIL = {"main.py": """
    def handler(event, context):
        if event == "boom":
            raise ValueError("boom")
        print("said", event)
        return {"event": event}
"""}

# headers whose values differ between two calls by nature
VARYING = {"x-faasbox-request-id", "x-faasbox-trace-id", "x-faasbox-duration-ms",
           "x-faasbox-billed-ms", "date", "server"}


def _prepare(srv: Server) -> dict[str, str]:
    """The function ``pf`` (two versions) and ``other`` in tenant ``pt``, and the keys."""
    assert srv.http.post("/v1/tenants", json={"name": "pt"}).status_code == 201
    keys = {}
    for scope, functions in (("developer", None), ("invoke", None), ("invoke", ["other"])):
        body: dict[str, Any] = {"scope": scope}
        if functions:
            body["functions"] = functions
        resp = srv.http.post("/v1/tenants/pt/keys", json=body)
        assert resp.status_code == 201, resp.text
        keys[scope + ("-limited" if functions else "")] = resp.json()["key"]
    with srv.client(keys["developer"]) as dev:
        for i, name in enumerate(("pf", "pf", "other")):  # pf gets two versions
            assert dev.put(f"/v1/functions/{name}", json=srv.deploy_body(
                FAIL, env={"N": str(i)})).status_code in (200, 201)
    keys["admin"] = srv.admin_key
    return keys


def _requests() -> list[tuple[str, str | None, dict[str, str], bytes]]:
    """(path, key kind, headers, body) of each request."""
    big = b'"' + b"x" * (6 * 2**20) + b'"'
    return [
        ("/v1/functions/pf/invoke", "invoke", {}, b'{"a": 1}'),
        ("/v1/functions/pf/invoke", "developer", {}, b""),
        ("/v1/functions/pf/invoke?version=1", "invoke", {}, b"[1, 2]"),
        ("/v1/functions/pf/invoke?version=9", "invoke", {}, b"1"),
        ("/v1/functions/pf/invoke?version=abc", "invoke", {}, b"1"),
        ("/v1/functions/pf/invoke?version=", "invoke", {}, b"1"),
        ("/v1/functions/pf/invoke", "invoke", {}, b'"boom"'),
        ("/v1/functions/pf/invoke", "invoke", {}, b"{not json"),
        ("/v1/functions/pf/invoke", "invoke", {"content-type": "text/plain"}, b'"t"'),
        ("/v1/functions/pf/invoke", "invoke",
         {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, b"2"),
        ("/v1/functions/pf/invoke", "invoke", {"traceparent": "garbage"}, b"2"),
        ("/v1/functions/nope/invoke", "invoke", {}, b"1"),
        ("/v1/functions/pf/invoke", None, {}, b"1"),
        ("/v1/functions/pf/invoke", "wrong", {}, b"1"),
        ("/v1/functions/pf/invoke", "invoke-limited", {}, b"1"),
        ("/v1/functions/other/invoke", "invoke-limited", {}, b"1"),
        ("/v1/functions/pf/invoke?tenant=default", "invoke", {}, b"1"),
        ("/v1/functions/pf/invoke?tenant=pt", "admin", {}, b"1"),
        ("/v1/functions/pf/invoke?tenant=ghost", "admin", {}, b"1"),
        ("/v1/functions/pf/invoke", "admin", {}, b"1"),  # the admin's own tenant has no pf
        ("/v1/functions/pf/invoke", "invoke", {"host": "evil.example"}, b"1"),
        ("/v1/functions/pf/invoke", "invoke", {}, big),
    ]


def _answers(srv: Server, keys: dict[str, str]) -> list[tuple[Any, ...]]:
    out = []
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for path, kind, headers, body in _requests():
            h = dict(headers)
            if kind == "wrong":
                h["authorization"] = "Bearer fbx_nothing_nothing"
            elif kind is not None:
                h["authorization"] = f"Bearer {keys[kind]}"
            resp = client.post(path, content=body, headers=h)
            kept = {k: v for k, v in resp.headers.items() if k not in VARYING}
            text = resp.json() if resp.content else None
            if isinstance(text, dict) and "error" in text:
                text["error"].pop("traceback", None)  # line numbers of the framework differ
            out.append((path, kind, resp.status_code, kept, text))
    return out


def test_the_fast_path_answers_as_the_framework_route(make_server: Any) -> None:
    fast = make_server()
    slow = make_server(env={"FAASBOX_FAST_INVOKE": "0"})
    a = _answers(fast, _prepare(fast))
    b = _answers(slow, _prepare(slow))
    # a function's own error is a 500 function_error, as ever
    assert [x[2] for x in a] == [200, 200, 200, 404, 400, 400, 500, 400, 200, 200, 200, 404,
                                 401, 401, 403, 200, 403, 200, 404, 404, 400, 413]
    for mine, theirs in zip(a, b, strict=True):
        assert mine == theirs
    # the traceparent's trace id is carried, a malformed one ignored
    with httpx.Client(base_url=fast.url, timeout=60) as client:
        keys = {"authorization": f"Bearer {fast.admin_key}"}
        traced = client.post("/v1/functions/pf/invoke?tenant=pt", content=b"1", headers={
            **keys, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert traced.headers["x-faasbox-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
        record = client.get(f"/v1/invocations/{traced.headers['x-faasbox-request-id']}",
                            params={"tenant": "pt"}, headers=keys)
        assert record.status_code == 200 and record.json()["status"] == "succeeded"
