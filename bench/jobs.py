"""Sharded jobs: how long a job of N no-op shards takes through a real server.

The shard function (``bench/functions/echo``, a no-op) is deployed with ``max_instances`` = M
and warmed up (M instances running). Each round posts one job of ``--shards`` shards
(``{count: N}``), long-polls it to its end and reports the job's own ``duration_s``
(created → last shard recorded), the shard throughput, and the same with a reduce step on
every shard's result. Figures: ``jobs.duration`` (s), ``jobs.shards_per_s``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import FUNCTIONS_DIR, FaasboxServer, emit, percentile, say

WAIT_S = 60


def run_job(fb: FaasboxServer, body: dict[str, Any]) -> dict[str, Any]:
    job = fb.request("POST", "/v1/jobs", json=body).json()
    while True:
        view: dict[str, Any] = fb.request("GET", f"/v1/jobs/{job['job_id']}", params={
            "wait": WAIT_S, "results": "false"}).json()
        if view["status"] != "running":
            return view


def bench(shards: int, max_instances: int, rounds: int, max_parallel: int | None) -> None:
    with FaasboxServer() as fb:
        fb.deploy("echo", FUNCTIONS_DIR / "echo", max_instances=max_instances)
        fb.deploy("reduce", FUNCTIONS_DIR / "echo")
        with ThreadPoolExecutor(max_instances) as pool:  # warm M instances
            list(pool.map(lambda _: fb.request("POST", "/v1/functions/echo/invoke",
                                               json={"sleep": 0.2}), range(max_instances)))
        for reduce in (False, True):
            durations = []
            for _ in range(rounds):
                body: dict[str, Any] = {"function": "echo", "shards": {"count": shards}}
                if max_parallel:
                    body["max_parallel"] = max_parallel
                if reduce:
                    body["reduce"] = "reduce"
                t0 = time.monotonic()
                view = run_job(fb, body)
                wall = time.monotonic() - t0
                assert view["status"] == "succeeded", view.get("error")
                durations.append(view["duration_s"])
                say(f"{shards} shards{' + reduce' if reduce else ''}: job {view['duration_s']:.2f}"
                    f" s, client wall {wall:.2f} s")
            params = {"shards": shards, "max_instances": max_instances, "reduce": reduce,
                      "max_parallel": max_parallel, "rounds": rounds}
            p50 = percentile(durations, 50)
            emit("jobs.duration", p50, "s", stat="p50", **params)
            emit("jobs.shards_per_s", shards / p50, "shards/s", stat="p50", **params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1000, help="shards per job (1000)")
    ap.add_argument("--max-instances", type=int, default=4, help="instances (4)")
    ap.add_argument("--rounds", type=int, default=3, help="jobs per figure (3)")
    ap.add_argument("--max-parallel", type=int, default=None, help="the job's max_parallel")
    args = ap.parse_args(argv)
    bench(args.shards, args.max_instances, args.rounds, args.max_parallel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
