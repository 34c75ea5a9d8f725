"""What authentication and the limit checks cost on the warm synchronous invoke path.

Two servers run side by side for the whole bench: one as normal (every request carries an API
key: parsed, its secret hashed with SHA-256 and compared, its scope and function list checked)
and one started with ``--insecure-no-auth`` (no key; everything else the same, including the
Host check and the concurrency accounting every call does). On the normal server the load is
sent twice, as two tenants with an invoke key each for their own ``echo``:

- ``auth``: a tenant with the default limits (no rate limit: the token bucket is skipped);
- ``auth_rate``: a tenant with a rate limit far above the load (``rate_per_s`` and ``burst``
  1,000,000), so the token bucket is taken on every call but never refuses one;
- ``noauth``: the ``--insecure-no-auth`` server, default tenant, no key.

For each client concurrency (``--concurrency``, default 1 and 8), ``--rounds`` rounds (default
3) each run the three modes in turn (the order rotating per round), each a warm-up then
``--requests`` closed-loop invokes (bench/invoke.py's raw HTTP/1.1 client). The server
process's CPU (utime + stime from ``/proc/PID/stat``) over the timed run, divided by the
requests answered, is the figure: it does not depend on how busy the rest of the machine is
the way req/s does. Each figure is the median of its rounds; ``auth.cost.*`` are the
differences and ratios between modes of the same concurrency.

The difference of two servers' CPU is a small number between two large ones, so it is also
measured directly: ``auth.checks.cpu_per_request`` is the CPU of exactly what a warm invoke
does for auth and limits (the gate: Host check, bearer key parsed, hashed and compared; the
route's scope, ``?tenant=`` and the key's functions; the rate bucket; the concurrency
accounting in and out), run in this process on the real ``Tenancy`` and ``Admission`` over a
SQLite store, best of 5 repeats of 20,000 calls; ``auth.checks.share`` divides it by the
``noauth`` server's CPU per request of the same run.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from common import (
    FUNCTIONS_DIR,
    FaasboxServer,
    cpu_seconds,
    emit,
    host_busy_seconds,
    percentile,
    say,
)
from faasbox.codestore import zip_folder
from invoke import HOST, run_load

FUNCTION = "echo"
MODES = ("auth", "auth_rate", "noauth")
BIG = 1_000_000


@dataclass
class Target:
    """Where one mode's load goes: the invoke URL, the headers, the server process."""

    url: str
    headers: dict[str, str]
    pid: int


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    server_us: float  # server CPU µs per request
    client_cores: float
    other_cores: float


def prepare(auth: FaasboxServer, noauth: FaasboxServer, max_instances: int) -> dict[str, Target]:
    spec: dict[str, Any] = {"max_instances": max_instances, "idle_ttl_s": 3600}
    targets = {}
    for mode, limits in (("auth", {}), ("auth_rate", {"rate_per_s": BIG, "burst": BIG})):
        tenant = f"bench-{mode.replace('_', '-')}"
        auth.request("POST", "/v1/tenants", json={"name": tenant, "limits": limits})
        key = auth.request("POST", f"/v1/tenants/{tenant}/keys", json={
            "scope": "invoke", "functions": [FUNCTION]}).json()["key"]
        auth.request("PUT", f"/v1/functions/{FUNCTION}", params={"tenant": tenant}, json={
            "handler": "main:handler", **spec, "code_zip": _zip()})
        targets[mode] = Target(f"{auth.url}/v1/functions/{FUNCTION}/invoke",
                               {"Authorization": f"Bearer {key}"}, auth.pid)
    noauth.deploy(FUNCTION, FUNCTIONS_DIR / FUNCTION, **spec)
    targets["noauth"] = Target(f"{noauth.url}/v1/functions/{FUNCTION}/invoke", {}, noauth.pid)
    return targets


def _zip() -> str:
    return base64.b64encode(zip_folder(FUNCTIONS_DIR / FUNCTION)).decode()


def one_run(target: Target, c: int, requests: int, warmup: int) -> Run:
    run_load("raw", target.url, c, 0, max(warmup, 10 * c), 1, headers=target.headers)

    def sample() -> dict[int, float]:
        return {target.pid: cpu_seconds(target.pid), HOST: host_busy_seconds()}

    load = run_load("raw", target.url, c, requests, 2 * c, 1, sample, target.headers)
    if load.failures:
        raise RuntimeError(f"{load.failures} of {requests} requests failed; first:"
                           f" {load.first_failure}")
    wall = load.ended - load.started
    server_s = load.cpu_after[target.pid] - load.cpu_before[target.pid]
    host_s = load.cpu_after[HOST] - load.cpu_before[HOST]
    n = len(load.latencies_ms)
    # the instance's CPU is part of "other" here: it is the same in every mode
    return Run(rps=n / wall, p50=percentile(load.latencies_ms, 50),
               p99=percentile(load.latencies_ms, 99), server_us=server_s / n * 1e6,
               client_cores=load.client_cpu_s / wall,
               other_cores=max(0.0, (host_s - server_s - load.client_cpu_s) / wall))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                    help="concurrent clients (default: 1 8)")
    ap.add_argument("--requests", type=int, default=3000,
                    help="timed requests per run (default: 3000)")
    ap.add_argument("--warmup", type=int, default=200,
                    help="untimed requests before each run, at least 10 per client")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of every mode per concurrency; figures are medians (default 3)")
    args = ap.parse_args(argv)
    env = {"FAASBOX_ACQUIRE_TIMEOUT_S": "60"}
    with FaasboxServer(env=env) as auth, \
            FaasboxServer(env=env, args=["--insecure-no-auth"]) as noauth:
        targets = prepare(auth, noauth, max(args.concurrency))
        for c in args.concurrency:
            runs: dict[str, list[Run]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                for mode in MODES[r % 3:] + MODES[:r % 3]:  # no mode always goes first
                    run = one_run(targets[mode], c, args.requests, args.warmup)
                    runs[mode].append(run)
                    say(f"c={c} round {r + 1} {mode:9s} {run.rps:6.0f} req/s  server"
                        f" {run.server_us:6.0f} us/req  p50 {run.p50:.2f} ms  other"
                        f" {run.other_cores:.2f} cores")
            report(runs, c, args)
    return 0


def checks_us(calls: int = 20_000, repeats: int = 5) -> float:
    """CPU µs per request of the auth and limit checks, run in this process (see above)."""
    import asyncio
    import tempfile
    import time
    from pathlib import Path

    from faasbox.api.auth import Gate, allowed_tenant
    from faasbox.api.fast import SCOPE
    from faasbox.clock import SystemClock
    from faasbox.store import SqlStore
    from faasbox.store.relational.tenancy import SqlTenancyStore
    from faasbox.store.sqlite import SqliteDatabase
    from faasbox.tenancy.admission import Admission
    from faasbox.tenancy.model import EffectiveLimits, KeySpec, Limits, TenantSpec
    from faasbox.tenancy.service import Tenancy

    async def setup(tmp: Path) -> tuple[Tenancy, Admission, str, SqlStore]:
        store = SqlStore(SqliteDatabase(tmp / "s.db"))
        await store.open()
        tenancy = Tenancy(SqlTenancyStore(store), EffectiveLimits(
            max_concurrency=100, rate_per_s=0, burst=0, max_queued_tasks=10**6,
            max_functions=1000, max_memory_mb=0, max_function_memory_mb=10240,
            max_function_timeout_s=900), SystemClock())
        await tenancy.load()
        await tenancy.bootstrap(tmp)
        await tenancy.create_tenant(TenantSpec(name="t", limits=Limits(
            rate_per_s=1_000_000, burst=1_000_000)), None)
        _, key = await tenancy.create_key("t", KeySpec(scope="invoke"), None)
        return tenancy, Admission(tenancy, SystemClock()), key, store

    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        tenancy, admission, key, store = loop.run_until_complete(setup(Path(tmp)))
        gate = Gate(tenancy, server_names=frozenset({"127.0.0.1", "localhost"}),
                    metrics_public=False, insecure_no_auth=False)
        scope = {"type": "http", "method": "POST", "path": f"/v1/functions/{FUNCTION}/invoke",
                 "query_string": b"", "headers": [
                     (b"host", b"127.0.0.1:8080"), (b"authorization", f"Bearer {key}".encode()),
                     (b"content-type", b"application/json"), (b"content-length", b"2")]}

        def one() -> None:
            principal, _ = gate.admit(scope)
            tenant = allowed_tenant(principal, SCOPE, None, FUNCTION, tenancy)
            admission.take(tenant)
            admission.enter(f"{tenant}/{FUNCTION}")
            admission.leave(f"{tenant}/{FUNCTION}")

        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            for _ in range(calls):
                one()
            best = min(best, (time.process_time() - t0) / calls * 1e6)
        loop.run_until_complete(store.close())
        loop.close()
    return best


def report(runs: dict[str, list[Run]], c: int, args: Any) -> None:
    params = {"function": FUNCTION, "concurrency": c, "requests": args.requests,
              "rounds": args.rounds}
    med: dict[str, dict[str, float]] = {}
    for mode, got in runs.items():
        med[mode] = {f: statistics.median(getattr(r, f) for r in got)
                     for f in ("rps", "p50", "p99", "server_us", "client_cores",
                               "other_cores")}
        p = {**params, "mode": mode}
        emit("auth.warm.server_cpu_per_request", med[mode]["server_us"], "us", **p)
        emit("auth.warm.rps", med[mode]["rps"], "req/s", **p)
        emit("auth.warm.p50", med[mode]["p50"], "ms", **p)
        emit("auth.warm.p99", med[mode]["p99"], "ms", **p)
        emit("auth.warm.client_cpu", med[mode]["client_cores"], "cores", **p)
        emit("auth.warm.other_cpu", med[mode]["other_cores"], "cores", **p)
    for mode, base, what in (("auth", "noauth", "auth"), ("auth_rate", "auth", "rate_limit")):
        p = {**params, "check": what, "compare": f"{mode}-{base}"}
        emit("auth.cost.server_cpu_per_request",
             med[mode]["server_us"] - med[base]["server_us"], "us", **p)
        emit("auth.cost.ratio_server_cpu_per_request",
             med[mode]["server_us"] / med[base]["server_us"], "x", **p)
        emit("auth.cost.ratio_rps", med[mode]["rps"] / med[base]["rps"], "x", **p)
    checks = checks_us()
    emit("auth.checks.cpu_per_request", checks, "us", **params)
    emit("auth.checks.share", 100 * checks / med["noauth"]["server_us"], "%",
         **{**params, "of": "noauth server_cpu_per_request"})


if __name__ == "__main__":
    sys.exit(main())
