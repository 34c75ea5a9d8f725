"""Instance lifecycle: scaling limits, throttling, idle reaping, min_instances, faults."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
import uuid
from typing import Any

import pytest

from tests.conftest import Server, gate_dir, process_alive

SLEEPER = {"main.py": """
    import os, time
    def handler(event, context):
        time.sleep((event or {}).get("sleep", 0))
        return context.instance_id
"""}
# holds its instance until the file ``event["gate"]`` exists (at most 100 s); the gate's dir
# (a gate_dir()) must be visible inside the instance
GATED = {"main.py": """
    import os, time
    def handler(event, context):
        if not os.path.isdir(os.path.dirname(event["gate"])):
            raise RuntimeError("the gate dir is not visible in the instance")
        deadline = time.monotonic() + 100
        while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        return context.instance_id
"""}


def test_parallel_invokes_never_exceed_max_instances(server: Server) -> None:
    server.deploy("l-max", SLEEPER, max_instances=2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(server.invoke, "l-max", {"sleep": 0.3}) for _ in range(8)]
        peak = 0
        while not all(f.done() for f in futures):
            peak = max(peak, len(server.instances("l-max")))
            time.sleep(0.02)
        results = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert len({r.json() for r in results}) <= 2
    assert peak <= 2
    records = server.http.get("/v1/invocations", params={"function": "l-max"}).json()
    assert len({r["instance_id"] for r in records["invocations"]}) <= 2
    assert sum(r["cold_start"] for r in records["invocations"]) <= 2


def test_burst_starts_instances_in_parallel(make_server: Any) -> None:
    # a long acquire timeout: a call may wait for an instance the autoscaler started
    server: Server = make_server(env={"FAASBOX_ACQUIRE_TIMEOUT_S": "60"})
    version = server.deploy("l-burst", GATED, max_instances=6, timeout_s=120).json()[
        "latest_version"]
    gate = gate_dir() / f"gate-{uuid.uuid4().hex}"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(server.invoke, "l-burst", {"gate": str(gate)}) for _ in range(6)]
        try:
            # every handler holds its instance until the gate opens: six at once
            server.wait_for(lambda: sum(i["state"] == "busy" and i["version"] == version
                                        for i in server.instances("l-burst")) == 6,
                            timeout=60, what="six calls running at once")
        finally:
            gate.touch()
        results = [c.result() for c in calls]
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert len({r.json() for r in results}) == 6
    # the first call found no instance; a later one may have been given an instance the
    # autoscaler started during the burst (not a cold start of its own)
    assert sum(r.headers["x-faasbox-cold-start"] == "true" for r in results) >= 1


def test_beyond_max_instances_gets_429_after_bounded_wait(server: Server) -> None:
    server.deploy("l-429", SLEEPER, max_instances=1, timeout_s=10)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(server.invoke, "l-429", {"sleep": 5})
        server.wait_for(lambda: any(i["state"] == "busy" for i in server.instances("l-429")),
                        what="a busy instance")
        started = time.monotonic()
        throttled = server.invoke("l-429", {"sleep": 0})
        waited = time.monotonic() - started
        assert busy.result().status_code == 200
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "throttled"
    assert int(throttled.headers["retry-after"]) >= 1
    # it waited the server's 3 s acquire timeout, and no longer: the instance freed up
    # only when the 5 s call ended, and a call still waiting then would have got it (200)
    assert waited >= 2.9


def test_waiting_call_gets_the_freed_instance(server: Server) -> None:
    server.deploy("l-wait", SLEEPER, max_instances=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(server.invoke, "l-wait", {"sleep": 1})
        server.wait_for(lambda: any(i["state"] == "busy" for i in server.instances("l-wait")),
                        what="a busy instance")
        second = server.invoke("l-wait", {"sleep": 0})
    assert first.result().status_code == 200 and second.status_code == 200
    assert second.json() == first.result().json()
    assert second.headers["x-faasbox-cold-start"] == "false"


def test_idle_ttl_scales_to_zero(server: Server) -> None:
    server.deploy("l-ttl", SLEEPER, idle_ttl_s=1)
    pid = server.pid_of("l-ttl", server.invoke("l-ttl").json())
    server.wait_for(lambda: server.instances("l-ttl") == [], timeout=10, what="scale to zero")
    # out of the list at once, stopped in the background
    server.wait_for(lambda: not process_alive(pid), what="the instance process to exit")
    again = server.invoke("l-ttl")
    assert again.headers["x-faasbox-cold-start"] == "true"


def test_min_instances_stay_warm(server: Server) -> None:
    server.deploy("l-min", SLEEPER, min_instances=2, idle_ttl_s=0.5)
    server.wait_for(lambda: sum(i["state"] == "idle" for i in server.instances("l-min")) == 2,
                    what="two warm instances")
    time.sleep(1.5)  # three idle TTLs: the floor must hold
    assert len(server.instances("l-min")) == 2
    resp = server.invoke("l-min")
    assert resp.headers["x-faasbox-cold-start"] == "false"


def test_timeout_gives_504_and_next_call_works(server: Server) -> None:
    server.deploy("l-timeout", SLEEPER, timeout_s=0.5)
    slow = server.invoke("l-timeout", {"sleep": 3})
    assert slow.status_code == 504
    err = slow.json()["error"]
    assert err["code"] == "timeout" and "0.5 s" in err["message"]
    record = server.http.get(f"/v1/invocations/{slow.headers['x-faasbox-request-id']}").json()
    assert record["status"] == "timeout" and record["billed_ms"] >= 500
    ok = server.invoke("l-timeout", {"sleep": 0})
    assert ok.status_code == 200
    assert ok.headers["x-faasbox-cold-start"] == "true"


def test_each_call_is_timed_from_its_own_start(server: Server) -> None:
    """One timer serves an instance's deadlines: armed by a quick call, it fires while a
    later call runs, which must go on to its own deadline (and be stopped there)."""
    server.deploy("l-deadline", SLEEPER, timeout_s=2)
    assert server.invoke("l-deadline", {"sleep": 0}).status_code == 200  # arms at +2 s
    time.sleep(1)
    within = server.invoke("l-deadline", {"sleep": 1.4})  # runs past the quick call's +2 s
    assert within.status_code == 200
    assert within.headers["x-faasbox-cold-start"] == "false"
    slow = server.invoke("l-deadline", {"sleep": 5})
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"


def test_a_call_is_timed_finer_than_the_loops_millisecond_clock(server: Server) -> None:
    """The node times a call from before its frame is sent to after its answer arrives, so
    the duration is never under the handler's own sleep, and is not rounded to a whole
    millisecond (the event loop's clock is: a 20.3 ms call read 20 or 21)."""
    server.deploy("l-timed", SLEEPER)
    durations = []
    for _ in range(3):
        resp = server.invoke("l-timed", {"sleep": 0.0203})
        assert resp.status_code == 200
        durations.append(float(resp.headers["x-faasbox-duration-ms"]))
    assert min(durations) >= 20.3, durations
    assert any(d != int(d) for d in durations), durations


def test_out_of_memory_and_next_call_works(server: Server) -> None:
    if not server.feature("memory limit"):
        pytest.skip("faasbox doctor reports no memory limit on this machine")
    server.deploy("l-oom", {"main.py": """
        def handler(event, context):
            if event == "hog":
                hoard = [bytearray(16 * 2**20) for _ in range(64)]
                return len(hoard)
            return "fine"
    """}, memory_mb=128)
    hog = server.invoke("l-oom", "hog")
    assert hog.status_code == 500
    err = hog.json()["error"]
    assert err["code"] == "out_of_memory" and "128 MB" in err["message"]
    ok = server.invoke("l-oom", "small")
    assert ok.status_code == 200 and ok.json() == "fine"
    assert ok.headers["x-faasbox-cold-start"] == "true"


def test_os_exit_is_a_clear_error_and_next_call_works(server: Server) -> None:
    server.deploy("l-exit", {"main.py": """
        import os
        def handler(event, context):
            if event == "exit":
                os._exit(7)
            return "alive"
    """})
    assert server.invoke("l-exit", "warm").status_code == 200
    crash = server.invoke("l-exit", "exit")
    assert crash.status_code == 500
    err = crash.json()["error"]
    assert err["code"] == "instance_crashed" and "code 7" in err["message"]
    ok = server.invoke("l-exit", "again")
    assert ok.json() == "alive" and ok.headers["x-faasbox-cold-start"] == "true"


def test_killed_idle_instance_is_replaced(server: Server) -> None:
    server.deploy("l-kill", SLEEPER)
    first = server.invoke("l-kill").json()
    os.kill(server.pid_of("l-kill", first), signal.SIGKILL)
    server.wait_for(lambda: server.instances("l-kill") == [], what="the dead instance cleared")
    resp = server.invoke("l-kill")
    assert resp.status_code == 200 and resp.json() != first


def test_deleting_a_function_stops_its_instances(server: Server) -> None:
    server.deploy("l-del", SLEEPER)
    pid = server.pid_of("l-del", server.invoke("l-del").json())
    assert server.http.delete("/v1/functions/l-del").status_code == 204

    server.wait_for(lambda: not process_alive(pid), what="the instance process to exit")
