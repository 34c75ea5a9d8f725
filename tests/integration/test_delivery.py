"""Delivery: destinations (webhooks, functions, topics), topics, task operations (redrive,
pause/resume, cancel by filter, delays and priority) and workflows, against a real server, a
real webhook receiver on loopback and real instances."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, open_tempdir, remove_tree

ENV = {"FAASBOX_WEBHOOK_ALLOW_PRIVATE": "1", "FAASBOX_WEBHOOK_BACKOFF_BASE_S": "0.1",
       "FAASBOX_WEBHOOK_BACKOFF_CAP_S": "0.4", "FAASBOX_ACQUIRE_TIMEOUT_S": "3"}
TERMINAL = {"succeeded", "failed", "cancelled", "expired", "dead", "redriven"}

ECHO = {"main.py": """
    def handler(event, context):
        return {"echo": event, "task": context.task_id}
"""}
FAIL = {"main.py": """
    def handler(event, context):
        raise RuntimeError("broken on purpose")
"""}


class Receiver:
    """A webhook receiver on loopback: verifies every signature, answers ``fail_first``
    calls with 503, then 200; ``hold`` makes it wait before answering (a slow receiver)."""

    def __init__(self, secret: str = "", fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.calls: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hold.wait(60)
                ok = receiver.verify(self.headers.get("Faasbox-Signature", ""), body)
                with receiver.lock:
                    receiver.calls.append({"path": self.path, "body": body})
                    failing = len(receiver.calls) <= receiver.fail_first
                    if ok and not failing:
                        receiver.accepted.append({
                            "path": self.path, "record": json.loads(body),
                            "delivery": self.headers["Faasbox-Delivery"],
                            "event": self.headers["Faasbox-Event"]})
                    if not ok:
                        receiver.bad_signatures += 1
                self.send_response(401 if not ok else 503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def verify(self, header: str, body: bytes) -> bool:
        """What a receiver does (docs/delivery.md): recompute the HMAC, refuse old ones."""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if "t" not in parts or abs(time.time() - int(parts["t"])) > 300:
            return False
        mac = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(mac.hexdigest(), parts.get("v1", ""))

    def accepted_at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.accepted if a["path"] == path]

    def close(self) -> None:
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    root = open_tempdir()
    server = Server(root / "data", ENV).start()
    yield server
    server.stop()
    remove_tree(root)


@pytest.fixture
def receiver(srv: Server) -> Iterator[Receiver]:
    rec = Receiver(secret(srv))
    yield rec
    rec.close()


def secret(server: Server) -> str:
    resp = server.http.get("/v1/webhook-secret")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["secret"])


def set_policy(server: Server, name: str, **policy: Any) -> None:
    resp = server.http.put(f"/v1/functions/{name}/task-policy", json=policy)
    assert resp.status_code == 200, resp.text


def submit(server: Server, name: str, event: Any = None, **params: Any) -> str:
    resp = server.http.post(f"/v1/functions/{name}/tasks", json=event, params=params)
    assert resp.status_code in (200, 202), resp.text
    return str(resp.json()["task_id"])


def wait_task(server: Server, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = dict(server.http.get(f"/v1/tasks/{task_id}", params={"wait": 5}).json())
        if body["status"] in TERMINAL:
            return body
        assert time.monotonic() < deadline, body


def deliveries(server: Server, task_id: str) -> list[dict[str, Any]]:
    resp = server.http.get(f"/v1/tasks/{task_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["deliveries"])


def settled(server: Server, task_id: str, n: int = 1) -> list[dict[str, Any]] | None:
    rows = deliveries(server, task_id)
    done = [d for d in rows if d["status"] != "pending"]
    return rows if len(done) >= n else None


# -- 1-3: destinations and webhooks ---------------------------------------------------------
def test_webhook_is_signed_retried_and_every_attempt_recorded(srv: Server,
                                                              receiver: Receiver) -> None:
    receiver.fail_first = 2
    srv.deploy("d-hook", ECHO)
    set_policy(srv, "d-hook", destinations={"on_success": [
        {"type": "webhook", "url": receiver.url("/ok")}]})
    task_id = submit(srv, "d-hook", {"n": 1})
    assert wait_task(srv, task_id)["status"] == "succeeded"
    [row] = srv.wait_for(lambda: settled(srv, task_id), what="the delivery")
    assert row["status"] == "delivered" and row["type"] == "webhook"
    assert [a["status_code"] for a in row["attempt_log"]] == [503, 503, 200]
    assert row["attempt_log"][0]["error"] == "HTTP 503" and row["attempt_log"][2]["error"] is None
    assert all(a["duration_ms"] >= 0 for a in row["attempt_log"])
    [got] = receiver.accepted_at("/ok")
    assert receiver.bad_signatures == 0 and got["event"] == "task.succeeded"
    assert got["delivery"] == row["delivery_id"]
    record = got["record"]
    assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
    assert record["requestContext"] == {
        "requestId": task_id, "function": "d-hook", "version": "latest",
        "condition": "Success", "approximateInvokeCount": 1}
    assert record["requestPayload"] == {"n": 1}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "1",
                                         "functionError": None}
    assert record["responsePayload"] == {"echo": {"n": 1}, "task": task_id}


def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(srv: Server) -> None:
    rec = Receiver("whsec_not_the_secret")
    try:
        srv.deploy("d-badsig", ECHO)
        set_policy(srv, "d-badsig", destinations={"on_success": [
            {"type": "webhook", "url": rec.url()}]})
        task_id = submit(srv, "d-badsig", 1)
        [row] = srv.wait_for(lambda: settled(srv, task_id), what="the delivery")
        assert row["status"] == "failed" and row["attempts"] == 1  # a 401 is not retried
        assert row["attempt_log"][0]["status_code"] == 401 and rec.bad_signatures == 1
    finally:
        rec.close()


def test_on_failure_fires_for_dead_tasks_to_a_webhook_and_a_function(
        srv: Server, receiver: Receiver) -> None:
    srv.deploy("d-dlq", ECHO)
    srv.deploy("d-broken", FAIL)
    set_policy(srv, "d-broken", max_attempts=2, backoff_base_s=0.05, backoff_cap_s=0.1,
               destinations={"on_failure": [{"type": "webhook", "url": receiver.url("/fail")},
                                            {"type": "function", "name": "d-dlq"}]})
    task_id = submit(srv, "d-broken", {"order": 7})
    assert wait_task(srv, task_id)["status"] == "dead"
    rows = srv.wait_for(lambda: settled(srv, task_id, 2), what="both deliveries")
    assert [r["status"] for r in rows] == ["delivered", "delivered"]
    [got] = receiver.accepted_at("/fail")
    record = got["record"]
    assert got["event"] == "task.failed"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["responseContext"]["functionError"] == "function_error"
    assert "broken on purpose" in record["responsePayload"]["errorMessage"]
    dlq_task = rows[1]["outcome"]["task_id"]
    dlq = wait_task(srv, dlq_task)
    assert dlq["source"] == "destination" and dlq["trace_id"] == record_trace(srv, task_id)
    assert dlq["result"]["echo"]["requestPayload"] == {"order": 7}


def record_trace(server: Server, task_id: str) -> str:
    return str(server.http.get(f"/v1/tasks/{task_id}").json()["trace_id"])


def test_on_success_chain_is_a_function_destination_and_cycles_are_refused(
        srv: Server) -> None:
    srv.deploy("d-next", ECHO)
    srv.deploy("d-first", ECHO, on_success="d-next")
    task_id = submit(srv, "d-first", {"x": 1})
    [row] = srv.wait_for(lambda: settled(srv, task_id), what="the chain delivery")
    assert row["type"] == "function" and row["target"] == "d-next"
    nxt = wait_task(srv, row["outcome"]["task_id"])
    assert nxt["source"] == "chain" and nxt["result"]["echo"]["echo"] == {"x": 1}
    resp = srv.deploy("d-next", ECHO, on_success="d-first", expect=422)
    assert "on_success makes a cycle: d-next -> d-first -> d-next" in resp.json()["error"][
        "message"]


def test_a_slow_receiver_does_not_hold_up_tasks_or_other_receivers(
        srv: Server, receiver: Receiver) -> None:
    slow = Receiver(receiver.secret)
    slow.hold.clear()  # answers nothing until released
    try:
        srv.deploy("d-slowhook", ECHO)
        srv.deploy("d-fasthook", ECHO)
        set_policy(srv, "d-slowhook", destinations={"on_success": [
            {"type": "webhook", "url": slow.url(), "timeout_s": 60}]})
        set_policy(srv, "d-fasthook", destinations={"on_success": [
            {"type": "webhook", "url": receiver.url("/fast")}]})
        # more than a round looks at (twice the free slots): a backlog for a receiver with
        # no room must not fill the window and hold up the others
        resp = srv.http.post("/v1/functions/d-slowhook/tasks:batch", json=list(range(120)))
        stuck = [t["task_id"] for t in resp.json()["tasks"]]
        srv.wait_for(lambda: len(slow.calls) >= 0 and all(
            wait_task(srv, t)["status"] == "succeeded" for t in stuck), what="slow tasks")
        fast = [submit(srv, "d-fasthook", i) for i in range(5)]
        for t in fast:
            assert wait_task(srv, t)["status"] == "succeeded"
        srv.wait_for(lambda: len(receiver.accepted_at("/fast")) == 5, what="fast deliveries")
        assert all(deliveries(srv, t)[0]["status"] == "pending" for t in stuck)
    finally:
        slow.close()


def test_private_webhook_targets_are_refused_unless_allowed(make_server: Any) -> None:
    strict: Server = make_server()
    strict.deploy("d-private", ECHO)
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/",
                "http://[::1]:80/", "ftp://example.com/"):
        resp = strict.http.put("/v1/functions/d-private/task-policy", json={
            "destinations": {"on_success": [{"type": "webhook", "url": url}]}})
        assert resp.status_code == 422, (url, resp.text)


def test_kill_9_with_deliveries_due_then_all_delivered_after_restart(make_server: Any) -> None:
    root = open_tempdir()
    data = root / "data"
    first: Server = make_server(env=ENV, data=data)
    rec = Receiver(secret(first), fail_first=10**9)  # refuses everything for now
    try:
        first.deploy("d-crash", ECHO)
        set_policy(first, "d-crash", destinations={"on_success": [
            {"type": "webhook", "url": rec.url()}]})
        resp = first.http.post("/v1/functions/d-crash/tasks:batch", json=list(range(20)))
        ids = [t["task_id"] for t in resp.json()["tasks"]]
        for t in ids:
            assert wait_task(first, t)["status"] == "succeeded"
        first.wait_for(lambda: all(deliveries(first, t) and deliveries(first, t)[0]["attempts"]
                                   >= 1 for t in ids), what="first attempts")
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        rec.fail_first = 0
        with rec.lock:
            rec.calls.clear()
        second: Server = make_server(env=ENV, data=data)
        second.wait_for(lambda: len({a["record"]["requestContext"]["requestId"]
                                     for a in rec.accepted}) == 20, timeout=60,
                        what="every delivery after the restart")
        # the receiver answered before the server recorded it: wait for the records too
        second.wait_for(lambda: all(deliveries(second, t)[0]["status"] == "delivered"
                                    for t in ids), what="every delivery recorded")
        assert rec.bad_signatures == 0
    finally:
        rec.close()


# -- 4: topics ------------------------------------------------------------------------------
def test_a_topic_that_feeds_itself_stops_at_the_hop_limit(srv: Server) -> None:
    """A subscriber whose every success publishes twice to its own topic would double its
    tasks at each hop: the trace stops at the hop limit (16 chained tasks), as chains do."""
    srv.deploy("d-loop", ECHO)
    assert srv.http.post("/v1/topics", json={"name": "loop"}).status_code == 201
    assert srv.http.post("/v1/topics/loop/subscriptions",
                         json={"function": "d-loop"}).status_code == 201
    set_policy(srv, "d-loop", destinations={"on_success": [
        {"type": "topic", "name": "loop"}, {"type": "topic", "name": "loop"}]})
    resp = srv.http.post("/v1/topics/loop/publish", json={"message": {"n": 0}})
    assert resp.status_code == 202, resp.text

    def tasks() -> list[dict[str, Any]]:
        body = srv.http.get("/v1/tasks", params={"function": "d-loop", "limit": 1000}).json()
        return list(body["tasks"])

    def stopped() -> bool:
        return any(d["status"] == "failed" and "the limit" in (d["error"] or "")
                   for t in tasks() if t["status"] == "succeeded"
                   for d in deliveries(srv, t["task_id"]))

    srv.wait_for(stopped, timeout=60, what="a publish refused at the hop limit")
    srv.wait_for(lambda: all(t["status"] in TERMINAL for t in tasks()),
                 what="the last tasks to end")
    # 16 and what was under way when it was reached (each ended task published at most 2)
    assert len(tasks()) <= 16 + 2 * 8, len(tasks())


def test_topic_fan_out_to_three_subscribers_with_a_filter(srv: Server) -> None:
    for name in ("d-sub-a", "d-sub-b", "d-sub-c"):
        srv.deploy(name, ECHO)
    assert srv.http.post("/v1/topics", json={"name": "orders"}).status_code == 201
    assert srv.http.post("/v1/topics", json={"name": "orders"}).status_code == 409
    for name, flt in (("d-sub-a", None), ("d-sub-b", {"region": "eu"}),
                      ("d-sub-c", {"region": "eu", "kind.type": "big"})):
        resp = srv.http.post("/v1/topics/orders/subscriptions",
                             json={"function": name, "filter": flt})
        assert resp.status_code == 201, resp.text
    topic = srv.http.get("/v1/topics/orders").json()
    assert [s["function"] for s in topic["subscriptions"]] == ["d-sub-a", "d-sub-b", "d-sub-c"]

    def publish(message: Any, message_id: str) -> list[dict[str, Any]]:
        resp = srv.http.post("/v1/topics/orders/publish",
                             json={"message": message, "message_id": message_id})
        assert resp.status_code == 202, resp.text
        return list(resp.json()["tasks"])

    big = publish({"region": "eu", "kind": {"type": "big"}}, "m1")
    assert sorted(t["function"] for t in big) == ["d-sub-a", "d-sub-b", "d-sub-c"]
    small = publish({"region": "us", "kind": {"type": "big"}}, "m2")
    assert [t["function"] for t in small] == ["d-sub-a"]
    again = publish({"region": "eu", "kind": {"type": "big"}}, "m1")  # at most once per id
    assert {t["task_id"] for t in again} == {t["task_id"] for t in big}
    assert not any(t["created"] for t in again)
    for t in big + small:
        done = wait_task(srv, t["task_id"])
        assert done["status"] == "succeeded" and done["source"] == "topic"
    # a topic destination publishes the record
    set_policy(srv, "d-sub-a", destinations={"on_success": [{"type": "topic",
                                                             "name": "audit"}]})
    assert srv.http.post("/v1/topics", json={"name": "audit"}).status_code == 201
    srv.http.post("/v1/topics/audit/subscriptions", json={"function": "d-sub-b"})
    task_id = submit(srv, "d-sub-a", {"region": "eu"})
    [row] = srv.wait_for(lambda: settled(srv, task_id), what="the topic delivery")
    [fan] = row["outcome"]["tasks"]
    assert fan["function"] == "d-sub-b"
    assert wait_task(srv, fan["task_id"])["result"]["echo"]["requestContext"][
        "requestId"] == task_id
    assert srv.http.get("/v1/topics/nope").status_code == 404
    assert srv.http.post("/v1/topics/nope/publish", json={"message": 1}).status_code == 404


# -- 5-7: task operations -------------------------------------------------------------------
def test_redrive_after_fixing_a_failing_function(srv: Server) -> None:
    srv.deploy("d-fixme", FAIL)
    set_policy(srv, "d-fixme", max_attempts=1)
    ids = [submit(srv, "d-fixme", {"i": i}) for i in range(3)]
    for t in ids:
        assert wait_task(srv, t)["status"] == "dead"
    dead = srv.http.get("/v1/tasks", params={"function": "d-fixme", "status": "dead"}).json()
    assert {t["task_id"] for t in dead["tasks"]} == set(ids)
    srv.deploy("d-fixme", ECHO)  # fixed
    one = srv.http.post("/v1/tasks:redrive", json={"ids": ids[:1]}).json()
    assert one["redriven"] == 1 and one["tasks"][0]["redrive_of"] == ids[0]
    rest = srv.http.post("/v1/tasks:redrive", json={"function": "d-fixme",
                                                    "status": "dead"}).json()
    assert rest["redriven"] == 2
    assert srv.http.post("/v1/tasks:redrive", json={"function": "d-fixme"}).json()[
        "redriven"] == 0  # redriven once
    for t in one["tasks"] + rest["tasks"]:
        done = wait_task(srv, t["task_id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1
        assert done["redrive_of"] == t["redrive_of"]
        original = srv.http.get(f"/v1/tasks/{t['redrive_of']}").json()
        assert original["status"] == "redriven" and original["redriven_to"] == t["task_id"]
    assert srv.http.get("/v1/tasks", params={"function": "d-fixme",
                                             "status": "dead"}).json()["tasks"] == []
    purged = srv.http.post("/v1/tasks:purge", json={"function": "d-fixme",
                                                    "status": "redriven"}).json()
    assert purged["purged"] == 3


def test_pause_holds_1000_tasks_through_a_restart_and_resume_drains_them(
        make_server: Any) -> None:
    root = open_tempdir()
    data = root / "data"
    first: Server = make_server(env=ENV, data=data)
    first.deploy("d-pause", ECHO, max_instances=4)
    first.deploy("d-other", ECHO)
    assert first.http.post("/v1/functions/d-pause/queue:pause").json()["paused"] is True
    resp = first.http.post("/v1/functions/d-pause/tasks:batch", json=list(range(1000)))
    assert resp.status_code == 202
    ids = [t["task_id"] for t in resp.json()["tasks"]]
    # the dispatcher works (another function's task runs) but leases none of the paused ones
    assert wait_task(first, submit(first, "d-other", 1))["status"] == "succeeded"
    queue = first.http.get("/v1/functions/d-pause/queue").json()
    assert queue["paused"] is True and queue["counts"] == {"queued": 1000}
    first.stop()
    second: Server = make_server(env=ENV, data=data)
    assert wait_task(second, submit(second, "d-other", 2))["status"] == "succeeded"
    queue = second.http.get("/v1/functions/d-pause/queue").json()
    assert queue["paused"] is True and queue["counts"] == {"queued": 1000}
    assert queue["depth"] == 1000 and queue["oldest_age_s"] >= 0
    assert second.http.post("/v1/functions/d-pause/queue:resume").json()["paused"] is False
    second.wait_for(lambda: second.http.get("/v1/functions/d-pause/queue").json()["counts"]
                    == {"succeeded": 1000}, timeout=120, what="the queue to drain")
    assert wait_task(second, ids[-1])["result"]["echo"] == 999


def test_cancel_by_filter_delays_and_priority(srv: Server) -> None:
    srv.deploy("d-prio", ECHO, max_instances=1)
    srv.http.post("/v1/functions/d-prio/queue:pause")
    low = [submit(srv, "d-prio", f"low{i}") for i in range(3)]
    high = submit(srv, "d-prio", "high", priority=10)
    later = submit(srv, "d-prio", "later", delay_s=3600)
    view = srv.http.get(f"/v1/tasks/{later}").json()
    assert view["run_at"] >= view["created_at"] + 3599 and view["priority"] == 0
    cancelled = srv.http.post("/v1/tasks:cancel", json={"function": "d-prio",
                                                        "ids": [later]}).json()
    assert cancelled["cancelled"] == 1 and wait_task(srv, later)["status"] == "cancelled"
    srv.http.post("/v1/functions/d-prio/queue:resume")
    done = [wait_task(srv, t) for t in [high, *low]]
    starts = [d["started_at"] for d in done]
    assert starts[0] <= min(starts[1:])  # the high priority task ran first
    # cancel everything queued of a function at once
    srv.http.post("/v1/functions/d-prio/queue:pause")
    ids = [submit(srv, "d-prio", i) for i in range(5)]
    resp = srv.http.post("/v1/tasks:cancel", json={"function": "d-prio", "status": "queued"})
    assert resp.status_code == 200 and resp.json()["cancelled"] == 5
    assert {wait_task(srv, t)["status"] for t in ids} == {"cancelled"}
    srv.http.post("/v1/functions/d-prio/queue:resume")
    bad = srv.http.post("/v1/tasks:cancel", json={"status": "queued"})
    assert bad.status_code == 400


# -- 8: workflows ---------------------------------------------------------------------------
def run_workflow(srv: Server, body: dict[str, Any]) -> dict[str, Any]:
    """Start a workflow and wait for its end: its view then."""
    resp = srv.http.post("/v1/workflows", json=body)
    assert resp.status_code == 202, resp.text
    wf_id = resp.json()["workflow_id"]

    def finished() -> dict[str, Any] | None:
        view = dict(srv.http.get(f"/v1/workflows/{wf_id}").json())
        return view if view["status"] != "running" else None

    return dict(srv.wait_for(finished, timeout=60, what=f"workflow {wf_id} to end"))


def test_a_map_over_more_than_10000_items_fails_the_workflow(srv: Server) -> None:
    """A step that returns a list of 10,001 items for the next to map over: the map would
    make 10,001 tasks in one write; the workflow fails instead, saying why."""
    srv.deploy("w-many", {"main.py": "def handler(e, c):\n    return list(range(10_001))\n"})
    srv.deploy("w-each", ECHO)
    done = run_workflow(srv, {"chain": ["w-many", {"map": "w-each"}]})
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "map_input_too_large", done["error"]
    assert srv.http.get("/v1/tasks", params={"function": "w-each"}).json()["tasks"] == []


def test_a_stage_output_too_large_for_the_next_step_is_counted_not_read(srv: Server) -> None:
    """A map of three 3 MB results: the next step's input would be over 6 MiB. The workflow
    fails saying so, with the store's count of the results (9,000,006 bytes: the list built
    from them would be 4 bytes more), and the next step never runs."""
    srv.deploy("w-three", {"main.py": "def handler(e, c):\n    return [0, 1, 2]\n"})
    srv.deploy("w-fat", {"main.py": "def handler(e, c):\n    return 'x' * 3_000_000\n"})
    srv.deploy("w-after", ECHO)
    done = run_workflow(srv, {"chain": ["w-three", {"map": "w-fat"}, "w-after"]})
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "step_output_too_large", done["error"]
    assert "stage 1 is 9000006 bytes" in done["error"]["message"], done["error"]
    assert srv.http.get("/v1/tasks", params={"function": "w-after"}).json()["tasks"] == []


def test_workflow_chain_with_a_group_of_10_and_a_chord_callback(srv: Server) -> None:
    srv.deploy("w-range", {"main.py": "def handler(e, c):\n    return list(range(e['n']))\n"})
    srv.deploy("w-square", {"main.py": "def handler(e, c):\n    return e * e\n"})
    srv.deploy("w-sum", {"main.py": "def handler(e, c):\n    return sum(e)\n"})
    srv.deploy("w-double", {"main.py": "def handler(e, c):\n    return e * 2\n"})
    srv.deploy("w-alert", ECHO)
    srv.deploy("w-fail", FAIL)
    set_policy(srv, "w-fail", max_attempts=1)
    body = run_workflow(srv, {
        "chain": ["w-range", {"map": "w-square", "callback": "w-sum"}, "w-double"],
        "input": {"n": 10}})
    assert body["status"] == "succeeded" and body["result"] == 2 * sum(i * i for i in range(10))
    assert [len(s["tasks"]) for s in body["stages"]] == [1, 10, 1, 1]
    assert body["stages"][2]["callback"] is True
    assert body["progress"]["stages_done"] == 4 and body["progress"]["tasks"] == {
        "succeeded": 13}
    # a group of different functions: each gets the same input; its output is the list
    assert run_workflow(srv, {"chain": [{"group": ["w-double", "w-square", "w-double"]}],
                              "input": 3})["result"] == [6, 9, 6]
    # a failing step fails the workflow and runs on_failure
    failed = run_workflow(srv, {"chain": ["w-double", "w-fail", "w-double"],
                                "on_failure": "w-alert", "input": 1})
    wf_id = failed["workflow_id"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "step_failed"
    alert = wait_task(srv, srv.wait_for(lambda: srv.http.get(
        f"/v1/workflows/{wf_id}").json()["failure_task_id"], what="on_failure"))
    assert alert["result"]["echo"]["workflow_id"] == wf_id
    assert alert["result"]["echo"]["function"] == "w-fail"
    # definitions by name
    resp = srv.http.put("/v1/workflow-definitions/squares", json={
        "chain": ["w-range", {"map": "w-square", "callback": "w-sum"}]})
    assert resp.status_code == 200, resp.text
    assert run_workflow(srv, {"name": "squares", "input": {"n": 4}})["result"] == 14
    for bad in ({"chain": []}, {"chain": [{"group": []}]}, {"chain": [{"map": "x",
                                                                       "group": ["y"]}]}):
        assert srv.http.post("/v1/workflows", json=bad).status_code == 422, bad
    assert srv.http.post("/v1/workflows", json={"chain": ["nope"]}).status_code == 404
    assert srv.http.get("/v1/workflows/nope").status_code == 404


# -- 9: metrics -----------------------------------------------------------------------------
def test_metrics_show_queues_final_states_deliveries_and_redrives(srv: Server) -> None:
    srv.deploy("d-metrics", ECHO)
    srv.http.post("/v1/functions/d-metrics/queue:pause")
    submit(srv, "d-metrics", 1)
    text = srv.http.get("/metrics").text
    assert 'faasbox_task_queue_depth{function="d-metrics",tenant="default"} 1.0' in text
    assert 'faasbox_task_queue_oldest_age_seconds{function="d-metrics"' in text
    assert 'faasbox_task_queue_paused{function="d-metrics",tenant="default"} 1.0' in text
    # the series exist whatever ran before this test (tests run in any order)
    for family in ("faasbox_tasks_finished", "faasbox_deliveries_total",
                   "faasbox_redrives_total"):
        assert f"# TYPE {family} " in text, family
    srv.http.post("/v1/functions/d-metrics/queue:resume")


# -- the CLI and the stack file -------------------------------------------------------------
def test_cli_covers_queues_redrive_topics_and_workflows(srv: Server) -> None:
    from tests.acceptance.test_cli import run

    srv.deploy("c-step", {"main.py": "def handler(e, c):\n    return (e or 0) + 1\n"})
    srv.deploy("c-bad", FAIL)
    set_policy(srv, "c-bad", max_attempts=1)
    assert "paused" in run(srv, "queue", "pause", "c-step").stdout
    task_id = submit(srv, "c-step", 1)
    shown = json.loads(run(srv, "queue", "show", "c-step", "--json").stdout)
    assert shown["paused"] is True and shown["counts"] == {"queued": 1}
    run(srv, "queue", "resume", "c-step")
    assert wait_task(srv, task_id)["result"] == 2
    dead = submit(srv, "c-bad", 1)
    assert wait_task(srv, dead)["status"] == "dead"
    redriven = json.loads(run(srv, "task", "redrive", "-f", "c-bad", "--json").stdout)
    assert redriven["redriven"] == 1 and redriven["tasks"][0]["redrive_of"] == dead
    run(srv, "queue", "pause", "c-step")
    submit(srv, "c-step", 5)
    assert "cancelled 1 tasks" in run(srv, "task", "cancel", "-f", "c-step").stdout
    run(srv, "queue", "resume", "c-step")
    run(srv, "topic", "create", "c-news")
    run(srv, "topic", "subscribe", "c-news", "c-step", "--filter", '{"k": 1}')
    published = json.loads(run(srv, "topic", "publish", "c-news", "-d", "3", "--json").stdout)
    assert published["tasks"] == []  # 3 is not an object: the filter does not match
    assert "c-step" in run(srv, "topic", "show", "c-news").stdout
    out = run(srv, "workflow", "run", "--chain", '["c-step", {"group": ["c-step", "c-step"]}]',
              "--input", "1", "--wait", "--json").stdout
    wf = json.loads(out)
    assert wf["status"] == "succeeded" and wf["result"] == [3, 3]
    assert "succeeded" in run(srv, "workflow", "show", wf["workflow_id"]).stdout
    stack = srv.functions_root / "flows.yaml"
    folder = srv.folder("c-stackfn", {"main.py": "def handler(e, c):\n    return e * 10\n"})
    stack.write_text(f"functions:\n  c-stackfn:\n    path: {folder}\n    handler: main:handler\n"
                     "workflows:\n  tenfold:\n    chain: [c-stackfn, c-stackfn]\n")
    run(srv, "deploy", "-f", str(stack))
    wf = json.loads(run(srv, "workflow", "run", "tenfold", "-d", "2", "--wait",
                        "--json").stdout)
    assert wf["result"] == 200 and wf["name"] == "tenfold"
    assert run(srv, "webhook-secret").stdout.startswith("whsec_")


def test_another_tenants_topics_workflows_deliveries_and_dead_letters_are_out_of_reach(
        srv: Server) -> None:
    assert srv.http.post("/v1/tenants", json={"name": "d-other-team"}).status_code == 201
    key = srv.http.post("/v1/tenants/d-other-team/keys",
                        json={"scope": "developer"}).json()["key"]
    other = srv.client(key)
    srv.deploy("d-mine", FAIL)
    set_policy(srv, "d-mine", max_attempts=1)
    dead = submit(srv, "d-mine", 1)
    assert wait_task(srv, dead)["status"] == "dead"
    srv.http.post("/v1/topics", json={"name": "d-private-topic"})
    wf = srv.http.post("/v1/workflows", json={"chain": ["d-mine"], "input": 1}).json()
    try:
        assert other.get(f"/v1/tasks/{dead}/deliveries").status_code == 404
        assert other.get("/v1/topics/d-private-topic").status_code == 404
        assert other.post("/v1/topics/d-private-topic/publish",
                          json={"message": 1}).status_code == 404
        assert other.get(f"/v1/workflows/{wf['workflow_id']}").status_code == 404
        assert other.post("/v1/tasks:redrive", json={"ids": [dead]}).json()["redriven"] == 0
        assert other.post("/v1/tasks:purge", json={"ids": [dead]}).json()["purged"] == 0
        assert other.post("/v1/functions/d-mine/queue:pause").status_code == 404
        assert other.get("/v1/webhook-secret").json()["secret"] != secret(srv)
        assert srv.http.get(f"/v1/tasks/{dead}").json()["status"] == "dead"
    finally:
        other.close()
