"""Synchronous invocation: results, headers, errors, payload limits, logs and records."""

from __future__ import annotations

import concurrent.futures

from tests.conftest import Server

ECHO = {"main.py": """
    def handler(event, context):
        return {"event": event, "request_id": context.request_id,
                "function": context.function_name, "memory": context.memory_limit_mb,
                "remaining_ok": 0 < context.remaining_time_ms() <= 30000}
"""}


def test_cold_then_warm(server: Server) -> None:
    server.deploy("i-echo", ECHO)
    first = server.invoke("i-echo", {"a": [1, 2]})
    assert first.status_code == 200
    assert first.headers["x-faasbox-cold-start"] == "true"
    body = first.json()
    assert body["event"] == {"a": [1, 2]}
    assert body["request_id"] == first.headers["x-faasbox-request-id"]
    assert body["function"] == "i-echo" and body["memory"] == 128 and body["remaining_ok"]
    second = server.invoke("i-echo", "text")
    assert second.headers["x-faasbox-cold-start"] == "false"
    assert second.json()["event"] == "text"
    billed = int(second.headers["x-faasbox-billed-ms"])
    assert billed >= 1 and float(second.headers["x-faasbox-duration-ms"]) <= billed
    assert len(server.instances("i-echo")) == 1


def test_empty_body_is_a_null_event(server: Server) -> None:
    server.deploy("i-null", ECHO)
    resp = server.http.post("/v1/functions/i-null/invoke")
    assert resp.status_code == 200
    assert resp.json()["event"] is None


def test_async_handler(server: Server) -> None:
    server.deploy("i-async", {"main.py": """
        import asyncio
        async def handler(event, context):
            await asyncio.sleep(0.01)
            print("async says hi")
            return {"doubled": event * 2}
    """})
    resp = server.invoke("i-async", 21)
    assert resp.status_code == 200
    assert resp.json() == {"doubled": 42}


def test_concurrency_per_instance(server: Server) -> None:
    # each call waits in the handler until four are in it at once (or gives up after 20 s)
    server.deploy("i-conc", {"main.py": """
        import asyncio, os
        ARRIVED = [0]
        ALL_IN = asyncio.Event()
        async def handler(event, context):
            if event == "start":
                return context.instance_id
            ARRIVED[0] += 1
            if ARRIVED[0] == 4:
                ALL_IN.set()
            try:
                await asyncio.wait_for(ALL_IN.wait(), 20)
            except asyncio.TimeoutError:
                return [context.instance_id, "alone"]
            return [context.instance_id, "together"]
    """}, concurrency=4, max_instances=1)
    pid = server.invoke("i-conc", "start").json()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: server.invoke("i-conc"), range(4)))
    assert all(r.status_code == 200 for r in results)
    # one instance served all four at once
    assert [r.json() for r in results] == [[pid, "together"]] * 4


def test_handler_exception_is_function_error(server: Server) -> None:
    server.deploy("i-raise", {"main.py": """
        def handler(event, context):
            print("about to fail")
            raise ValueError("bad value: " + str(event))
    """})
    resp = server.invoke("i-raise", 7)
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["code"] == "function_error"
    assert err["type"] == "ValueError"
    assert err["message"] == "bad value: 7"
    assert "Traceback" in err["traceback"] and "main.py" in err["traceback"]
    assert resp.headers["x-faasbox-function-error"] == "function_error"
    record = server.http.get(f"/v1/invocations/{resp.headers['x-faasbox-request-id']}").json()
    assert record["status"] == "failed"
    assert record["error_code"] == "function_error"
    assert "about to fail" in record["logs"]
    # the instance survives a handled exception
    assert server.invoke("i-raise", 8).headers["x-faasbox-cold-start"] == "false"


def test_unserializable_result(server: Server) -> None:
    server.deploy("i-unser", {"main.py": "def handler(e, c):\n    return {1, 2}\n"})
    resp = server.invoke("i-unser")
    assert resp.status_code == 500
    assert "JSON serializable" in resp.json()["error"]["message"]


def test_bad_invoke_input(server: Server) -> None:
    server.deploy("i-bad", ECHO)
    unknown = server.invoke("i-no-such-function", {})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "function_not_found"
    malformed = server.http.post("/v1/functions/i-bad/invoke", content=b'{"a": ',
                                 headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    too_big = server.http.post("/v1/functions/i-bad/invoke",
                               content=b'"' + b"x" * (6 * 2**20) + b'"')
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    no_version = server.invoke("i-bad", {}, version=99)
    assert no_version.status_code == 404
    assert no_version.json()["error"]["code"] == "version_not_found"
    bad_version = server.invoke("i-bad", {}, version="abc")
    assert bad_version.status_code == 400
    route = server.http.get("/v1/nothing-here")
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"


def test_payload_just_under_the_limit_passes(server: Server) -> None:
    server.deploy("i-big", {"main.py": "def handler(e, c):\n    return len(e)\n"})
    text = "y" * (6 * 2**20 - 10)
    resp = server.invoke("i-big", text)
    assert resp.status_code == 200
    assert resp.json() == len(text)


def test_oversized_result_is_413(server: Server) -> None:
    server.deploy("i-bigout", {"main.py": "def handler(e, c):\n    return 'z' * (7 * 2**20)\n"})
    resp = server.invoke("i-bigout")
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "response_too_large"


def test_output_captured_per_invocation(server: Server) -> None:
    server.deploy("i-logs", {"main.py": """
        import sys
        def handler(event, context):
            print("out", event)
            print("err", event, file=sys.stderr)
            context.log("ctx", event)
            if event == "flood":
                print("z" * 100_000)
            return event
    """})
    a = server.invoke("i-logs", "a")
    b = server.invoke("i-logs", "b")
    rec_a = server.http.get(f"/v1/invocations/{a.headers['x-faasbox-request-id']}").json()
    rec_b = server.http.get(f"/v1/invocations/{b.headers['x-faasbox-request-id']}").json()
    assert rec_a["logs"] == "out a\nerr a\nctx a\n"
    assert rec_b["logs"] == "out b\nerr b\nctx b\n"
    flood = server.invoke("i-logs", "flood")
    rec = server.http.get(f"/v1/invocations/{flood.headers['x-faasbox-request-id']}").json()
    assert len(rec["logs"]) <= 64 * 1024 + 100
    assert rec["logs"].endswith("[log truncated at 64 KiB]\n")


def test_invocation_records(server: Server) -> None:
    server.deploy("i-rec", {"main.py": """
        import time
        def handler(event, context):
            time.sleep(0.05)
            return "done"
    """}, memory_mb=512)
    ids = [server.invoke("i-rec").headers["x-faasbox-request-id"] for _ in range(3)]
    listed = server.http.get("/v1/invocations", params={"function": "i-rec"}).json()
    assert [r["id"] for r in listed["invocations"]] == ids[::-1]  # newest first
    rec = server.http.get(f"/v1/invocations/{ids[0]}").json()
    assert rec["function"] == "i-rec" and rec["version"] == 1
    assert rec["status"] == "succeeded" and rec["cold_start"] is True
    assert rec["init_ms"] is not None
    assert rec["duration_ms"] >= 50
    assert rec["billed_ms"] >= rec["duration_ms"] and rec["billed_ms"] - rec["duration_ms"] < 1
    assert rec["memory_mb"] == 512
    assert abs(rec["gb_s"] - rec["billed_ms"] / 1000 * 0.5) < 1e-9
    # the instance's own peak, not the server's inherited high-water mark
    assert 5 < rec["peak_rss_mb"] < 40
    assert rec["instance_id"]
    warm = server.http.get(f"/v1/invocations/{ids[1]}").json()
    assert warm["cold_start"] is False and warm["init_ms"] is None
    one = server.http.get("/v1/invocations", params={"function": "i-rec", "limit": 1}).json()
    assert len(one["invocations"]) == 1 and "next_before" in one
    older = server.http.get("/v1/invocations", params={
        "function": "i-rec", "limit": 5, "before": one["next_before"]}).json()
    assert [r["id"] for r in older["invocations"]] == ids[1::-1]
    missing = server.http.get("/v1/invocations/nope")
    assert missing.status_code == 404


def test_metrics(server: Server) -> None:
    server.deploy("i-metrics", ECHO)
    server.invoke("i-metrics")
    text = server.http.get("/metrics").text
    assert ('faasbox_invocations_total{function="i-metrics",status="succeeded",'
            'tenant="default"} 1.0') in text
    assert 'faasbox_cold_starts_total{function="i-metrics",tenant="default"} 1.0' in text
    assert "faasbox_invocation_duration_seconds_bucket" in text
    assert 'faasbox_instances{function="i-metrics",state="idle",tenant="default"} 1.0' in text
