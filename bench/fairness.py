"""Fair dispatch among tenants on a node that is short of room (docs/tenancy.md).

Two tenants each deploy the same function (``bench/functions/echo`` with a ``--task-ms``
sleep, ``max_instances`` 8) on a server whose node holds ``--node-mb`` (default 1024: eight
128 MB instances, less than the two functions want). Then:

- ``fairness.small_backlog``: tenant A queues ``--big`` tasks, tenant B ``--small``; equal
  weights. Reports when B's last task finished, the part of A's backlog still queued then,
  and the shares of tasks completed by each while both were backlogged, from B's submit on
  (want 0.5 each).
- ``fairness.weighted``: A (weight ``--weight``) and B (weight 1) both queue ``--both``
  tasks; the completions of each are counted over the middle of the run, while both are
  backlogged, and reported as A's share against its weighted share ``w / (w + 1)``.
"""

from __future__ import annotations

import argparse
import base64
import time
from typing import Any

import httpx

from common import FUNCTIONS_DIR, FaasboxServer, emit, say
from faasbox.codestore import zip_folder

SLEEPER = "sleeper"


def tenant(fb: FaasboxServer, name: str, weight: float, task_ms: float) -> httpx.Client:
    fb.request("POST", "/v1/tenants", json={"name": name, "weight": weight})
    key = fb.request("POST", f"/v1/tenants/{name}/keys", json={"scope": "developer"}).json()
    client = httpx.Client(base_url=fb.url, timeout=300,
                          headers={"Authorization": f"Bearer {key['key']}"})
    body = {"handler": "main:handler", "max_instances": 8,
            "env": {"SLEEP_MS": str(task_ms)},
            "code_zip": base64.b64encode(zip_folder(FUNCTIONS_DIR / SLEEPER)).decode()}
    resp = client.put(f"/v1/functions/{SLEEPER}", json=body)
    resp.raise_for_status()
    return client


def submit(client: httpx.Client, n: int) -> None:
    for start in range(0, n, 1000):
        resp = client.post(f"/v1/functions/{SLEEPER}/tasks:batch",
                           json=list(range(start, min(n, start + 1000))))
        resp.raise_for_status()


def done(client: httpx.Client) -> int:
    counts: dict[str, int] = client.get(f"/v1/functions/{SLEEPER}/queue").json()["counts"]
    return counts.get("succeeded", 0)


def small_backlog(args: argparse.Namespace, params: dict[str, Any]) -> None:
    env = {"FAASBOX_NODE_MEMORY_MB": str(args.node_mb), "FAASBOX_ACQUIRE_TIMEOUT_S": "60",
           "FAASBOX_TENANT_MAX_QUEUED_TASKS": str(10 * args.big)}
    with FaasboxServer(env=env) as fb:
        a = tenant(fb, "big", 1.0, args.task_ms)
        b = tenant(fb, "small", 1.0, args.task_ms)
        began = time.monotonic()
        submit(a, args.big)
        a0 = done(a)  # what A finished alone while its backlog went in
        submit(b, args.small)
        while done(b) < args.small:
            time.sleep(0.05)
        b_s = time.monotonic() - began
        a_done = done(a) - a0
        while done(a) < args.big:
            time.sleep(0.2)
        a_s = time.monotonic() - began
        a.close()
        b.close()
    p = {**params, "big": args.big, "small": args.small}
    emit("fairness.small_backlog.small_done_s", b_s, "s", **p)
    emit("fairness.small_backlog.big_done_s", a_s, "s", **p)
    emit("fairness.small_backlog.big_left_when_small_done", 1 - (a0 + a_done) / args.big,
         "fraction", **p)
    emit("fairness.small_backlog.small_share", args.small / (args.small + a_done), "fraction",
         want=0.5, **p)
    say(f"small tenant done in {b_s:.1f} s with {args.big - a0 - a_done} of the big backlog left;"
        f" big done in {a_s:.1f} s")


def weighted(args: argparse.Namespace, params: dict[str, Any]) -> None:
    env = {"FAASBOX_NODE_MEMORY_MB": str(args.node_mb), "FAASBOX_ACQUIRE_TIMEOUT_S": "60"}
    with FaasboxServer(env=env) as fb:
        a = tenant(fb, "heavy", args.weight, args.task_ms)
        b = tenant(fb, "light", 1.0, args.task_ms)
        submit(a, args.both)
        submit(b, args.both)
        # skip the start, then count over a window in which both still have a backlog
        while done(a) + done(b) < args.both // 4:
            time.sleep(0.05)
        a0, b0, t0 = done(a), done(b), time.monotonic()
        while done(a) + done(b) < args.both:
            time.sleep(0.05)
        a1, b1, t1 = done(a), done(b), time.monotonic()
        a.close()
        b.close()
    share = (a1 - a0) / max(1, (a1 - a0) + (b1 - b0))
    want = args.weight / (args.weight + 1)
    p = {**params, "tasks_each": args.both, "weight": args.weight}
    emit("fairness.weighted.share", share, "fraction", want=round(want, 3), **p)
    emit("fairness.weighted.error", abs(share - want) / want, "fraction", **p)
    emit("fairness.weighted.tasks_per_s", ((a1 - a0) + (b1 - b0)) / (t1 - t0), "tasks/s", **p)
    say(f"weight {args.weight:g}:1 -> heavy share {share:.3f} (want {want:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=20_000, help="tasks of the big tenant")
    ap.add_argument("--small", type=int, default=200, help="tasks of the small tenant")
    ap.add_argument("--both", type=int, default=4000, help="tasks of each, weighted run")
    ap.add_argument("--weight", type=float, default=3.0, help="the heavy tenant's weight")
    ap.add_argument("--task-ms", type=float, default=20.0, help="how long each task sleeps")
    ap.add_argument("--node-mb", type=int, default=1024, help="the node's memory")
    args = ap.parse_args()
    params = {"task_ms": args.task_ms, "node_mb": args.node_mb}
    small_backlog(args, params)
    weighted(args, params)


if __name__ == "__main__":
    main()
