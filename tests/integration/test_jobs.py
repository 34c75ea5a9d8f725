"""Sharded jobs, reduce, failover, stop-on-failure, cancel; chains and traces."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.conftest import Server, open_tempdir

SHARD = {"main.py": """
    import os, time
    def handler(event, context):
        event = event or {}
        if context.shard["index"] in event.get("fail", []):
            raise ValueError(f"shard {context.shard['index']} is bad")
        time.sleep(event.get("sleep", 0))
        return {"index": context.shard["index"], "count": context.shard["count"],
                "instance": context.instance_id, "attempt": context.attempt,
                "trace": context.trace_id}
"""}

REDUCE = {"main.py": """
    def handler(event, context):
        return {"job": event["job_id"], "n": len(event["results"]),
                "sum": sum(r["index"] for r in event["results"])}
"""}

STEP = {"main.py": """
    def handler(event, context):
        return {"path": (event or {}).get("path", []) + [context.function_name],
                "trace": context.trace_id}
"""}


def start_job(server: Server, headers: dict[str, str] | None = None,
              **body: Any) -> dict[str, Any]:
    resp = server.http.post("/v1/jobs", json=body, headers=headers or {})
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def wait_job(server: Server, job_id: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = server.http.get(f"/v1/jobs/{job_id}", params={"wait": 5, **params}).json()
        if body["status"] != "running":
            return dict(body)
        assert time.monotonic() < deadline, body["progress"]


def test_shard_results_too_large_for_reduce_fail_the_job_unread(server: Server) -> None:
    """Twelve results of 5.9 MB (over reduce's 64 MiB): the store counts them, and the job
    fails with a clear error, without the server reading them all into one event."""
    server.deploy("j-fat", {"main.py": """
        def handler(event, context):
            return "x" * 5_900_000
    """}, max_instances=2)
    server.deploy("j-fat-reduce", REDUCE)
    job = start_job(server, function="j-fat", shards={"count": 12}, reduce="j-fat-reduce")
    done = wait_job(server, job["job_id"], results="false")
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "reduce_input_too_large", done["error"]
    # the store's count of the twelve results ('"x...x"': 5,900,002 bytes each), not the size
    # of an event built from them
    assert "70800024 bytes" in done["error"]["message"], done["error"]
    # and read back a page at a time: two of them fit in a page's 16 MiB, a third would not
    pages, start = [], 0
    while start is not None:
        page = server.http.get(f"/v1/jobs/{job['job_id']}",
                               params={"results_from": start}).json()
        assert page["results_from"] == start
        pages.append([len(r) for r in page["results"]])
        start = page["results_next"]
    assert pages == [[5_900_000] * 2] * 6
    past = server.http.get(f"/v1/jobs/{job['job_id']}", params={"results_from": 12}).json()
    assert (past["results"], past["results_next"]) == ([], None)
    assert server.http.get(f"/v1/jobs/{job['job_id']}",
                           params={"results_from": -1}).status_code == 422


def test_hundred_shards_each_result_once_then_reduce_once(server: Server) -> None:
    server.deploy("j-shard", SHARD, max_instances=4)
    server.deploy("j-reduce", REDUCE)
    job = start_job(server, function="j-shard", shards={"count": 100, "params": {}},
                    reduce="j-reduce")
    done = wait_job(server, job["job_id"], shards="true")
    assert done["status"] == "succeeded", done.get("error")
    assert [r["index"] for r in done["results"]] == list(range(100))
    assert (done["results_from"], done["results_next"]) == (0, None)  # one page holds them
    assert {r["count"] for r in done["results"]} == {100}
    assert done["progress"]["succeeded"] == 100 and done["progress"]["done"] == 100
    assert done["result"] == {"job": job["job_id"], "n": 100, "sum": sum(range(100))}
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in done["shards"])
    # reduce ran exactly once: one task for it in the trace, one invocation of j-reduce
    trace = server.http.get(f"/v1/traces/{job['trace_id']}").json()
    reduces = [r for r in trace["invocations"] if r["function"] == "j-reduce"]
    assert len(reduces) == 1
    shards = [r for r in trace["invocations"] if r["function"] == "j-shard"]
    assert len(shards) == 100
    assert {r["trace_id"] for r in trace["invocations"]} == {job["trace_id"]}
    assert {r["trace"] for r in done["results"]} == {job["trace_id"]}
    assert trace["jobs"] == [job["job_id"]]
    [listed] = server.http.get("/v1/jobs", params={"function": "j-shard"}).json()["jobs"]
    assert listed["job_id"] == job["job_id"] and listed["progress"]["succeeded"] == 100
    assert "results" not in listed


def test_shard_list_and_max_parallel(server: Server) -> None:
    server.deploy("j-par", SHARD, max_instances=6)
    job = start_job(server, function="j-par", shards=[{"sleep": 0.3}] * 8, max_parallel=2)
    seen_running = []
    while True:
        body = server.http.get(f"/v1/jobs/{job['job_id']}", params={"results": "false"}).json()
        progress = body["progress"]
        seen_running.append(progress["running"] + progress["queued"])
        assert progress["held"] + progress["queued"] + progress["running"] + \
            progress["succeeded"] <= 8
        if body["status"] != "running":
            break
        time.sleep(0.05)
    assert body["status"] == "succeeded"
    assert max(seen_running) <= 2
    done = wait_job(server, job["job_id"])
    assert [r["index"] for r in done["results"]] == list(range(8))


def test_on_failure_stop_cancels_the_rest(server: Server) -> None:
    server.deploy("j-stop", SHARD, max_instances=2)
    job = start_job(server, function="j-stop", max_parallel=2, on_failure="stop",
                    shards={"count": 40, "params": {"fail": [3], "sleep": 0.05}},
                    retry={"max_attempts": 1})
    done = wait_job(server, job["job_id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "shard_failed" and "shard 3" in done["error"]["message"]
    progress = done["progress"]
    assert progress["dead"] == 1  # its only attempt failed
    assert progress["cancelled"] > 30  # most never ran
    assert progress["succeeded"] + progress["dead"] + progress["cancelled"] == 40
    assert progress["held"] == progress["queued"] == progress["running"] == 0


def test_on_failure_continue_runs_all_and_fails_at_the_end(server: Server) -> None:
    server.deploy("j-cont", SHARD, max_instances=2)
    server.deploy("j-cont-reduce", REDUCE)
    job = start_job(server, function="j-cont", on_failure="continue", reduce="j-cont-reduce",
                    shards={"count": 10, "params": {"fail": [2, 7]}},
                    retry={"max_attempts": 2, "backoff_base_s": 0.01, "backoff_cap_s": 0.01})
    done = wait_job(server, job["job_id"], shards="true")
    assert done["status"] == "failed" and "2 shards failed" in done["error"]["message"]
    assert done["progress"]["succeeded"] == 8
    assert [s["attempts"] for s in done["shards"] if s["index"] in (2, 7)] == [2, 2]
    assert done["results"][2] is None and done["results"][3]["index"] == 3
    assert done["reduce_task_id"] is None  # reduce runs only when every shard succeeded


def test_killed_instance_mid_shard_is_rerun(server: Server) -> None:
    server.deploy("j-kill", SHARD, max_instances=1)
    job = start_job(server, function="j-kill", shards=[{"sleep": 0}, {"sleep": 3},
                                                       {"sleep": 0}])
    inst = server.wait_for(
        lambda: next((i for i in server.instances("j-kill") if i["state"] == "busy"
                      and i.get("pid")), None) if server.http.get(
            f"/v1/jobs/{job['job_id']}", params={"results": "false"}).json()[
                "progress"]["succeeded"] >= 1 else None,
        what="shard 1 running")
    os.kill(inst["pid"], signal.SIGKILL)
    done = wait_job(server, job["job_id"], shards="true")
    assert done["status"] == "succeeded"
    assert [r["index"] for r in done["results"]] == [0, 1, 2]
    assert done["shards"][1]["attempts"] == 2 and done["results"][1]["attempt"] == 2
    assert done["results"][1]["instance"] != inst["id"]


def test_cancel_a_job(server: Server) -> None:
    server.deploy("j-cancel", SHARD, max_instances=1)
    job = start_job(server, function="j-cancel", shards={"count": 20, "params": {"sleep": 2}})
    server.wait_for(lambda: server.http.get(f"/v1/jobs/{job['job_id']}").json()[
        "progress"]["running"] == 1, what="a shard running")
    resp = server.http.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelled"
    done = wait_job(server, job["job_id"])
    assert done["status"] == "cancelled"
    server.wait_for(lambda: server.http.get(f"/v1/jobs/{job['job_id']}").json()[
        "progress"]["cancelled"] == 20, what="every shard cancelled")


def test_job_bad_input(server: Server) -> None:
    server.deploy("j-bad", SHARD)
    for body, status in [
        ({"function": "j-bad", "shards": []}, 422),
        ({"function": "j-bad", "shards": {"count": 0}}, 422),
        ({"function": "j-bad", "shards": {"count": 2, "extra": 1}}, 422),
        ({"function": "j-bad", "shards": 5}, 422),
        ({"function": "j-bad", "shards": [1], "on_failure": "explode"}, 422),
        ({"function": "nope", "shards": [1]}, 404),
        ({"function": "j-bad", "shards": [1], "reduce": "nope"}, 404),
    ]:
        resp = server.http.post("/v1/jobs", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["message"]
    assert server.http.get("/v1/jobs/nope").status_code == 404


def test_chain_carries_the_trace_id(server: Server) -> None:
    server.deploy("c-three", STEP)
    server.deploy("c-two", STEP, on_success="c-three")
    server.deploy("c-one", STEP, on_success="c-two")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = server.http.post("/v1/functions/c-one/invoke", json={},
                            headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert resp.status_code == 200 and resp.headers["X-Faasbox-Trace-Id"] == trace

    def three_ran() -> Any:
        body = server.http.get(f"/v1/traces/{trace}").json()
        return body if len(body.get("invocations", [])) == 3 else None

    body = server.wait_for(three_ran, what="the chain's end")
    assert [r["function"] for r in body["invocations"]] == ["c-one", "c-two", "c-three"]
    assert {r["trace_id"] for r in body["invocations"]} == {trace}
    assert [t["source"] for t in body["tasks"]] == ["chain", "chain"]
    last = server.http.get(f"/v1/tasks/{body['tasks'][-1]['task_id']}").json()
    assert last["result"]["path"] == ["c-one", "c-two", "c-three"]
    assert server.http.get("/v1/traces/" + "0" * 32).status_code == 404
    resp = server.deploy("c-three", on_success="c-three", expect=422)
    assert "on_success makes a cycle: c-three -> c-three" in resp.json()["error"]["message"]


def test_async_task_chain_and_made_trace_id(server: Server) -> None:
    server.deploy("c-b", STEP)
    server.deploy("c-a", STEP, on_success="c-b")
    task = server.http.post("/v1/functions/c-a/tasks", json={}).json()
    view = server.http.get(f"/v1/tasks/{task['task_id']}", params={"wait": 10}).json()
    trace = view["trace_id"]
    assert trace and len(trace) == 32
    body = server.wait_for(lambda: (lambda b: b if len(b.get("invocations", [])) == 2
                                    else None)(server.http.get(f"/v1/traces/{trace}").json()),
                           what="chained task")
    assert [r["function"] for r in body["invocations"]] == ["c-a", "c-b"]
    ignored = server.http.post("/v1/functions/c-a/invoke", headers={"traceparent": "bogus"})
    assert ignored.status_code == 200  # a malformed traceparent starts a trace of its own
    assert ignored.headers["x-faasbox-trace-id"] not in ("bogus", trace)


def test_kill_9_of_the_server_mid_job_then_the_job_completes(make_server: Any) -> None:
    root = open_tempdir()
    data = root / "data"
    srv: Server = make_server(data=data)
    srv.deploy("j-crash", SHARD, max_instances=4)
    srv.deploy("j-crash-reduce", REDUCE)
    job = start_job(srv, function="j-crash", max_parallel=4, reduce="j-crash-reduce",
                    shards={"count": 200, "params": {"sleep": 0.02}})
    srv.wait_for(lambda: srv.http.get(f"/v1/jobs/{job['job_id']}", params={
        "results": "false"}).json()["progress"]["succeeded"] >= 40, what="some shards done")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    restarted: Server = make_server(data=data)
    done = wait_job(restarted, job["job_id"], shards="true")
    assert done["status"] == "succeeded", done.get("error")
    assert [r["index"] for r in done["results"]] == list(range(200))
    assert done["result"] == {"job": job["job_id"], "n": 200, "sum": sum(range(200))}
    # only the shards that were running when the server died ran twice
    assert sum(s["attempts"] > 1 for s in done["shards"]) <= 4
