"""Async tasks: end-to-end throughput and latency through a real server, and the queue alone.

End to end (``tasks.e2e.*``): the echo function (``bench/functions/echo``, a no-op) is deployed
with ``max_instances`` = M and warmed up; then ``--tasks`` events go in batches of ``--batch``
through ``POST /v1/functions/echo/tasks:batch`` as fast as the server accepts them. Latency is
each task's ``finished_at - created_at`` (accepted → result stored) from its own record;
throughput is tasks / (last ``finished_at`` - first submit). A burst this size queues, so its
latency is mostly waiting in line; ``tasks.idle.latency`` is the same measure for one task at a
time (submit, long-poll its result, next), i.e. what dispatch itself costs, and
``tasks.idle.client_wait`` what the client sees of it (submit to the long poll's answer: with
several servers, the one that runs the task may not be the one that answers the poll).

``--servers`` runs it with one server, then (by default) with one server per core on one SQLite
file (docs/cluster.md), the batches submitted to each server in turn and every figure summed
over the servers: the peers, too, run one worker process per core on one Redis. Those lines
carry ``params.servers``.

Against its peers (``--peers``): after faasbox's end-to-end run(s), Celery and Dramatiq run the
same number of no-op tasks on a local Redis, enqueued one per call (``peers.py``), and
``tasks.e2e.ratio_best_peer`` is faasbox's ``tasks.e2e.throughput`` over the best peer's. The
peers' lines carry ``params.system``; faasbox's are the same lines as without ``--peers``.

The queue alone (``queue.*``): :class:`SqlTaskQueue` on a fresh ``SqlStore`` in this
process, no server and no execution. ``--queue-concurrency`` coroutines enqueue one task per
call, then lease one task and complete it per step; ops/s and the commits the store made per
1000 operations show what group commit buys (concurrency 1 makes one commit per write).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

import peers
from common import (
    FUNCTIONS_DIR,
    FaasboxServer,
    children,
    cpu_seconds,
    emit,
    host_busy_seconds,
    percentile,
    say,
    tree_cpu_seconds,
)
from faasbox.store import SqlStore
from faasbox.store.queue import TERMINAL, NewTask, TaskPolicy
from faasbox.store.relational.queue import SqlTaskQueue
from faasbox.store.sqlite import SqliteDatabase

FUNCTION = "echo"
SERVERS = sorted({1, os.cpu_count() or 1})
WAIT_S = 60  # the server's cap on ?wait=


# -- end to end through the server --------------------------------------------------------------
def submit(clients: list[httpx.Client], events: list[bytes], batch: int) -> list[str]:
    """Submit ``events`` in batches, each batch on the next connection in turn (to the next
    server, or to whichever worker took that connection)."""
    ids: list[str] = []
    for start in range(0, len(events), batch):
        body = b"[" + b",".join(events[start:start + batch]) + b"]"
        client = clients[start // batch % len(clients)]
        resp = client.post(f"/v1/functions/{FUNCTION}/tasks:batch", content=body,
                           headers={"content-type": "application/json"})
        if resp.status_code != 202:
            raise RuntimeError(f"submit -> {resp.status_code}: {resp.text[:2000]}")
        ids += [t["task_id"] for t in resp.json()["tasks"]]
    return ids


def wait_all(fb: FaasboxServer, expected: int) -> None:
    """Until ``expected`` tasks of the function are terminal: long-poll one that is not."""
    while True:
        counts = fb.request("GET", f"/v1/functions/{FUNCTION}/queue").json()["counts"]
        if sum(n for status, n in counts.items() if status in TERMINAL) >= expected:
            return
        for status in ("queued", "retry_wait", "running"):
            pending = fb.request("GET", "/v1/tasks", params={
                "function": FUNCTION, "status": status, "limit": 1}).json()["tasks"]
            if pending:  # the newest of them: tasks run oldest first
                fb.request("GET", f"/v1/tasks/{pending[0]['task_id']}",
                           params={"wait": WAIT_S})
                break


def records(fb: FaasboxServer, ids: set[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"function": FUNCTION, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        body = fb.request("GET", "/v1/tasks", params=params).json()
        found += [t for t in body["tasks"] if t["task_id"] in ids]
        cursor = body.get("next_cursor")
        if cursor is None:
            return found


def idle_latency(fb: FaasboxServer, samples: int) -> tuple[list[float], list[float]]:
    """One task at a time: (accepted -> result stored, as the store has it; submit -> the
    long poll's answer, as the client sees it), in ms. Each task on a new connection, so that
    with ``--workers`` it may go to either worker."""
    stored, seen = [], []
    for i in range(samples):
        with httpx.Client(base_url=fb.url, headers=fb.auth_headers, timeout=WAIT_S + 30) as c:
            began = time.perf_counter()
            task_id = c.post(f"/v1/functions/{FUNCTION}/tasks", json={"i": i}).json()[
                "task_id"]
            task = c.get(f"/v1/tasks/{task_id}", params={"wait": WAIT_S}).json()
            seen.append((time.perf_counter() - began) * 1000)
        if task["status"] != "succeeded":
            raise RuntimeError(f"task {task_id} ended {task['status']}: {task.get('error')}")
        stored.append((task["finished_at"] - task["created_at"]) * 1000)
    return stored, seen


def bench_end_to_end(tasks: int, batch: int, max_instances: int, idle_samples: int,
                     servers: int = 1, workers: bool = False) -> tuple[float, float]:
    """Print the end-to-end figures; returns the throughput (tasks/s) and the CPU the servers
    and their instances spent per task (µs). ``servers`` above 1: that many servers on one
    SQLite file, the batches submitted to each in turn; with ``workers``, one
    ``faasbox server --workers N`` on one port, the batches sent over N connections."""
    with contextlib.ExitStack() as stack:
        env = {}
        if workers and servers > 1:
            fbs = [stack.enter_context(FaasboxServer(args=["--workers", str(servers)]))]
            clients = [stack.enter_context(httpx.Client(
                base_url=fbs[0].url, headers=fbs[0].auth_headers, timeout=900))
                for _ in range(servers)]
            server_pids = [fbs[0].pid, *children(fbs[0].pid)]
        else:
            if servers > 1:
                shared = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="faasbox-bench-shared-")))
                env["FAASBOX_STORE_URL"] = f"sqlite:///{shared / 'faasbox.db'}"
            fbs = [stack.enter_context(FaasboxServer(env=env)) for _ in range(servers)]
            clients = [f.http for f in fbs]
            server_pids = [f.pid for f in fbs]
        fb = fbs[0]
        params: dict[str, Any] = {"tasks": tasks, "batch": batch,
                                  "max_instances": max_instances, "sandbox": fb.sandbox()}
        if servers > 1:
            params["servers"] = servers
            if workers:
                params["workers"] = True
        fb.deploy(FUNCTION, FUNCTIONS_DIR / FUNCTION, max_instances=max_instances,
                  idle_ttl_s=600)
        warmup = 20 * max_instances * servers  # starts every instance
        submit(clients, [orjson.dumps({"warmup": i}) for i in range(warmup)], batch)
        wait_all(fb, warmup)
        say(f"e2e: warmed up {sum(len(f.instances(FUNCTION)) for f in fbs)} instances")

        idle, waited = idle_latency(fb, idle_samples)
        emit("tasks.idle.latency.p50", percentile(idle, 50), "ms", **params | {
            "tasks": idle_samples})
        emit("tasks.idle.latency.p99", percentile(idle, 99), "ms", **params | {
            "tasks": idle_samples})
        # the client's wait: a task another server ran is seen by re-reading it
        emit("tasks.idle.client_wait.p50", percentile(waited, 50), "ms", **params | {
            "tasks": idle_samples})
        emit("tasks.idle.client_wait.p99", percentile(waited, 99), "ms", **params | {
            "tasks": idle_samples})
        emit("tasks.idle.client_wait.max", max(waited), "ms", **params | {
            "tasks": idle_samples})

        events = [orjson.dumps({"i": i}) for i in range(tasks)]
        def server_cpu() -> tuple[float, float]:
            return (sum(cpu_seconds(pid) for pid in server_pids),
                    sum(tree_cpu_seconds(f.pid) for f in fbs))

        (cpu0, tree0), host0 = server_cpu(), host_busy_seconds()
        bench0, window0 = cpu_seconds(os.getpid()), time.monotonic()
        t0 = time.time()
        ids = submit(clients, events, batch)
        submitted = time.time() - t0
        wait_all(fb, warmup + idle_samples + tasks)
        cpu, tree = (now - then for now, then in zip(server_cpu(), (cpu0, tree0), strict=True))
        other = (host_busy_seconds() - host0 - tree - (cpu_seconds(os.getpid()) - bench0)) / (
            time.monotonic() - window0)  # the whole window, the tail of the wait included
        done = records(fb, set(ids))
        failed = [t for t in done if t["status"] != "succeeded"]
        if len(done) != tasks or failed:
            raise RuntimeError(f"{len(done)} of {tasks} tasks found, {len(failed)} failed:"
                               f" {failed[:3]}")
        wall = max(t["finished_at"] for t in done) - t0
        latencies = [(t["finished_at"] - t["created_at"]) * 1000 for t in done]
        emit("tasks.submit.rate", tasks / submitted, "tasks/s", **params)
        emit("tasks.e2e.throughput", tasks / wall, "tasks/s", **params)
        emit("tasks.e2e.latency.p50", percentile(latencies, 50), "ms", **params)
        emit("tasks.e2e.latency.p99", percentile(latencies, 99), "ms", **params)
        emit("tasks.e2e.server_cpu", cpu / wall, "cores", **params)
        emit("tasks.e2e.instance_cpu", (tree - cpu) / wall, "cores", **params)
        emit("tasks.e2e.other_cpu", other, "cores", **params)
        emit("tasks.e2e.system_cpu_per_task", tree / tasks * 1e6, "us", **params)
        say(f"e2e: {tasks} tasks submitted in {submitted:.1f} s, all done in {wall:.1f} s"
            f" ({tasks / wall:.0f} tasks/s); idle latency p50 {percentile(idle, 50):.1f} ms")
        return float(tasks / wall), tree / tasks * 1e6


def compare_peers(args: argparse.Namespace, faasbox: dict[int, tuple[float, float]]) -> None:
    """The peers on the same load, then faasbox's throughput over the best peer's, and its CPU
    per task over the thriftiest peer's."""
    runs = peers.run_peers(args.tasks, processes=args.peer_processes,
                           threads=args.peer_threads, persistence=args.redis_persistence)
    best = max(runs.values(), key=lambda run: run.throughput)
    thrifty = min(runs.values(), key=lambda run: run.system_cpu_per_task_us)
    for (servers, max_instances), (throughput, cpu_per_task) in faasbox.items():
        params = {"tasks": args.tasks, "max_instances": max_instances}
        if servers > 1:
            params["servers"] = servers
        emit("tasks.e2e.ratio_best_peer", throughput / best.throughput, "x", **params)
        emit("tasks.e2e.ratio_cpu_per_task_best_peer",
             cpu_per_task / thrifty.system_cpu_per_task_us, "x", **params)
        say(f"faasbox ({servers} server(s), max_instances {max_instances})"
            f" {throughput:.0f} tasks/s, best peer"
            f" {best.system} {best.throughput:.0f} tasks/s: {throughput / best.throughput:.2f}x;"
            f" CPU per task {cpu_per_task:.0f} µs, the lowest peer's ({thrifty.system})"
            f" {thrifty.system_cpu_per_task_us:.0f} µs")


# -- the queue alone ----------------------------------------------------------------------------
async def _enqueue(queue: SqlTaskQueue, n: int, concurrency: int) -> None:
    policy = TaskPolicy.model_validate({})  # (mypy without the pydantic plugin)

    async def worker(first: int) -> None:
        for i in range(first, n, concurrency):
            task = NewTask(uuid.uuid4().hex, b'{"i": %d}' % i)
            await queue.enqueue(FUNCTION, [task], None, policy, time.time(), 86400.0)

    await asyncio.gather(*[worker(k) for k in range(concurrency)])


async def _lease_and_complete(queue: SqlTaskQueue, concurrency: int) -> int:
    done = 0

    async def worker() -> None:
        nonlocal done
        while tasks := await queue.lease(FUNCTION, 1, time.time(), 60.0, "bench"):
            for t in tasks:
                if not await queue.succeed(t.id, t.attempts, b"null", "inv", time.time()):
                    raise RuntimeError(f"lost the lease of {t.id}")
                done += 1

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done


async def bench_queue(n: int, concurrency: int, synchronous: str) -> None:
    params = {"tasks": n, "concurrency": concurrency, "synchronous": synchronous}
    with tempfile.TemporaryDirectory(prefix="faasbox-bench-queue-") as tmp:
        store = SqlStore(SqliteDatabase(Path(tmp) / "faasbox.db", synchronous=synchronous))
        await store.open()
        queue = SqlTaskQueue(store)
        try:
            c0, t0 = store.commits, time.perf_counter()
            await _enqueue(queue, n, concurrency)
            enqueue_s, enqueue_commits = time.perf_counter() - t0, store.commits - c0
            c0, t0 = store.commits, time.perf_counter()
            done = await _lease_and_complete(queue, concurrency)
            lease_s, lease_commits = time.perf_counter() - t0, store.commits - c0
        finally:
            await store.close()
    if done != n:
        raise RuntimeError(f"enqueued {n} tasks but completed {done}")
    emit("queue.enqueue.rate", n / enqueue_s, "ops/s", **params)
    emit("queue.enqueue.commits_per_1000", enqueue_commits * 1000 / n, "commits", **params)
    emit("queue.lease_complete.rate", n / lease_s, "ops/s", **params)
    emit("queue.lease_complete.commits_per_1000", lease_commits * 1000 / n, "commits",
         **params)
    say(f"queue x{concurrency}: enqueue {n / enqueue_s:.0f}/s ({enqueue_commits} commits),"
        f" lease+complete {n / lease_s:.0f}/s ({lease_commits} commits)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000, help="end-to-end tasks (20000)")
    ap.add_argument("--batch", type=int, default=1000, help="events per batch request (1000)")
    ap.add_argument("--max-instances", type=int, nargs="+", default=[4],
                    help="max_instances of the function; one run each (4)")
    ap.add_argument("--servers", type=int, nargs="+", default=SERVERS,
                    help="servers of each run; above 1 they share one SQLite file, as the"
                         f" peers' worker processes share Redis ({' '.join(map(str, SERVERS))}:"
                         " one, and one per core)")
    ap.add_argument("--workers", action="store_true",
                    help="servers above 1 run as one `faasbox server --workers N` on one port"
                         " (the batches sent over N connections), not N servers on N ports")
    ap.add_argument("--idle-samples", type=int, default=200,
                    help="one-at-a-time tasks for the idle latency (200)")
    ap.add_argument("--queue-tasks", type=int, default=20000,
                    help="tasks per queue-alone run (20000; 2000 at concurrency 1)")
    ap.add_argument("--queue-concurrency", type=int, nargs="+", default=[1, 64],
                    help="concurrent coroutines of the queue-alone runs (1 64)")
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "OFF"],
                    help="SQLite sync mode of the queue-alone runs (FULL, the default's)")
    ap.add_argument("--skip-e2e", action="store_true", help="only the queue alone")
    ap.add_argument("--skip-queue", action="store_true", help="no queue-alone runs")
    ap.add_argument("--peers", action="store_true",
                    help="then Celery and Dramatiq on the same load (peers.py); needs Redis and"
                         " the peers' venv, installed on first use")
    ap.add_argument("--peer-processes", type=int, default=None,
                    help="the peers' worker processes (the machine's cores)")
    ap.add_argument("--peer-threads", type=int, default=peers.DRAMATIQ_THREADS,
                    help=f"Dramatiq's threads per process ({peers.DRAMATIQ_THREADS}, its default)")
    ap.add_argument("--redis-persistence", choices=sorted(peers.PERSISTENCE), default="none",
                    help="the peers' Redis persistence (none)")
    args = ap.parse_args(argv)
    if args.peers:
        peers.prepare()  # installs fail here rather than after faasbox's runs
    if not args.skip_queue:
        for concurrency in args.queue_concurrency:
            n = args.queue_tasks if concurrency > 1 else min(args.queue_tasks, 2000)
            asyncio.run(bench_queue(n, concurrency, args.synchronous))
    faasbox = {}
    if not args.skip_e2e:
        for servers in args.servers:
            for max_instances in args.max_instances:
                faasbox[servers, max_instances] = bench_end_to_end(
                    args.tasks, args.batch, max_instances, args.idle_samples, servers,
                    args.workers)
    if args.peers:
        compare_peers(args, faasbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
