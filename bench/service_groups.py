"""Service groups: an online function's warm latency while a 10,000-task batch runs beside it.

One server per mode (``--modes``, default ``groups nogroups``), each with ``--node-memory-mb``
(4096) for instances:

- ``groups``: group ``online`` (512 MB, ``min_instances`` 1, no CPU limit) holds the online
  function (the echo function, 128 MB); group ``batch`` (``--batch-memory-mb`` 1024,
  ``--batch-cpus`` 1, ``--batch-max`` 4 instances) holds the batch function, which burns
  ``--work-ms`` of CPU per task (256 MB). Where cgroups are writable each group is a parent
  cgroup with those limits (``params.isolation`` says what the node enforced).
- ``nogroups``: the same two functions outside groups (the online one with ``min_instances``
  1, the batch one with ``max_instances`` = ``--batch-max``): the baseline, where the batch
  may take every core.

In each mode the online function is warmed up, then one closed-loop client (a keep-alive
``http.client`` connection) sends ``--requests`` sync invokes, ``--think-ms`` apart: first with
the machine idle, then again while ``--tasks`` tasks of the batch function (submitted through
``tasks:batch`` just before) run. The batch is then waited for (``--no-wait`` skips that).

Figures (bench/README.md has the table): ``groups.online.p50`` / ``.p99`` (ms, ``phase``
``idle`` or ``batch``), ``groups.online.ratio_p50`` / ``ratio_p99`` (batch / idle, same mode),
``groups.online.cold_starts``, ``groups.batch.done_during`` (tasks finished while the batch
phase's online calls ran), ``groups.batch.duration`` and ``tasks_per_s`` (the whole batch),
``groups.host_cpu`` (the machine's busy cores over each phase).

Every figure has ``params.mode``; the batch ones have ``work_ms``, ``tasks`` and ``cpus``.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from common import FUNCTIONS_DIR, FaasboxServer, emit, host_busy_seconds, percentile, say

BURN = '''
import time

def handler(event, context):
    """Burn ``ms`` milliseconds of CPU (a batch task's work)."""
    end = time.thread_time() + event["ms"] / 1000
    n = 0
    while time.thread_time() < end:
        n += 1
    return n
'''
BATCH = 1000  # events per tasks:batch request (the API's cap)


def admin_key(fb: FaasboxServer) -> str:
    """The server's admin key: taken by ``FaasboxServer`` itself where it does, else read
    from the data dir (and put on its client)."""
    key = getattr(fb, "api_key", None)
    if not key:
        path = fb.data / "admin.key"
        deadline = time.monotonic() + 30
        while not (path.exists() and path.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no admin key in {path}")
            time.sleep(0.02)
        key = path.read_text().strip()
        fb.http.headers["Authorization"] = f"Bearer {key}"
    return str(key)


class Online:
    """One keep-alive connection invoking the online function in a closed loop."""

    def __init__(self, fb: FaasboxServer, key: str, function: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=60)
        self.path = f"/v1/functions/{function}/invoke"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self) -> tuple[float, bool]:
        """One invoke: ``(latency ms, cold start)``."""
        started = time.perf_counter()
        self.conn.request("POST", self.path, body=b'{"n": 1}', headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            raise RuntimeError(f"online invoke -> {resp.status}: {body[:500]!r}")
        return elapsed, resp.getheader("X-Faasbox-Cold-Start") == "true"

    def run(self, requests: int, think_s: float) -> tuple[list[float], int]:
        latencies, colds = [], 0
        for _ in range(requests):
            ms, cold = self.call()
            latencies.append(ms)
            colds += cold
            if think_s:
                time.sleep(think_s)
        return latencies, colds

    def close(self) -> None:
        self.conn.close()


def finished(fb: FaasboxServer, function: str) -> int:
    counts = fb.request("GET", f"/v1/functions/{function}/queue").json()["counts"]
    return sum(n for status, n in counts.items()
               if status in ("succeeded", "failed", "dead", "expired", "cancelled"))


def submit(fb: FaasboxServer, function: str, tasks: int, work_ms: float) -> None:
    event = orjson.dumps({"ms": work_ms})
    for start in range(0, tasks, BATCH):
        n = min(BATCH, tasks - start)
        fb.request("POST", f"/v1/functions/{function}/tasks:batch",
                   content=b"[" + b",".join([event] * n) + b"]",
                   headers={"content-type": "application/json"})


def phase(fb: FaasboxServer, online: Online, args: argparse.Namespace,
          params: dict[str, Any], name: str) -> tuple[float, float]:
    busy0, t0 = host_busy_seconds(), time.monotonic()
    latencies, colds = online.run(args.requests, args.think_ms / 1000)
    cpu = (host_busy_seconds() - busy0) / (time.monotonic() - t0)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    emit("groups.online.p50", p50, "ms", phase=name, **params)
    emit("groups.online.p99", p99, "ms", phase=name, **params)
    emit("groups.online.cold_starts", colds, "count", phase=name, **params)
    emit("groups.host_cpu", cpu, "cores", phase=name, **params)
    say(f"{params['mode']} {name}: online p50 {p50:.2f} ms, p99 {p99:.2f} ms, host {cpu:.2f}"
        " cores")
    return p50, p99


def run_mode(mode: str, args: argparse.Namespace, burn: Path) -> None:
    fb = FaasboxServer(env={"FAASBOX_NODE_MEMORY_MB": str(args.node_memory_mb),
                            "FAASBOX_ACQUIRE_TIMEOUT_S": "60"}).start()
    try:
        key = admin_key(fb)
        online_spec: dict[str, Any] = {"min_instances": 1, "max_instances": 2}
        batch_spec: dict[str, Any] = {"memory_mb": 256, "max_instances": args.batch_max}
        isolation = "none"
        if mode == "groups":
            fb.request("POST", "/v1/service-groups", json={
                "name": "online", "memory_mb": 512, "min_instances": 1, "max_instances": 2})
            view = fb.request("POST", "/v1/service-groups", json={
                "name": "batch", "memory_mb": args.batch_memory_mb, "cpus": args.batch_cpus,
                "max_instances": args.batch_max}).json()
            isolation = view["isolation"]
            say(f"batch group isolation: {isolation}")
            online_spec = {"service_group": "online", "max_instances": 2}
            batch_spec["service_group"] = "batch"
        fb.deploy("online", FUNCTIONS_DIR / "echo", **online_spec)
        fb.deploy("batch", burn, **batch_spec)
        params = {"mode": mode, "requests": args.requests, "think_ms": args.think_ms,
                  "tasks": args.tasks, "work_ms": args.work_ms,
                  "cpus": args.batch_cpus if mode == "groups" else None,
                  "batch_max": args.batch_max, "isolation": isolation,
                  "sandbox": fb.sandbox()}
        online = Online(fb, key, "online")
        try:
            online.run(args.warmup, 0.0)
            idle = phase(fb, online, args, params, "idle")
            started = time.monotonic()
            submit(fb, "batch", args.tasks, args.work_ms)
            say(f"{mode}: {args.tasks} tasks submitted in {time.monotonic() - started:.1f} s")
            while finished(fb, "batch") < min(args.tasks, args.batch_max * 2):
                time.sleep(0.05)  # the batch runs
            before = finished(fb, "batch")
            during = phase(fb, online, args, params, "batch")
            done = finished(fb, "batch") - before
            emit("groups.batch.done_during", done, "count", **params)
            if finished(fb, "batch") >= args.tasks:
                say(f"warning: the batch ended during the online calls of {mode}; use more"
                    " --tasks or fewer --requests")
            emit("groups.online.ratio_p50", during[0] / idle[0], "x", **params)
            emit("groups.online.ratio_p99", during[1] / idle[1], "x", **params)
        finally:
            online.close()
        if not args.no_wait:
            while (n := finished(fb, "batch")) < args.tasks:
                time.sleep(0.5)
            duration = time.monotonic() - started
            emit("groups.batch.duration", duration, "s", **params)
            emit("groups.batch.tasks_per_s", n / duration, "tasks/s", **params)
            say(f"{mode}: batch of {n} tasks done in {duration:.1f} s")
    finally:
        fb.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["groups", "nogroups"],
                    choices=["groups", "nogroups"])
    ap.add_argument("--tasks", type=int, default=10_000, help="batch tasks")
    ap.add_argument("--work-ms", type=float, default=5.0, help="CPU per batch task")
    ap.add_argument("--requests", type=int, default=1000, help="online invokes per phase")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--think-ms", type=float, default=5.0, help="pause between online calls")
    ap.add_argument("--node-memory-mb", type=int, default=4096)
    ap.add_argument("--batch-memory-mb", type=int, default=1024)
    ap.add_argument("--batch-cpus", type=float, default=1.0)
    ap.add_argument("--batch-max", type=int, default=4)
    ap.add_argument("--no-wait", action="store_true", help="do not wait for the batch's end")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="faasbox-bench-fn-"))
    burn = root / "burn"
    burn.mkdir()
    (burn / "main.py").write_text(BURN)
    try:
        for mode in args.modes:
            run_mode(mode, args, burn)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
