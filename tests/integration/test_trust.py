"""Nothing an instance sends is trusted: its own result frames, its clock, garbage."""

from __future__ import annotations

from typing import Any

from tests.conftest import Server

# a handler that finds the node's socket and writes a frame of its own on it
FORGER = {"main.py": """
    import json, os, socket, struct, time

    def node_socket():
        for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    return socket.socket(fileno=os.dup(fd))
            except OSError:
                pass

    def frame(header, payload=b""):
        head = json.dumps(header).encode()
        return struct.pack(">II", 4 + len(head) + len(payload), len(head)) + head + payload

    def handler(event, context):
        if event["how"] == "none":
            return "ok"
        sock = node_socket()
        if event["how"] == "huge":
            body = b'"' + b"x" * (60 * 2**20) + b'"'
            sock.sendall(frame({"t": "result", "id": context.request_id, "ok": True,
                                "duration_ms": 1}, body))
        elif event["how"] == "fat":  # its own result, with what the worker never sends
            sock.sendall(frame({"t": "result", "id": context.request_id, "ok": False,
                                "logs": "y" * (3 * 2**20), "duration_ms": 1,
                                "error": {"type": "X", "message": {"m": [1]},
                                          "traceback": 5}}))
        elif event["how"] == "garbage":
            sock.sendall(struct.pack(">II", 40, 500) + b"\\xff" * 36)
        elif event["how"] == "header":
            sock.sendall(struct.pack(">II", 10, 6) + b"[1,2]x")
        elif event["how"] == "ahead":  # answer the call sent ahead before it has started
            import select
            if not select.select([sock], [], [], 10)[0]:
                return "nothing was sent ahead"
            data = sock.recv(65536)
            hlen = struct.unpack(">I", data[4:8])[0]
            ahead = json.loads(data[8:8 + hlen])["id"]
            sock.sendall(frame({"t": "result", "id": ahead, "ok": True, "duration_ms": 1},
                               b'"forged"'))
        time.sleep(5)
        return "not this"
"""}
CLOCK = {"main.py": """
    import time
    def handler(event, context):
        real = time.perf_counter
        time.perf_counter = lambda: real() - 1e9  # the worker's clock goes back a billion s
        time.sleep(0.05)
        return "done"
"""}


def test_a_forged_huge_result_kills_the_instance_before_it_is_read(server: Server) -> None:
    server.deploy("tr-forge", FORGER)
    for how in ("huge", "garbage", "header"):
        resp = server.invoke("tr-forge", {"how": how})
        assert resp.status_code == 500, resp.text
        assert resp.json()["error"]["code"] == "protocol_error", resp.text
        assert all(i["state"] != "idle" for i in server.instances("tr-forge"))
    ok = server.invoke("tr-forge", {"how": "none"})  # the next call gets a new instance
    assert ok.status_code == 200 and ok.json() == "ok"


def test_a_results_text_fields_are_checked_and_cut(server: Server) -> None:
    """3 MiB of logs and an error message that is not text, in a result the function wrote
    itself: the record keeps text, cut, and the task's end is written like any other."""
    server.deploy("tr-fat", FORGER)
    resp = server.invoke("tr-fat", {"how": "fat"})
    assert resp.status_code == 500, resp.text
    err = resp.json()["error"]
    assert err["code"] == "function_error" and err["message"] == "", err
    rec = server.http.get(f"/v1/invocations/{resp.headers['x-faasbox-request-id']}").json()
    assert rec["status"] == "failed" and len(rec["logs"]) < 71_000, len(rec["logs"])
    task = server.http.post("/v1/functions/tr-fat/tasks", json={"how": "fat"}).json()
    assert wait(server, task["task_id"])["status"] in ("failed", "dead")
    assert server.invoke("tr-fat", {"how": "none"}).json() == "ok"


def test_durations_are_the_nodes_own(server: Server) -> None:
    server.deploy("tr-clock", CLOCK)
    resp = server.invoke("tr-clock")
    assert resp.status_code == 200
    duration = float(resp.headers["x-faasbox-duration-ms"])
    assert duration >= 50.0  # it slept 50 ms; the worker's clock said otherwise
    rec = server.http.get(f"/v1/invocations/{resp.headers['x-faasbox-request-id']}").json()
    assert rec["billed_ms"] >= 50 and rec["gb_s"] > 0


def test_a_result_forged_for_a_call_sent_ahead_is_refused(server: Server) -> None:
    """A handler reads the next task's frame, sent ahead to its instance, and answers it
    before it has started: the instance is killed, and the task sent ahead never ran, so
    it goes back to the queue and runs once, with its own result."""
    server.deploy("tr-ahead", FORGER, max_instances=1, timeout_s=30)
    server.http.put("/v1/functions/tr-ahead/task-policy", json={"max_attempts": 1})
    warm = server.http.post("/v1/functions/tr-ahead/tasks:batch",
                            json=[{"how": "none"}] * 100).json()["tasks"]
    for task in warm:
        assert wait(server, task["task_id"])["status"] == "succeeded"
    forger = server.http.post("/v1/functions/tr-ahead/tasks", json={"how": "ahead"}).json()
    server.wait_for(lambda: [i for i in server.instances("tr-ahead") if i["in_flight"] == 1],
                    what="the forger to run")
    victim = server.http.post("/v1/functions/tr-ahead/tasks", json={"how": "none"}).json()
    forged = wait(server, forger["task_id"])
    assert forged["status"] == "dead" and forged["error"]["code"] == "protocol_error", forged
    done = wait(server, victim["task_id"])
    assert done["status"] == "succeeded" and done["result"] == "ok", done
    assert done["attempts"] == 1 and len(done["invocation_ids"]) == 1


def wait(server: Server, task_id: str) -> dict[str, Any]:
    return dict(server.wait_for(
        lambda: (lambda t: t if t["status"] not in ("queued", "running", "retry_wait")
                 else None)(server.http.get(f"/v1/tasks/{task_id}").json()),
        timeout=60, what=f"task {task_id} to end"))
