"""Nothing an instance sends is trusted: its own result frames, its clock, garbage."""

from __future__ import annotations

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
        elif event["how"] == "garbage":
            sock.sendall(struct.pack(">II", 40, 500) + b"\\xff" * 36)
        elif event["how"] == "header":
            sock.sendall(struct.pack(">II", 10, 6) + b"[1,2]x")
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


def test_durations_are_the_nodes_own(server: Server) -> None:
    server.deploy("tr-clock", CLOCK)
    resp = server.invoke("tr-clock")
    assert resp.status_code == 200
    duration = float(resp.headers["x-faasbox-duration-ms"])
    assert duration >= 50.0  # it slept 50 ms; the worker's clock said otherwise
    rec = server.http.get(f"/v1/invocations/{resp.headers['x-faasbox-request-id']}").json()
    assert rec["billed_ms"] >= 50 and rec["gb_s"] > 0
