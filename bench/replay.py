"""Live replay: drive the real platform with a time-compressed slice of the Azure 2019 dev
trace, and set what it did beside what the simulator predicts for the same slice.

**The slice.** The first ``--minutes`` (60) trace minutes of ``--functions`` (20) functions of
``dev/`` (never ``eval/``), picked deterministically in inv.csv order (the simulator's own
order): a function is taken when it has between ``--min-calls`` (10) and ``--max-calls`` (1000)
invocations in the slice, at most ``--max-peak`` (16) of them running at once, and the total
stays within ``--max-invocations`` (3000), so a 2-core machine keeps up. The slice is written
as a trace folder of its own (inv.csv cut to the minutes, run.csv, mem.csv of those functions)
and both sides replay that folder:

* arrivals and durations are the simulator's own: each minute's calls spread as the simulator
  spreads them (``--spread uniform``: at ``(i + 0.5)/n`` of the minute), each call's duration
  drawn with the simulator's seeded generator from the run.csv percentiles. Durations are
  **capped** at ``--duration-cap`` (60 trace seconds, 1 s real): the capped percentiles are what
  the slice's run.csv holds, so the simulator sees the same cap;
* memory: the app's AverageAllocatedMb rounded to a whole MB and clamped to the spec's
  128-10240 MB (the slice's mem.csv holds the rounded value, so the simulator sees it too).

**Time compression** (``--speed`` 60: one trace minute = one real second). The platform has no
time-scale setting (config.py, clock.py: the server runs on the real clock), so the *trace and
every time constant* are scaled instead:

* the trace: a call at trace time ``t`` is sent at ``t / speed`` real seconds; its handler
  (one tiny function, deployed 20 times) sleeps its drawn duration ``/ speed``;
* the platform, through ``FAASBOX_*`` settings, each divided by ``speed``: stable window (60 s
  -> 1 s), panic window (6 s -> 0.1 s), scale-to-zero grace (30 s -> 0.5 s), pre-warm lead
  (2 s -> 0.033 s); the scaling tick ``FAASBOX_REAP_INTERVAL_S`` (1 s) would be 1/60 s, but is
  kept at >= 0.05 s (3 trace seconds) so the loop does not eat the 2 cores;
* the keep-alive policy, through ``FAASBOX_KEEPALIVE_ARGS``: ``fixed`` ttl_s 600 -> 10 s (and
  the functions' ``idle_ttl_s`` 10 s); ``hybrid`` bin 60 s -> 1 s, range 4 h -> 240 s;
  ``faasbox`` every time parameter (range, rate window and floor, new-level cap, shortest
  release, period tolerance and leads, cold start, the keep-alive of instances started ahead)
  divided by ``speed``; its bins are relative (each 10 % wider) but the first is [0, 1 s)
  whatever the speed, so gaps under ``speed`` trace seconds share one bin; its calls-per-hour
  are counted per real hour, i.e. ``speed`` times the trace's, so ``min_rate_per_h`` is
  multiplied by ``speed`` and ``cold_value_mb_s`` by ``speed ** (fairness - 1)``, which makes
  every cold-start value ``V_f`` (MB*s) exactly 1/``speed`` of the trace-time one. Functions
  of the histogram policies get ``idle_ttl_s`` = the range (4 h -> 240 s): the simulator has
  no such cap and it never binds within the run.

What is **not** compressed: the autoscaler's 1 s window buckets (not a setting: both windows
are one bucket = 60 trace seconds), a cold start (a real process start or fork, tens to
hundreds of ms = several trace seconds, where the simulator assumes 0.5 s; the ``sim_matched``
source re-runs the simulator with the cold start measured live), the invoke path's own
overhead (~1-2 ms real = ~0.1 trace s per call) and the scaling tick (3 trace seconds, not 1).
The node's memory accounting is lifted (``FAASBOX_NODE_MEMORY_MB``), as the simulator has no
capacity limit (the MB are limits and accounting, not memory the idle handlers use).

**Measured live**, per policy, on a fresh server (so no policy history, as in the simulator):
cold starts from each response's ``X-Faasbox-Cold-Start`` (checked against the invocation
records); instance-seconds and idle MB*s by integrating ``GET /v1/status`` (starting + idle +
busy instances of the slice's functions, sampled every ``--poll`` s, held until the next
sample) from the first call to the slice's end (or the last call's end); instance starts from
the server's instance sequence number (instance ids are ``function-version-SEQ-xxxx``): a probe
function is cold-started just before and just after the replay. Time figures are reported in
**trace seconds** (real x ``speed``) so that they compare with the simulator's directly.

Figures (params: ``source`` live | sim | sim_matched, ``policy``, slice parameters):
  replay.invocations, replay.cold_starts            count
  replay.cold_start_pct.overall                     all cold starts / all invocations
  replay.cold_start_pct.p50, .p75, .p90, .mean      per-function cold-start % across functions
  replay.instance_seconds                           loaded instance time (trace s)
  replay.idle_memory_mb_s                           idle loaded MB*s (trace time; the
                                                    simulator's wasted memory)
  replay.instance_starts                            cold starts + starts ahead of demand
  replay.live.cold_start_s                          live median cold-start overhead (trace s)
  replay.live.lateness.p50, .p99                    how late calls were sent (real ms)
  replay.live.failed                                calls that did not answer 200
  replay.live.server_cpu, .client_cpu, .host_cpu   cores used meanwhile by the server
                                                    process, this bench, the whole machine
                                                    (others' work included: on a shared
                                                    2-core machine, a host_cpu near 2 means
                                                    calls and cold starts were delayed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common import (
    FaasboxServer,
    cpu_seconds,
    emit,
    host_busy_seconds,
    percentile,
    read_response,
    say,
)
from faasbox.autoscaler import (
    FaasboxPolicy,
    FixedKeepAlive,
    HybridHistogramPolicy,
    make_policy,
)
from faasbox.config import Settings
from faasbox.simulator import DEV_TRACE, FunctionTrace, load_trace, replay, simulate

DEFAULT_TRACE = DEV_TRACE  # the dev sample shipped in src/faasbox/data/traces
SIM_COLD_START_S = 0.5  # the simulator's default cold start (trace seconds)
MIN_TICK_S = 0.05
MAX_INSTANCES = 100
PROBE = "replay-probe"
HANDLER = """
import time

def handler(event, context):
    time.sleep(event["sleep"])
"""
PCT_COLUMNS = [f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100)]


# -- the slice --------------------------------------------------------------------------------
@dataclass
class Fn:
    name: str
    trace: FunctionTrace
    calls: list[tuple[float, float]]  # (arrival, duration) in trace seconds


def schedule(ft: FunctionTrace, seed: int, spread: str) -> list[tuple[float, float]]:
    """Arrivals and durations exactly as ``faasbox.simulator.replay`` draws them."""
    rng = random.Random(f"{seed}:{ft.fn}")
    arrivals = ft.arrivals(spread, rng)
    return [(t, ft.draw_duration_s(rng)) for t in arrivals]


def peak_running(calls: list[tuple[float, float]], cold_start_s: float) -> int:
    edges = sorted([(t, 1) for t, _ in calls] + [(t + d + cold_start_s, -1) for t, d in calls])
    cur = peak = 0
    for _, step in edges:
        cur += step
        peak = max(peak, cur)
    return peak


def cut(ft: FunctionTrace, minutes: int, cap_s: float) -> FunctionTrace:
    mb = float(min(10240, max(128, round(ft.memory_mb))))
    pcts = tuple(min(d, cap_s * 1000.0) for d in ft.duration_ms)
    return FunctionTrace(ft.fn, ft.app, ft.counts[:minutes], pcts, mb)


def pick(args: argparse.Namespace) -> list[Fn]:
    picked: list[Fn] = []
    total = 0
    for ft in load_trace(args.trace):
        if len(picked) == args.functions:
            break
        sliced = cut(ft, args.minutes, args.duration_cap)
        n = sum(sliced.counts)
        if not args.min_calls <= n <= args.max_calls or total + n > args.max_invocations:
            continue
        calls = schedule(sliced, args.seed, args.spread)
        if peak_running(calls, SIM_COLD_START_S) > args.max_peak:
            continue
        picked.append(Fn(f"r{len(picked):02d}-{ft.fn[:8].lower()}", sliced, calls))
        total += n
    return picked


def write_slice(src: Path, dst: Path, fns: list[Fn], minutes: int) -> None:
    """A trace folder in the same format holding only the slice (minutes, caps, rounded MB)."""
    by_fn = {f.trace.fn: f.trace for f in fns}
    by_app = {f.trace.app: f.trace for f in fns}
    with (src / "inv.csv").open(newline="") as f_in, (dst / "inv.csv").open("w", newline="") \
            as f_out:
        reader, writer = csv.reader(f_in), csv.writer(f_out)
        header = next(reader)
        first = header.index("HashOwner") + 1
        writer.writerow(header[:first + minutes])
        writer.writerows(row[:first + minutes] for row in reader if row[0] in by_fn)
    _rewrite(src / "run.csv", dst / "run.csv", "HashFunction", by_fn,
             lambda row, ft: dict(zip(PCT_COLUMNS, (repr(d) for d in ft.duration_ms),
                                      strict=True)))
    _rewrite(src / "mem.csv", dst / "mem.csv", "HashApp", by_app,
             lambda row, ft: {"AverageAllocatedMb": str(int(ft.memory_mb))})
    back = {ft.fn: ft for ft in load_trace(dst)}
    for f in fns:
        if back.get(f.trace.fn) != f.trace:
            raise RuntimeError(f"the slice folder does not read back {f.name} as written")


def _rewrite(src: Path, dst: Path, key: str, keep: dict[str, FunctionTrace],
             change: Any) -> None:
    with src.open(newline="") as f_in, dst.open("w", newline="") as f_out:
        reader = csv.DictReader(f_in)
        writer = csv.DictWriter(f_out, fieldnames=list(reader.fieldnames or []))
        writer.writeheader()
        for row in reader:
            if row[key] in keep:
                writer.writerow({**row, **change(row, keep[row[key]])})


# -- compressing the platform's time constants -------------------------------------------------
def policy_args(policy: str, c: float) -> dict[str, float]:
    """The policy's default parameters with time divided by ``c`` (see the module docstring)."""
    if policy == "fixed":
        return {"ttl_s": FixedKeepAlive().ttl_s / c}
    if policy == "hybrid":
        h = HybridHistogramPolicy()
        return {"bin_s": h.bin_s / c, "range_s": h.range_s / c}
    if policy == "faasbox":
        p = FaasboxPolicy()
        times = ("range_s", "rate_window_s", "rate_floor_s", "new_level_cap_s",
                 "min_release_s", "period_tol_s", "period_lead_s", "schedule_lead_s",
                 "cold_start_s", "ahead_keep_s")
        out = {k: float(getattr(p, k)) / c for k in times}
        out["min_rate_per_h"] = p.min_rate_per_h * c
        out["cold_value_mb_s"] = p.cold_value_mb_s * c ** (p.fairness - 1)
        return out
    raise ValueError(f"no time compression known for policy {policy!r}")


def idle_ttl_s(policy: str, c: float) -> float:
    if policy == "fixed":
        return FixedKeepAlive().ttl_s / c
    return HybridHistogramPolicy().range_s / c


def platform_env(policy: str, c: float) -> dict[str, str]:
    d = Settings()
    args = ",".join(f"{k}={v!r}" for k, v in policy_args(policy, c).items())
    return {
        "FAASBOX_KEEPALIVE_POLICY": policy,
        "FAASBOX_KEEPALIVE_ARGS": args,
        "FAASBOX_STABLE_WINDOW_S": repr(d.stable_window_s / c),
        "FAASBOX_PANIC_WINDOW_S": repr(d.panic_window_s / c),
        "FAASBOX_SCALE_TO_ZERO_GRACE_S": repr(d.scale_to_zero_grace_s / c),
        "FAASBOX_PREWARM_LEAD_S": repr(d.prewarm_lead_s / c),
        "FAASBOX_REAP_INTERVAL_S": repr(max(MIN_TICK_S, d.reap_interval_s / c)),
        "FAASBOX_NODE_MEMORY_MB": "1000000",
        "FAASBOX_ACQUIRE_TIMEOUT_S": "30",
    }


# -- the live run -----------------------------------------------------------------------------
@dataclass
class Outcome:
    function: str
    late_s: float
    latency_s: float
    sleep_s: float
    ok: bool
    cold: bool


@dataclass
class Live:
    outcomes: list[Outcome] = field(default_factory=list)
    # (seconds since the replay began, {function: (loaded instances, idle MB)})
    samples: list[tuple[float, dict[str, tuple[int, float]]]] = field(default_factory=list)
    horizon_s: float = 0.0
    instance_starts: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    host_cpu: float = 0.0


class Conns:
    """Keep-alive HTTP/1.1 connections to the server, reused as they come free: the least CPU
    per call Python spends (an httpx client costs ~1.7 ms a request, see bench/README.md),
    so that calls leave on time on a 2-core machine."""

    IDLE_S = 2.0  # the server closes a connection idle for 5 s (uvicorn's keep-alive)

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        # (last used, reader, writer), most recently used last
        self.free: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.free:
            used, reader, writer = self.free.pop()
            if time.monotonic() - used < self.IDLE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[
            str, str], bytes]:
        reader, writer = await self._conn()
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.extra}Content-Type:"
                     f" application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        status, headers, payload = await read_response(reader)
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.free.append((time.monotonic(), reader, writer))
        return status, headers, payload

    def close(self) -> None:
        for _, _, writer in self.free:
            writer.close()
        self.free.clear()


async def _call(conns: Conns, name: str, sleep_s: float, due: float) -> Outcome:
    sent = time.monotonic()
    try:
        status, headers, _ = await conns.request(
            "POST", f"/v1/functions/{name}/invoke", orjson.dumps({"sleep": sleep_s}))
        ok, cold = status == 200, headers.get("x-faasbox-cold-start") == "true"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        say(f"{name}: {exc!r}")
        ok, cold = False, False
    return Outcome(name, sent - due, time.monotonic() - sent, sleep_s, ok, cold)


async def _poll(conns: Conns, names: set[str], t0: float, every: float, live: Live,
                stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.monotonic()
        body = orjson.loads((await conns.request("GET", "/v1/status"))[2])
        at = (began + time.monotonic()) / 2 - t0
        now: dict[str, tuple[int, float]] = {}
        for f in body["functions"]:
            if f["name"] in names:
                n = f["instances"]
                now[f["name"]] = (n["starting"] + n["idle"] + n["busy"],
                                  n["idle"] * f["memory_mb"])
        live.samples.append((at, now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, began + every - time.monotonic()))


async def drive(port: int, fns: list[Fn], speed: float, poll_s: float, slice_s: float,
                live: Live, headers: dict[str, str] | None = None) -> None:
    events = sorted((t / speed, d / speed, f.name) for f in fns for t, d in f.calls)
    conns = Conns(port, headers)
    stop = asyncio.Event()
    t0 = time.monotonic() + 0.2
    poller = asyncio.create_task(_poll(conns, {f.name for f in fns}, t0, poll_s, live, stop))
    tasks = []
    for at, sleep_s, name in events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_call(conns, name, sleep_s, t0 + at)))
    live.outcomes = list(await asyncio.gather(*tasks))
    live.horizon_s = max(slice_s / speed, time.monotonic() - t0)
    await asyncio.sleep(max(0.0, t0 + live.horizon_s - time.monotonic()))
    stop.set()
    await poller
    conns.close()


def run_loop(coro: Any) -> None:
    """On uvloop when it is installed (as the server is): cheaper."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def probe_seq(fb: FaasboxServer) -> int:
    """Cold-start the probe (idle_ttl_s 0) and return its instance's sequence number."""
    request_id = fb.invoke(PROBE, {"sleep": 0}).headers["x-faasbox-request-id"]
    for _ in range(100):
        try:
            instance_id = fb.record(request_id)["instance_id"]
            return int(instance_id.rsplit("-", 2)[1])
        except RuntimeError:
            time.sleep(0.05)
    raise RuntimeError("the probe's invocation record did not appear")


def check_records(fb: FaasboxServer, fns: list[Fn], live: Live, since: float) -> None:
    """Compare the cold starts the responses reported with the invocation records."""
    for f in fns:
        sent = sum(1 for o in live.outcomes if o.function == f.name)
        heads = sum(1 for o in live.outcomes if o.function == f.name and o.cold)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while len(records) < sent and time.monotonic() < deadline:
            records = _records(fb, f.name, since)
            time.sleep(0.1)
        colds = sum(1 for r in records if r["cold_start"])
        if len(records) != sent or colds != heads:
            say(f"warning: {f.name}: {sent} calls / {heads} cold by headers, but "
                f"{len(records)} records / {colds} cold")


def _records(fb: FaasboxServer, name: str, since: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = fb.request("GET", "/v1/invocations",
                          params={"function": name, "since": since, "limit": 1000}
                          ).json()["invocations"]
        out += page
        if len(page) < 1000:
            return out
        since = page[-1]["started_at"]


def run_live(policy: str, fns: list[Fn], args: argparse.Namespace, code: Path) -> Live:
    c = args.speed
    live = Live()
    with FaasboxServer(env=platform_env(policy, c)) as fb:
        running = fb.request("GET", "/v1/status").json()["keepalive_policy"]
        if running != policy:
            raise RuntimeError(f"the server runs keep-alive policy {running!r}, not {policy!r}")
        ttl = idle_ttl_s(policy, c)
        for f in fns:
            fb.deploy(f.name, code, memory_mb=int(f.trace.memory_mb), idle_ttl_s=ttl,
                      max_instances=MAX_INSTANCES, timeout_s=30)
        fb.deploy(PROBE, code, memory_mb=128, idle_ttl_s=0, max_instances=1)
        seq0 = probe_seq(fb)
        since = time.time() - 1
        cpu0, host0, wall0 = cpu_seconds(fb.pid), host_busy_seconds(), time.monotonic()
        say(f"{policy}: replaying {sum(len(f.calls) for f in fns)} calls of {len(fns)} "
            f"functions over {args.minutes * 60 / c:.0f} s")
        mine0 = time.process_time()
        run_loop(drive(fb.port, fns, c, args.poll, args.minutes * 60.0, live, fb.auth_headers))
        wall = time.monotonic() - wall0
        live.client_cpu = (time.process_time() - mine0) / wall
        live.server_cpu = (cpu_seconds(fb.pid) - cpu0) / wall
        live.host_cpu = (host_busy_seconds() - host0) / wall
        live.instance_starts = probe_seq(fb) - seq0 - 1
        check_records(fb, fns, live, since)
    return live


# -- figures ----------------------------------------------------------------------------------
def cold_summary(per_fn: dict[str, tuple[int, int]]) -> dict[str, float]:
    """``per_fn``: function -> (invocations, cold starts)."""
    pcts = sorted(100.0 * c / n for n, c in per_fn.values() if n)
    calls = sum(n for n, _ in per_fn.values())
    colds = sum(c for _, c in per_fn.values())
    return {"invocations": calls, "cold_starts": colds,
            "overall": 100.0 * colds / calls if calls else 0.0,
            "p50": percentile(pcts, 50), "p75": percentile(pcts, 75),
            "p90": percentile(pcts, 90), "mean": statistics.fmean(pcts)}


def live_figures(live: Live, fns: list[Fn], speed: float) -> dict[str, Any]:
    per_fn = {f.name: (sum(1 for o in live.outcomes if o.function == f.name),
                       sum(1 for o in live.outcomes if o.function == f.name and o.cold))
              for f in fns}
    inst_s = idle_mb_s = 0.0
    samples = [s for s in live.samples if s[0] < live.horizon_s]
    for (t, now), (t_next, _) in zip(samples, [*samples[1:], (live.horizon_s, {})],
                                     strict=True):
        dt = max(0.0, t_next - max(t, 0.0))
        inst_s += dt * sum(n for n, _ in now.values())
        idle_mb_s += dt * sum(mb for _, mb in now.values())
    cold_over = [o.latency_s - o.sleep_s for o in live.outcomes if o.cold and o.ok]
    late = [o.late_s * 1000 for o in live.outcomes]
    return {
        **cold_summary(per_fn), "per_fn": per_fn,
        "instance_seconds": inst_s * speed, "idle_memory_mb_s": idle_mb_s * speed,
        "instance_starts": live.instance_starts,
        "cold_start_s": statistics.median(cold_over) * speed if cold_over else 0.0,
        "late_p50": percentile(late, 50), "late_p99": percentile(late, 99),
        "failed": sum(1 for o in live.outcomes if not o.ok),
        "server_cpu": live.server_cpu, "client_cpu": live.client_cpu,
        "host_cpu": live.host_cpu,
    }


def sim_figures(folder: Path, fns: list[Fn], policy: str, args: argparse.Namespace,
                cold_start_s: float) -> dict[str, Any]:
    """``simulate()`` on the slice folder, and per-function ``replay()`` for what it does not
    report (instance-seconds, each function's cold-start %)."""
    r = simulate(folder, policy, seed=args.seed, spread=args.spread, normalize=False,
                 cold_start_s=cold_start_s)
    pol = make_policy(policy)
    per_fn: dict[str, tuple[int, int]] = {}
    inst_s = 0.0
    traces = {ft.fn: ft for ft in load_trace(folder)}
    for f in fns:
        st = replay(traces[f.trace.fn], pol, args.seed, args.spread, cold_start_s)
        per_fn[f.name] = (st.invocations, st.cold_starts)
        inst_s += sum(st.unloads) - sum(st.loads)
    out = {**cold_summary(per_fn), "per_fn": per_fn, "instance_seconds": inst_s,
           "idle_memory_mb_s": r["wasted_memory_mb_s"], "instance_starts": r["instance_starts"]}
    if (r["invocations"], r["cold_starts"]) != (out["invocations"], out["cold_starts"]):
        say(f"warning: simulate() and replay() disagree: {r['cold_starts']} vs "
            f"{out['cold_starts']} cold starts")
    return out


def emit_all(fig: dict[str, Any], **params: Any) -> None:
    emit("replay.invocations", fig["invocations"], "count", **params)
    emit("replay.cold_starts", fig["cold_starts"], "count", **params)
    for q in ("overall", "p50", "p75", "p90", "mean"):
        emit(f"replay.cold_start_pct.{q}", fig[q], "%", **params)
    emit("replay.instance_seconds", fig["instance_seconds"], "s", **params)
    emit("replay.idle_memory_mb_s", fig["idle_memory_mb_s"], "MB*s", **params)
    emit("replay.instance_starts", fig["instance_starts"], "count", **params)


def emit_live_extra(fig: dict[str, Any], **params: Any) -> None:
    emit("replay.live.cold_start_s", fig["cold_start_s"], "s", **params)
    emit("replay.live.lateness.p50", fig["late_p50"], "ms", **params)
    emit("replay.live.lateness.p99", fig["late_p99"], "ms", **params)
    emit("replay.live.failed", fig["failed"], "count", **params)
    emit("replay.live.server_cpu", fig["server_cpu"], "cores", **params)
    emit("replay.live.client_cpu", fig["client_cpu"], "cores", **params)
    emit("replay.live.host_cpu", fig["host_cpu"], "cores", **params)


def report(policy: str, figs: dict[str, dict[str, Any]], fns: list[Fn]) -> None:
    """A side-by-side table on stderr."""
    say(f"== {policy}: " + " | ".join(
        f"{src}: cold {f['overall']:.1f}% (p50 {f['p50']:.1f}, mean {f['mean']:.1f}), "
        f"{f['instance_seconds']:.0f} inst*s, {f['instance_starts']} starts"
        for src, f in figs.items()))
    for f in fns:
        cells = []
        for src, fig in figs.items():
            n, c = fig["per_fn"][f.name]
            cells.append(f"{src} {c:3d}/{n:<4d}")
        say(f"  {f.name} {int(f.trace.memory_mb):5d} MB  " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace folder (dev)")
    ap.add_argument("--policies", nargs="+", default=["fixed", "faasbox"],
                    choices=["fixed", "hybrid", "faasbox"])
    ap.add_argument("--functions", type=int, default=20)
    ap.add_argument("--minutes", type=int, default=60, help="first N trace minutes")
    ap.add_argument("--speed", type=float, default=60.0, help="trace seconds per real second")
    ap.add_argument("--max-invocations", type=int, default=3000)
    ap.add_argument("--min-calls", type=int, default=10)
    ap.add_argument("--max-calls", type=int, default=1000)
    ap.add_argument("--max-peak", type=int, default=16, help="most calls of one function "
                    "running at once (simulator's durations and cold start)")
    ap.add_argument("--duration-cap", type=float, default=60.0, metavar="S",
                    help="cap on a call's duration, trace seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", default="uniform", choices=("uniform", "random"))
    ap.add_argument("--poll", type=float, default=0.25, help="GET /v1/status every S (real)")
    ap.add_argument("--sim-only", action="store_true", help="print the simulator's figures")
    args = ap.parse_args(argv)
    if not (args.trace / "inv.csv").is_file():
        say(f"no trace at {args.trace}")
        return 1
    fns = pick(args)
    calls = sum(len(f.calls) for f in fns)
    say(f"slice: {len(fns)} functions, {calls} calls in {args.minutes} min: "
        + ", ".join(f"{f.name} {len(f.calls)}" for f in fns))
    params = {"trace": args.trace.name, "functions": len(fns), "minutes": args.minutes,
              "speed": args.speed, "seed": args.seed}
    if args.spread != "uniform":
        params["spread"] = args.spread
    with tempfile.TemporaryDirectory(prefix="faasbox-replay-") as tmp:
        folder, code = Path(tmp) / "trace", Path(tmp) / "code"
        folder.mkdir()
        code.mkdir()
        (code / "main.py").write_text(HANDLER)
        write_slice(args.trace, folder, fns, args.minutes)
        for policy in args.policies:
            figs = {"sim": sim_figures(folder, fns, policy, args, SIM_COLD_START_S)}
            if not args.sim_only:
                figs["live"] = live_figures(run_live(policy, fns, args, code), fns, args.speed)
                emit_live_extra(figs["live"], policy=policy, **params)
                figs["sim_matched"] = sim_figures(folder, fns, policy, args,
                                                  figs["live"]["cold_start_s"])
            for source, fig in figs.items():
                emit_all(fig, source=source, policy=policy, **params)
            report(policy, figs, fns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
