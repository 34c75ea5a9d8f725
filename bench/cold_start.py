"""Cold starts: the latency of an invoke that has to start an instance, how it splits, and
what an idle instance costs in memory, for each way of starting one (FAASBOX_START_MODE).

Functions: ``hello`` (examples/hello: nothing to import), ``heavy`` (imports numpy and pandas,
installed from its requirements.txt at deploy time) and, on request, ``echo``. For each start
mode (``spawn``: a new interpreter; ``forkserver``: forked from the fork server; ``template``:
forked from the version's snapshot template) a server runs with that mode, and each function
is deployed once (``idle_ttl_s`` 0). Every sample is a cold start of that same version: the
bench waits until the previous instance is gone, then invokes (a sample whose
``X-Faasbox-Cold-Start`` header is not ``true`` is discarded). The first cold start of the
version is reported apart (``cold_start.first``): in ``template`` mode it makes the template.
``--start-mode auto`` (the server's default, on request only) mixes fork-server and template
starts in its latency samples; its PSS figures show what the default keeps warm for
``min_instances``.

Figures per function and mode:
  cold_start.first     the version's first cold start (template mode: includes the template)
  cold_start.latency   client-observed latency of the cold invoke (HTTP round trip included)
  cold_start.init      the record's ``init_ms``: loading the handler in the instance (a
                       template's children find it imported)
  cold_start.overhead  latency - init: process start, sandbox, protocol, HTTP
  cold_start.warm      latency of warm invokes of the same function, for contrast
  cold_start.pss_per_instance        PSS of an idle, loaded instance (/proc/PID/smaps_rollup),
                                     mean over ``--pss-instances`` instances kept by
                                     min_instances
  cold_start.pss_total_per_instance  PSS of every process under the server that is not the
                                     server (fork server, template, instances) / instances
  cold_start.first_deploy  the first deploy (code upload, pip install, load check)

In ``auto`` mode only, for ``heavy`` (whose handler can be told to sleep):
  cold_start.burst_pss_total_per_instance  PSS of everything under the server / instances,
                                     once ``--pss-instances`` instances started by a burst of
                                     as many calls (before the version had its template: from
                                     the fork server) are idle and the server has replaced
                                     them by the template's children
  cold_start.burst_swapped_s         from the end of the burst until every instance is a
                                     template child
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from common import BENCH_DIR, FUNCTIONS_DIR, FaasboxServer, emit, percentile, say

FUNCTIONS = {
    # name: (folder, memory_mb); pandas needs more than the 128 MB default
    "hello": (BENCH_DIR.parent / "examples" / "hello", 128),
    "echo": (FUNCTIONS_DIR / "echo", 128),
    "heavy": (FUNCTIONS_DIR / "heavy", 512),
}
DEFAULT_FUNCTIONS = ["hello", "heavy"]
START_MODES = ["spawn", "forkserver", "template"]
# auto (the default) is on request: its cold starts mix forks and template children
MODE_CHOICES = [*START_MODES, "auto"]
EVENT = {"message": "hello"}
GONE_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0


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
        self.headers = {"Content-Type": "application/json", **fb.auth_headers}

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


def cold_samples(fb: FaasboxServer, invoke: Invoker, name: str,
                 samples: int) -> tuple[list[float], list[float], int]:
    """``samples`` cold starts of the deployed version, one at a time."""
    latencies: list[float] = []
    inits: list[float] = []
    discarded = 0
    i = 0
    while len(latencies) < samples:
        i += 1
        wait_no_instances(fb, name)
        ms, headers = invoke(name)
        if headers.get("x-faasbox-cold-start") != "true":
            discarded += 1
            say(f"{name}: sample {i} was not a cold start; discarded")
            if discarded > samples:
                raise RuntimeError(f"{name}: {discarded} invokes after the reap were warm")
            continue
        record = fb.record(headers["x-faasbox-request-id"])
        if not record["cold_start"] or record["init_ms"] is None:
            raise RuntimeError(f"{name}: the record disagrees with the header: {record}")
        latencies.append(ms)
        inits.append(record["init_ms"])
    return latencies, inits, discarded


def pss_kb(pid: int) -> int:
    """Proportional set size of one process: its private pages plus its share of each page
    it shares with others (fork server, template, siblings)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (fork server, templates, instances)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pss_figures(fb: FaasboxServer, name: str, count: int) -> tuple[float, float]:
    """``(mean PSS of an idle instance, PSS of everything under the server / count)`` in MB,
    with ``count`` loaded idle instances (kept by min_instances) of a newly deployed function:
    nothing else runs under the server."""
    folder, memory_mb = FUNCTIONS[name]
    fb.deploy(name, folder, check=False, memory_mb=memory_mb, min_instances=count,
              max_instances=count, idle_ttl_s=600)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        idle = [i for i in fb.instances(name) if i["state"] == "idle"]
        if len(idle) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {count} idle instances did not come up")
        time.sleep(0.1)
    time.sleep(1.0)  # let the last start settle
    pids = [i["pid"] for i in idle[:count]]
    per_instance = sum(pss_kb(pid) for pid in pids) / len(pids) / 1024
    total = sum(pss_kb(pid) for pid in descendants(fb.pid)) / count / 1024
    fb.delete(name)
    return per_instance, total


def burst_figures(fb: FaasboxServer, name: str, count: int) -> tuple[float, float]:
    """``(PSS of everything under the server / count in MB, seconds until swapped)``: a new
    version of ``name``, a burst of ``count`` calls that hold their instance for a second,
    then until its idle instances are all the template's children."""
    folder, memory_mb = FUNCTIONS[name]
    fb.deploy(name, folder, check=False, memory_mb=memory_mb, max_instances=count,
              idle_ttl_s=600)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: fb.request(
            "POST", f"/v1/functions/{name}/invoke", json={"sleep": 1.0}), range(count)))
    if any(r.status_code != 200 for r in answers):
        raise RuntimeError(f"{name}: a call of the burst failed")
    ended = time.monotonic()
    while True:
        live = fb.instances(name)
        if len(live) >= count and all(i["start_mode"] == "template" and i["state"] == "idle"
                                      for i in live):
            break
        if time.monotonic() - ended > READY_TIMEOUT_S:
            raise RuntimeError(f"{name}: the burst's instances were not replaced")
        time.sleep(0.1)
    swapped_s = time.monotonic() - ended
    time.sleep(1.0)  # the replaced processes are gone
    total = sum(pss_kb(pid) for pid in descendants(fb.pid)) / count / 1024
    fb.delete(name)
    return total, swapped_s


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


def bench_function(fb: FaasboxServer, function: str, args: Any, sandbox: str,
                   mode: str) -> None:
    folder, memory_mb = FUNCTIONS[function]
    requirements = (folder / "requirements.txt").is_file()
    say(f"{function} [{mode}]: deploying" +
        (" (pip installs its requirements)" if requirements else ""))
    t0 = time.perf_counter()
    fb.deploy(function, folder, check=True, memory_mb=memory_mb, idle_ttl_s=0)
    deploy_s = time.perf_counter() - t0
    params: dict[str, Any] = {"function": function, "memory_mb": memory_mb, "sandbox": sandbox,
                              "start_mode": mode}
    emit("cold_start.first_deploy", deploy_s, "s", **params, requirements=requirements)

    invoke = Invoker(fb)
    first = cold_samples(fb, invoke, function, 1)[0][0]
    emit("cold_start.first", first, "ms", **params)
    latencies, inits, discarded = cold_samples(fb, invoke, function, args.samples)
    overheads = [lat - init for lat, init in zip(latencies, inits, strict=True)]
    cold = {**params, "samples": args.samples, "mode": "cold"}
    emit_pair("cold_start.latency", latencies, "ms", **cold, discarded=discarded)
    emit_pair("cold_start.init", inits, "ms", **cold)
    emit_pair("cold_start.overhead", overheads, "ms", **cold)

    warm = warm_samples(fb, invoke, function, memory_mb, args.warm_samples)
    invoke.close()
    emit_pair("cold_start.warm", warm, "ms", **params, samples=args.warm_samples, mode="warm")
    say(f"{function} [{mode}]: first {first:.1f} ms; cold p50 {percentile(latencies, 50):.1f}"
        f" ms (init {percentile(inits, 50):.1f} ms, overhead "
        f"{percentile(overheads, 50):.1f} ms), p99 {percentile(latencies, 99):.1f} ms; "
        f"warm p50 {percentile(warm, 50):.2f} ms")
    fb.delete(function)
    if not args.pss_instances:
        return
    idle = {**params, "instances": args.pss_instances}
    per_instance, total = pss_figures(fb, function, args.pss_instances)
    emit("cold_start.pss_per_instance", per_instance, "MB", **idle)
    emit("cold_start.pss_total_per_instance", total, "MB", **idle)
    say(f"{function} [{mode}]: PSS per idle instance {per_instance:.1f} MB, "
        f"everything under the server / instance {total:.1f} MB")
    if mode == "auto" and function == "heavy":
        total, swapped_s = burst_figures(fb, function, args.pss_instances)
        emit("cold_start.burst_pss_total_per_instance", total, "MB", **idle)
        emit("cold_start.burst_swapped_s", swapped_s, "s", **idle)
        say(f"{function} [{mode}]: after a burst, everything under the server / instance "
            f"{total:.1f} MB (all template children {swapped_s:.1f} s after the burst)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20,
                    help="cold starts per function and mode (default: 20)")
    ap.add_argument("--warm-samples", type=int, default=200,
                    help="warm invokes per function, for contrast (default: 200)")
    ap.add_argument("--function", choices=sorted(FUNCTIONS), nargs="+",
                    default=DEFAULT_FUNCTIONS, help="which functions (default: hello heavy)")
    ap.add_argument("--start-mode", choices=MODE_CHOICES, nargs="+", default=START_MODES,
                    help="which start modes (default: all)")
    ap.add_argument("--pss-instances", type=int, default=4,
                    help="idle instances for the PSS figures (0: skip; default: 4)")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep the server's data dir here (reuses its pip package cache)")
    args = ap.parse_args(argv)
    for mode in args.start_mode:
        # a short reap interval: the wait for the previous instance to go is not the measurement
        env = {"FAASBOX_REAP_INTERVAL_S": "0.1", "FAASBOX_START_MODE": mode}
        with FaasboxServer(data=args.data, env=env) as fb:
            sandbox = fb.sandbox()
            for function in args.function:
                bench_function(fb, function, args, sandbox, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
