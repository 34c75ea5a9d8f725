"""Warm synchronous invoke through the HTTP API, against the same handler served bare.

For each client concurrency N (default 1, 8 and 32) the bench deploys the echo function
(``bench/functions/echo``) with ``max_instances`` = N (``--max-instances`` overrides), warms it up
until the instances exist, then sends ``--requests`` invokes from N closed-loop clients (each
sends its next request when the previous one answered) and reports p50/p99 latency and
requests/s. The same load then goes to a bare FastAPI/uvicorn app (its own subprocess, same
uvicorn defaults as ``faasbox server``) whose route calls the same handler inline, and the
ratios faasbox/bare tell what the platform costs on top of a plain web app.

CPU figures (cores = CPU seconds / wall seconds) say where the time went: the load generator,
the server process, the instances, and ``other_cpu`` for whatever else ran on the machine
meanwhile (near 0 on a quiet machine; above 0.25 cores the bench warns that the run is noisy).
``client_cpu`` close to 1.0 per client process means the load generator, not the server, is
the bottleneck. That is why the default client is ``raw``, a minimal keep-alive HTTP/1.1
client: an ``httpx.AsyncClient`` (``--client httpx``) spends several times more CPU per
request than the bare app does to answer it, so it measures itself, and more client
processes (``--client-procs``) cannot help when the machine has two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from common import (
    FUNCTIONS_DIR,
    FaasboxServer,
    cpu_seconds,
    emit,
    free_port,
    host_busy_seconds,
    percentile,
    read_response,
    say,
    stop_process,
    tail,
    wait_healthy,
)

FUNCTION = "echo"
HOST = -1  # key of the machine-wide busy CPU seconds in a CPU sample
EVENT = {"message": "hello", "n": 42, "items": [1, 2, 3]}


# -- the bare app -----------------------------------------------------------------------------
class BareContext:
    """Enough of faasbox's context for a handler called inline."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.function_name = FUNCTION
        self.version = 0
        self.memory_limit_mb = 0
        self._deadline = time.monotonic() + 30

    def remaining_time_ms(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr)


def serve_bare(folder: Path, port: int) -> None:
    """``python bench/invoke.py --serve-bare PORT``: the handler as a plain FastAPI route."""
    import uvicorn

    spec = importlib.util.spec_from_file_location("bare_main", folder / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.handler
    app = FastAPI()
    counter = iter(range(1 << 62))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/invoke")
    async def invoke(request: Request) -> Response:
        body = await request.body()
        event = orjson.loads(body) if body.strip() else None
        result = handler(event, BareContext(str(next(counter))))
        return Response(orjson.dumps(result), media_type="application/json")

    # the same server settings as `faasbox server` (uvloop and httptools when installed)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class BareServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(f"/tmp/faasbox-bench-bare-{self.port}.log")
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BareServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve-bare", str(self.port),
                 "--function-dir", str(self.folder)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_healthy(self.url, self.proc, self.log)
        say(f"bare app pid {self.proc.pid} on {self.url}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.returncode not in (0, -15):
                say(f"bare app exited with {self.proc.returncode}:\n{tail(self.log)}")
        self.log.unlink(missing_ok=True)


# -- the load generator -----------------------------------------------------------------------
@dataclass
class Load:
    latencies_ms: list[float] = field(default_factory=list)
    started: float = 0.0  # time.time() of the first request sent
    ended: float = 0.0  # time.time() of the last answer
    client_cpu_s: float = 0.0
    cpu_before: dict[int, float] = field(default_factory=dict)
    cpu_after: dict[int, float] = field(default_factory=dict)
    cold_starts: int = 0
    failures: int = 0
    first_failure: str = ""

    def merge(self, other: Load) -> None:
        self.latencies_ms += other.latencies_ms
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)
        self.client_cpu_s += other.client_cpu_s
        self.cold_starts += other.cold_starts
        self.failures += other.failures
        self.first_failure = self.first_failure or other.first_failure


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends the same POST over and over and reads
    ``Content-Length`` framed answers: about the least CPU per request Python can spend, so
    the server, not the load generator, is what gets measured."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.request = (
            f"POST {u.raw_path.decode()} HTTP/1.1\r\nHost: {u.host}:{self.port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, dict[str, str], bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        status, headers, body = await read_response(self.reader)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class HttpxConnection:
    """The same through an ``httpx.AsyncClient`` of its own (one pool shared by many
    clients costs several times more CPU per request at 32 connections)."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.body = body
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=120)

    async def post(self) -> tuple[int, Any, bytes]:
        resp = await self.client.post(self.url, content=self.body, headers=self.headers)
        return resp.status_code, resp.headers, resp.content

    async def close(self) -> None:
        await self.client.aclose()


CLIENTS = {"raw": RawConnection, "httpx": HttpxConnection}


async def _closed_loop(conns: list[Any], requests: int, load: Load | None) -> None:
    """One worker per connection; they share ``requests`` requests and each sends its next
    one as soon as its previous one answered. With ``load`` None this is a warm-up."""
    remaining = requests

    async def worker(conn: Any) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                status, headers, body = await conn.post()
            except (OSError, httpx.HTTPError, asyncio.IncompleteReadError) as exc:
                await conn.close()
                if load is not None:
                    load.failures += 1
                    load.first_failure = load.first_failure or repr(exc)
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            if load is None:
                continue
            if status != 200:
                load.failures += 1
                load.first_failure = load.first_failure or f"{status} {body[:300]!r}"
                continue
            load.latencies_ms.append(elapsed)
            if headers.get("x-faasbox-cold-start") == "true":
                load.cold_starts += 1

    await asyncio.gather(*(worker(conn) for conn in conns))


Sampler = Callable[[], dict[int, float]]


async def _run_client(kind: str, url: str, concurrency: int, requests: int, warmup: int,
                      barrier: Any = None, sample: Sampler | None = None,
                      headers: dict[str, str] | None = None) -> Load:
    body = orjson.dumps(EVENT)
    conns = [CLIENTS[kind](url, body, headers) for _ in range(concurrency)]
    try:
        # opens the connections (and, on faasbox, starts the instances) before the clock runs
        await _closed_loop(conns, max(warmup, concurrency), None)
        if barrier is not None:
            await asyncio.to_thread(barrier.wait)
        load = Load()
        load.cpu_before = sample() if sample is not None else {}
        cpu0 = time.process_time()
        load.started = time.time()
        await _closed_loop(conns, requests, load)
        load.ended = time.time()
        load.client_cpu_s = time.process_time() - cpu0
        load.cpu_after = sample() if sample is not None else {}
    finally:
        for conn in conns:
            await conn.close()
    return load


def _run(coro: Any) -> Load:
    """Run the client on uvloop when it is installed (as it is for uvicorn): cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[no-any-return]


def _client_process(kind: str, url: str, concurrency: int, requests: int, warmup: int,
                    barrier: Any, out: Any, headers: dict[str, str] | None) -> None:
    out.put(_run(_run_client(kind, url, concurrency, requests, warmup, barrier,
                             headers=headers)))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(kind: str, url: str, concurrency: int, requests: int, warmup: int, procs: int,
             sample: Sampler | None = None, headers: dict[str, str] | None = None) -> Load:
    """The timed load from ``procs`` client processes (1: in this process). ``sample`` reads
    the CPU counters of the processes under test when the clock starts and when it stops;
    ``headers`` go with every request (the API key)."""
    if procs <= 1:
        return _run(_run_client(kind, url, concurrency, requests, warmup, None, sample,
                                headers))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_client_process, args=(kind, url, c, r, w, barrier, out, headers))
        for c, r, w in zip(_split(concurrency, procs), _split(requests, procs),
                           _split(warmup, procs), strict=True)
    ]
    for w in workers:
        w.start()
    barrier.wait()
    before = sample() if sample is not None else {}
    total = Load()
    for _ in workers:
        total.merge(out.get())
    total.cpu_before, total.cpu_after = before, sample() if sample is not None else {}
    for w in workers:
        w.join()
    return total


# -- the bench --------------------------------------------------------------------------------
@dataclass
class Measured:
    p50: float
    p99: float
    rps: float
    cpu_us_per_request: float = 0.0  # of the processes under test (not the client)


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError):
        return 0.0


def measure(mode: str, url: str, groups: dict[str, Callable[[], list[int]]],
            params: dict[str, Any], args: Any, headers: dict[str, str] | None = None,
            ) -> Measured:
    """Warm up, then the timed run. ``groups`` names the processes under test whose CPU use
    is reported (``server``: the API process, ``instance``: faasbox's instances)."""
    c = params["concurrency"]
    warmup = max(args.warmup, 10 * c)
    # instances (and the server's code paths) warm
    run_load(args.client, url, c, 0, warmup, 1, headers=headers)
    pids = {name: list(get()) for name, get in groups.items()}

    def sample() -> dict[int, float]:
        got = {pid: _cpu_or_zero(pid) for group in pids.values() for pid in group}
        got[HOST] = host_busy_seconds()
        return got

    # a short second warm-up per client process opens its connections
    load = run_load(args.client, url, c, args.requests, 2 * c, args.client_procs, sample,
                    headers)
    wall = load.ended - load.started
    if load.failures:
        raise RuntimeError(f"{mode}: {load.failures} of {args.requests} requests failed; "
                           f"first: {load.first_failure}")
    if load.cold_starts:
        say(f"WARNING {mode} c={c}: {load.cold_starts} cold starts inside the timed run")
    if "instance" in pids:
        emit("invoke.warm.instances", len(pids["instance"]), "count", **params, mode=mode)
        emit("invoke.warm.cold_starts", load.cold_starts, "count", **params, mode=mode)
    lat = load.latencies_ms
    got = Measured(percentile(lat, 50), percentile(lat, 99), len(lat) / wall)
    p = {**params, "mode": mode}
    emit("invoke.warm.p50", got.p50, "ms", **p)
    emit("invoke.warm.p99", got.p99, "ms", **p)
    emit("invoke.warm.rps", got.rps, "req/s", **p)
    emit("invoke.warm.client_cpu", load.client_cpu_s / wall, "cores", **p)
    accounted = load.client_cpu_s
    for name, group in pids.items():
        used = sum(load.cpu_after.get(pid, 0.0) - load.cpu_before.get(pid, 0.0)
                   for pid in group)
        accounted += used
        got.cpu_us_per_request += used / len(lat) * 1e6
        emit(f"invoke.warm.{name}_cpu", used / wall, "cores", **p, processes=len(group))
        # CPU per request holds up better than req/s when other work shares the machine
        emit(f"invoke.warm.{name}_cpu_per_request", used / len(lat) * 1e6, "us", **p)
    # whatever else kept the machine busy meanwhile: near 0 on a quiet machine
    other = (load.cpu_after[HOST] - load.cpu_before[HOST] - accounted) / wall
    emit("invoke.warm.other_cpu", max(0.0, other), "cores", **p)
    if other > 0.25:
        say(f"WARNING other processes used {other:.2f} cores during the run: figures are noisy")
    say(f"{mode:8s} c={c:<3d} p50 {got.p50:7.2f} ms  p99 {got.p99:7.2f} ms  "
        f"{got.rps:8.0f} req/s  client cpu {load.client_cpu_s / wall:.2f} cores"
        + (f"  cold starts in run: {load.cold_starts}" if load.cold_starts else ""))
    return got


def bench_level(fb: FaasboxServer, bare: BareServer, c: int, args: Any) -> None:
    max_instances = args.max_instances or c
    name = f"{FUNCTION}-c{c}"
    fb.deploy(name, FUNCTIONS_DIR / FUNCTION, max_instances=max_instances, idle_ttl_s=600)
    params = {"function": FUNCTION, "concurrency": c, "requests": args.requests,
              "max_instances": max_instances, "client": args.client,
              "client_procs": args.client_procs}

    def instance_pids() -> list[int]:
        return [i["pid"] for i in fb.instances(name) if i["pid"]]

    try:
        ours = measure("faasbox", f"{fb.url}/v1/functions/{name}/invoke",
                       {"server": lambda: [fb.pid], "instance": instance_pids}, params, args,
                       fb.auth_headers)
    finally:
        fb.delete(name)  # stops its instances before the bare run
    bare_pid = bare.pid
    base = measure("bare", f"{bare.url}/invoke", {"server": lambda: [bare_pid]}, params, args)
    emit("invoke.warm.ratio_rps", ours.rps / base.rps, "x", **params)
    emit("invoke.warm.ratio_p50", ours.p50 / base.p50, "x", **params)
    emit("invoke.warm.ratio_p99", ours.p99 / base.p99, "x", **params)
    emit("invoke.warm.added_p50", ours.p50 - base.p50, "ms", **params)
    emit("invoke.warm.ratio_cpu_per_request",
         ours.cpu_us_per_request / base.cpu_us_per_request, "x", **params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                    help="concurrent clients, one run each (default: 1 8 32)")
    ap.add_argument("--requests", type=int, default=5000,
                    help="timed requests per run (default: 5000)")
    ap.add_argument("--warmup", type=int, default=300,
                    help="untimed requests first, at least 10 per client (default: 300)")
    ap.add_argument("--max-instances", type=int, default=0,
                    help="max_instances of the function (default: the concurrency)")
    ap.add_argument("--client-procs", type=int, default=1,
                    help="load generator processes sharing the clients (default: 1)")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                    help="load generator connections: raw (a minimal HTTP/1.1 client, the "
                    "default) or httpx (an httpx.AsyncClient per connection)")
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--function-dir", type=Path, default=FUNCTIONS_DIR / FUNCTION,
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.function_dir, args.serve_bare)
        return 0
    with FaasboxServer(env={"FAASBOX_ACQUIRE_TIMEOUT_S": "60"}) as fb, \
            BareServer(FUNCTIONS_DIR / FUNCTION) as bare:
        for c in args.concurrency:
            bench_level(fb, bare, c, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
