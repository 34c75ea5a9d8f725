"""Cold starts: the latency of an invoke that has to start an instance, and how it splits.

Two functions: ``echo`` (nothing to import) and ``heavy`` (imports numpy and pandas, installed
from its requirements.txt at deploy time). Every sample is forced cold by a configuration-only
redeploy (a new env value, ``"check": false``): instances belong to one version, so the next
invoke must start one. A sample whose ``X-Faasbox-Cold-Start`` header is not ``true`` is
discarded. Before each sample the bench waits until the previous instance is gone (versions
are deployed with ``idle_ttl_s`` 0), so a cold start never competes with another one.

Figures per function:
  cold_start.latency   client-observed latency of the cold invoke (HTTP round trip included)
  cold_start.init      the record's ``init_ms``: importing the handler's module in the instance
  cold_start.overhead  latency - init: process spawn, interpreter start, sandbox, protocol, HTTP
  cold_start.warm      latency of warm invokes of the same function, for contrast
  cold_start.first_deploy  the first deploy (code upload, pip install, load check)
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from common import FUNCTIONS_DIR, FaasboxServer, emit, percentile, say

FUNCTIONS = {
    # name: memory_mb (pandas needs more than the 128 MB default)
    "echo": 128,
    "heavy": 512,
}
EVENT = {"message": "hello"}
GONE_TIMEOUT_S = 30.0


def wait_no_instances(fb: FaasboxServer, name: str) -> None:
    """Until the function has no instance left (the reaper stops idle ones every tick)."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while fb.instances(name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: instances still alive after {GONE_TIMEOUT_S:g} s")
        time.sleep(0.02)


class Invoker:
    """Timed invokes over one keep-alive ``http.client`` connection: a few tens of
    microseconds of client time per call where httpx spends more than a millisecond, which
    would blur the warm figures."""

    def __init__(self, fb: FaasboxServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=900)
        self.body = orjson.dumps(EVENT)
        self.headers = {"Content-Type": "application/json"}

    def __call__(self, name: str) -> tuple[float, dict[str, str]]:
        """``(latency_ms, headers)`` of one invoke; headers with lower-case names."""
        t0 = time.perf_counter()
        self.conn.request("POST", f"/v1/functions/{name}/invoke", self.body, self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise RuntimeError(f"invoke {name} -> {resp.status}: {body[:2000]!r}")
        return ms, {k.lower(): v for k, v in resp.getheaders()}

    def close(self) -> None:
        self.conn.close()


def cold_samples(fb: FaasboxServer, invoke: Invoker, name: str, memory_mb: int,
                 samples: int) -> tuple[list[float], list[float], int]:
    latencies: list[float] = []
    inits: list[float] = []
    discarded = 0
    i = 0
    while len(latencies) < samples:
        i += 1
        wait_no_instances(fb, name)
        fb.deploy(name, None, check=False, memory_mb=memory_mb, idle_ttl_s=0,
                  env={"BENCH_SAMPLE": str(i)})
        ms, headers = invoke(name)
        if headers.get("x-faasbox-cold-start") != "true":
            discarded += 1
            say(f"{name}: sample {i} was not a cold start; discarded")
            if discarded > samples:
                raise RuntimeError(f"{name}: {discarded} invokes after a redeploy were warm")
            continue
        record = fb.record(headers["x-faasbox-request-id"])
        if not record["cold_start"] or record["init_ms"] is None:
            raise RuntimeError(f"{name}: the record disagrees with the header: {record}")
        latencies.append(ms)
        inits.append(record["init_ms"])
    return latencies, inits, discarded


def warm_samples(fb: FaasboxServer, invoke: Invoker, name: str, memory_mb: int,
                 samples: int) -> list[float]:
    fb.deploy(name, None, check=False, memory_mb=memory_mb, idle_ttl_s=600,
              env={"BENCH_SAMPLE": "warm"})
    for _ in range(20):  # the first one is cold
        invoke(name)
    latencies = []
    for _ in range(samples):
        ms, headers = invoke(name)
        if headers.get("x-faasbox-cold-start") != "false":
            raise RuntimeError(f"{name}: a warm invoke was cold")
        latencies.append(ms)
    return latencies


def emit_pair(name: str, values: list[float], unit: str, **params: Any) -> None:
    emit(f"{name}.p50", percentile(values, 50), unit, **params)
    emit(f"{name}.p99", percentile(values, 99), unit, **params)


def bench_function(fb: FaasboxServer, function: str, args: Any, sandbox: str) -> None:
    memory_mb = FUNCTIONS[function]
    folder = FUNCTIONS_DIR / function
    requirements = (folder / "requirements.txt").is_file()
    say(f"{function}: deploying" + (" (pip installs its requirements)" if requirements else ""))
    t0 = time.perf_counter()
    fb.deploy(function, folder, check=True, memory_mb=memory_mb)
    deploy_s = time.perf_counter() - t0
    params: dict[str, Any] = {"function": function, "memory_mb": memory_mb, "sandbox": sandbox}
    emit("cold_start.first_deploy", deploy_s, "s", **params, requirements=requirements)

    invoke = Invoker(fb)
    latencies, inits, discarded = cold_samples(fb, invoke, function, memory_mb, args.samples)
    overheads = [lat - init for lat, init in zip(latencies, inits, strict=True)]
    cold = {**params, "samples": args.samples, "mode": "cold"}
    emit_pair("cold_start.latency", latencies, "ms", **cold, discarded=discarded)
    emit_pair("cold_start.init", inits, "ms", **cold)
    emit_pair("cold_start.overhead", overheads, "ms", **cold)

    warm = warm_samples(fb, invoke, function, memory_mb, args.warm_samples)
    invoke.close()
    emit_pair("cold_start.warm", warm, "ms", **params, samples=args.warm_samples, mode="warm")
    say(f"{function}: cold p50 {percentile(latencies, 50):.1f} ms (init "
        f"{percentile(inits, 50):.1f} ms, overhead {percentile(overheads, 50):.1f} ms), "
        f"p99 {percentile(latencies, 99):.1f} ms; warm p50 {percentile(warm, 50):.2f} ms")
    fb.delete(function)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20,
                    help="cold starts per function (default: 20)")
    ap.add_argument("--warm-samples", type=int, default=200,
                    help="warm invokes per function, for contrast (default: 200)")
    ap.add_argument("--function", choices=sorted(FUNCTIONS), nargs="+",
                    default=list(FUNCTIONS), help="which functions (default: all)")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep the server's data dir here (reuses its pip package cache)")
    args = ap.parse_args(argv)
    # a short reap interval: the wait for the previous instance to go is not the measurement
    with FaasboxServer(data=args.data, env={"FAASBOX_REAP_INTERVAL_S": "0.1"}) as fb:
        sandbox = fb.sandbox()
        for function in args.function:
            bench_function(fb, function, args, sandbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
