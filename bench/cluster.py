"""The store backends side by side: async no-op tasks/s and warm sync latency on SQLite (one
server, and ``--servers`` servers on one file) and on PostgreSQL (1 and ``--servers`` servers
on one database), in one run.

PostgreSQL is a throwaway cluster (``tests/pg.py``: Debian's server binaries, ``initdb`` in a
temp dir, a free port) with the durability of a real one (fsync and synchronous_commit on,
unlike the test suite's).

Figures (bench/README.md has the table):

- ``cluster.tasks_per_s``: ``--tasks`` no-op tasks (the echo function, ``max_instances``
  ``--instances`` per server) submitted through the first server in batches of 1000, timed
  from the first submit to the last ``finished_at``; ``params.store`` and ``servers``.
- ``cluster.sync.p50`` / ``p99``: ``--requests`` warm sync invokes of the echo function on
  one keep-alive connection to the first server (ms).
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from common import FUNCTIONS_DIR, FaasboxServer, emit, percentile, say

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.pg
from tests.pg import PgCluster

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def submit(fb: FaasboxServer, n: int) -> None:
    for start in range(0, n, 1000):
        body = b"[" + b",".join(orjson.dumps(i) for i in range(start, min(n, start + 1000))) + b"]"
        fb.request("POST", "/v1/functions/echo/tasks:batch", content=body,
                   headers={"content-type": "application/json"})


def finished(fb: FaasboxServer) -> int:
    counts = fb.request("GET", "/v1/functions/echo/queue").json()["counts"]
    return sum(n for s, n in counts.items() if s in ("succeeded", "failed", "dead"))


def last_finish(fb: FaasboxServer) -> float:
    rows = fb.request("GET", "/v1/tasks", params={"function": "echo", "status": "succeeded",
                                                  "limit": 200}).json()["tasks"]
    return max(float(t["finished_at"]) for t in rows)


def sync_latency(fb: FaasboxServer, requests: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=60)
    headers = {**fb.auth_headers, "Content-Type": "application/json"}
    out = []
    try:
        for i in range(requests + 50):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/functions/echo/invoke", body=b'{"n": 1}', headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"invoke -> {resp.status}")
            if i >= 50:  # warm-up
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return out


def run(store: str, servers: int, url: str | None, args: argparse.Namespace) -> None:
    env = {"FAASBOX_ACQUIRE_TIMEOUT_S": "60"}
    if url:
        env["FAASBOX_STORE_URL"] = url
    fbs = [FaasboxServer(env=env).start() for _ in range(servers)]
    params: dict[str, Any] = {"store": store, "servers": servers, "tasks": args.tasks,
                              "instances": args.instances}
    try:
        first = fbs[0]
        first.deploy("echo", FUNCTIONS_DIR / "echo", max_instances=args.instances)
        for fb in fbs:
            fb.invoke("echo", {"warm": True})
        if servers == 1:
            lat = sync_latency(first, args.requests)
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            emit("cluster.sync.p50", p50, "ms", store=store, requests=args.requests)
            emit("cluster.sync.p99", p99, "ms", store=store, requests=args.requests)
            say(f"{store}: warm sync p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        t0 = time.time()
        submit(first, args.tasks)
        while finished(first) < args.tasks:
            time.sleep(0.2)
        rate = args.tasks / (last_finish(first) - t0)
        emit("cluster.tasks_per_s", rate, "tasks/s", **params)
        say(f"{store} x{servers}: {args.tasks} tasks at {rate:.0f} tasks/s")
    finally:
        for fb in fbs:
            fb.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=4, help="max_instances of the function")
    ap.add_argument("--servers", type=int, default=3, help="servers of the largest cluster")
    args = ap.parse_args(argv)
    run("sqlite", 1, None, args)
    if args.servers > 1:
        with tempfile.TemporaryDirectory(prefix="faasbox-bench-shared-") as shared:
            run("sqlite", args.servers, f"sqlite:///{shared}/faasbox.db", args)
    reason = PgCluster.available()
    if reason is not None:
        say(f"no PostgreSQL here ({reason}): only SQLite measured")
        return
    root = Path(tempfile.mkdtemp(prefix="faasbox-bench-pg-"))
    root.chmod(0o711)
    cluster = PgCluster(root, settings=DURABLE).start()
    try:
        for n, servers in enumerate(sorted({1, args.servers})):
            cluster.create_template(f"db{n}", "")
            run("postgresql", servers, cluster.url(f"db{n}"), args)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
