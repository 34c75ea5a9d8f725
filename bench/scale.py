"""Scale-out: how long from zero instances to 50 busy at once, when 50 calls arrive together.

A function whose handler notes when it began (``time.time()``) and then sleeps ``--hold``
seconds (longer than the scale-out takes) is invoked by ``--burst`` concurrent callers that
start together (one connection each, made before the round; the calls are written back to
back). With no instance alive before the burst, each round measures, from the moment
the first request is sent:

  scale.first_busy     until the first handler runs
  scale.all_busy       until the last handler runs: then all ``burst`` execute at once (the
                       hold keeps the first ones busy until then; the bench checks it)
  scale.burst_wall     until the last response arrives (includes the hold)
  scale.instances      distinct instances that served the burst
  scale.to_zero        after the last response, until no instance is left (the function has
                       ``idle_ttl_s`` 0, so this is how fast idle instances are stopped)
  scale.server_cpu_per_start  the server's CPU from the first request until all are busy,
                       per call (its share of a cold start): steadier than the times on a
                       noisy machine (read every 20 ms: the first reading after all_busy)
  scale.host_cpu_per_start    the same for the whole machine's busy CPU (the server, the
                       templates' forks, the new instances, the kernel)

Rounds are independent (the bench waits for zero instances before each). Figures are the
median over ``--rounds`` (``all_busy`` also as max), per start mode (``--start-mode``, default
``spawn`` and ``auto``: a plain process spawn, and the node's fastest available start).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from common import FaasboxServer, cpu_seconds, emit, host_busy_seconds, say

HANDLER = """
import os, time

def handler(event, context):
    began = time.time()
    time.sleep(event["hold"])
    return [context.instance_id, began]
"""


def wait_zero(fb: FaasboxServer, name: str, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while fb.instances(name):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{name} did not scale to zero within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


class Burst:
    """``burst`` keep-alive connections, each made before a round, that send their calls back
    to back when the round starts (``http.client``: some 50 µs of the client's CPU per call,
    so the burst leaves the client within a few ms and the client's own work is not what is
    measured)."""

    def __init__(self, fb: FaasboxServer, name: str, burst: int, hold: float) -> None:
        self.host, self.port = "127.0.0.1", fb.port
        self.path = f"/v1/functions/{name}/invoke"
        self.body = orjson.dumps({"hold": hold})
        self.headers = {**fb.auth_headers, "Content-Type": "application/json"}
        self.conns = [http.client.HTTPConnection(self.host, self.port, timeout=120)
                      for _ in range(burst)]

    def connect(self) -> None:
        for c in self.conns:  # the server closes idle connections between rounds
            c.close()
            c.connect()

    def send(self) -> list[tuple[int, bytes]]:
        for c in self.conns:
            c.request("POST", self.path, body=self.body, headers=self.headers)
        out = []
        for c in self.conns:
            resp = c.getresponse()
            out.append((resp.status, resp.read()))
        return out

    def close(self) -> None:
        for c in self.conns:
            c.close()


def one_round(fb: FaasboxServer, burst: Burst, name: str, hold: float) -> dict[str, float]:
    burst.connect()
    readings: list[tuple[float, float, float]] = []
    reading = threading.Event()

    def read_cpu() -> None:  # until the first answer: the hold keeps them all busy till then
        while not reading.wait(0.02):
            readings.append((time.time(), cpu_seconds(fb.pid), host_busy_seconds()))

    readings.append((time.time(), cpu_seconds(fb.pid), host_busy_seconds()))
    reader = threading.Thread(target=read_cpu, daemon=True)
    reader.start()
    sent = time.time()
    results = burst.send()
    done = time.time()
    reading.set()
    reader.join()
    bad = [(status, body) for status, body in results if status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} calls failed: {bad[0][0]} {bad[0][1][:300]!r}")
    values = [orjson.loads(body) for _, body in results]
    began = sorted(v[1] for v in values)
    if began[-1] - began[0] >= hold:
        say(f"warning: the first handler ended before the last began (hold {hold} s too short)")
    _, server0, host0 = readings[0]
    _, server1, host1 = next((r for r in readings if r[0] >= began[-1]), readings[-1])
    return {
        "first_busy": began[0] - sent,
        "all_busy": began[-1] - sent,
        "burst_wall": done - sent,
        "instances": float(len({v[0] for v in values})),
        "to_zero": wait_zero(fb, name),
        "server_cpu_per_start": (server1 - server0) / len(results) * 1000,
        "host_cpu_per_start": (host1 - host0) / len(results) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hold", type=float, default=8.0, help="seconds each handler stays busy")
    ap.add_argument("--start-mode", nargs="+", default=["spawn", "auto"],
                    help="FAASBOX_START_MODE values to measure (spawn, forkserver, template,"
                    " auto)")
    args = ap.parse_args(argv)
    for mode in args.start_mode:
        measure(args, mode)
    return 0


def measure(args: argparse.Namespace, mode: str) -> None:
    env = {"FAASBOX_NODE_MEMORY_MB": str(args.burst * 128 + 1024),
           "FAASBOX_ACQUIRE_TIMEOUT_S": "60", "FAASBOX_REAP_INTERVAL_S": "0.2",
           "FAASBOX_START_MODE": mode,
           # the default tenant limit (100 calls at once) would refuse a larger burst
           "FAASBOX_TENANT_MAX_CONCURRENCY": str(max(100, args.burst))}
    say(f"== start mode {mode}")
    with tempfile.TemporaryDirectory() as tmp, FaasboxServer(env=env) as fb:
        folder = Path(tmp) / "holder"
        folder.mkdir()
        (folder / "main.py").write_text(HANDLER)
        name = "holder"
        fb.deploy(name, folder, memory_mb=128, max_instances=args.burst, idle_ttl_s=0,
                  timeout_s=60)
        wait_zero(fb, name)
        params = {"burst": args.burst, "hold_s": args.hold, "sandbox": fb.sandbox(),
                  "start_mode": mode, "rounds": args.rounds}
        burst = Burst(fb, name, args.burst, args.hold)
        rounds = []
        try:
            for i in range(args.rounds):
                r = one_round(fb, burst, name, args.hold)
                say(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
                rounds.append(r)
        finally:
            burst.close()
        for key, unit in (("first_busy", "s"), ("all_busy", "s"), ("burst_wall", "s"),
                          ("instances", "count"), ("to_zero", "s"),
                          ("server_cpu_per_start", "ms"), ("host_cpu_per_start", "ms")):
            emit(f"scale.{key}", statistics.median(r[key] for r in rounds), unit, **params)
        emit("scale.all_busy.max", max(r["all_busy"] for r in rounds), "s", **params)


if __name__ == "__main__":
    sys.exit(main())
