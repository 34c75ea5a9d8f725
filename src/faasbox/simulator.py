"""Replay an Azure Functions 2019 trace through a keep-alive policy on virtual time.

The model (see docs/elasticity.md):

* each minute's invocation count is spread within the minute (``uniform``: evenly, at
  ``(i + 0.5) / n`` of the minute; ``random``: seeded uniform draws); each invocation's
  duration is drawn (seeded) by interpolating the function's run.csv percentiles; an
  instance's size is its app's AverageAllocatedMb (128 MB when missing);
* one instance serves one invocation at a time; an arrival takes the idle loaded instance
  that finished its last execution most recently (so surplus instances age out), or
  cold-starts one, which adds ``cold_start_s`` to its latency and keeps the instance busy
  that long (busy, not idle); a policy with ``ahead`` starts more instances beside a cold
  start, ready ``cold_start_s`` later (a call that takes one still starting waits for the
  rest of its start and counts as a cold start);
* when an instance goes idle the policy's :class:`~faasbox.autoscaler.base.Windows` decide
  when it is released and re-loaded; an arrival cancels a pending pre-warm by cold-starting
  that slot; a pre-warmed instance is ready at its pre-warm time (its start is not billed);
* wasted memory is the idle-and-loaded time of every instance times its MB, up to the end of
  the trace (or the last execution's end, whichever is later).

Functions do not interact (no shared capacity), and every policy keeps its state per
function, so each function is replayed on its own event heap; the global peak of loaded
instances is computed afterwards from every function's load/unload times.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faasbox.autoscaler.keepalive import DEFAULT_POLICY, POLICIES, KeepAlivePolicy, make_policy

__all__ = [
    "DEV_TRACE",
    "FunctionTrace",
    "ReplayStats",
    "load_trace",
    "replay",
    "simulate",
]

#: The dev sample of the Azure Functions 2019 trace shipped with faasbox (100 functions, one
#: day; CC-BY 4.0, see its README.md): what ``faasbox simulate`` replays without ``--trace``.
DEV_TRACE = Path(__file__).resolve().parent / "data" / "traces" / "azure2019" / "dev"

DEFAULT_MEMORY_MB = 128.0
DEFAULT_DURATION_MS = 1000.0
DEFAULT_COLD_START_S = 0.5
BASELINE_POLICY = "fixed"
BASELINE_TTL_S = 600.0
_PERCENTILES = (0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 100.0)
_PCT_COLUMNS = tuple(f"percentile_Average_{int(p)}" for p in _PERCENTILES)


@dataclass(frozen=True)
class FunctionTrace:
    """One function of a trace: per-minute counts, duration percentiles (ms), memory (MB)."""

    fn: str
    app: str
    counts: tuple[int, ...]
    duration_ms: tuple[float, ...]
    memory_mb: float

    def arrivals(self, spread: str, rng: random.Random) -> list[float]:
        """Arrival times in seconds from the start of the trace, sorted."""
        out: list[float] = []
        for minute, n in enumerate(self.counts):
            if n <= 0:
                continue
            base = 60.0 * minute
            if spread == "uniform":
                step = 60.0 / n
                out.extend(base + step * (i + 0.5) for i in range(n))
            else:
                out.extend(sorted(base + 60.0 * rng.random() for _ in range(n)))
        return out

    def draw_duration_s(self, rng: random.Random) -> float:
        """A duration drawn from the piecewise-linear inverse CDF of the percentiles."""
        u = 100.0 * rng.random()
        i = min(bisect.bisect_right(_PERCENTILES, u), len(_PERCENTILES) - 1)
        p0, p1 = _PERCENTILES[i - 1], _PERCENTILES[i]
        d0, d1 = self.duration_ms[i - 1], self.duration_ms[i]
        return (d0 + (d1 - d0) * (u - p0) / (p1 - p0)) / 1000.0


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_trace(trace_dir: str | Path, limit: int | None = None) -> list[FunctionTrace]:
    """Read inv.csv, run.csv and mem.csv of a trace folder (first ``limit`` functions)."""
    root = Path(trace_dir)
    runs = {r["HashFunction"]: r for r in _read_csv(root / "run.csv")}
    mem_csv = root / "mem.csv"
    mems = {r["HashApp"]: r for r in _read_csv(mem_csv)} if mem_csv.exists() else {}
    out: list[FunctionTrace] = []
    with (root / "inv.csv").open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        first = header.index("HashOwner") + 1
        for row in reader:
            if limit is not None and len(out) >= limit:
                break
            fn, app = row[0], row[1]
            run = runs.get(fn)
            pcts = (
                tuple(float(run[c]) for c in _PCT_COLUMNS)
                if run is not None
                else (DEFAULT_DURATION_MS,) * len(_PERCENTILES)
            )
            mem = mems.get(app)
            mb = float(mem["AverageAllocatedMb"]) if mem is not None else DEFAULT_MEMORY_MB
            counts = tuple(int(x) for x in row[first:])
            out.append(FunctionTrace(fn, app, counts, pcts, mb))
    return out


@dataclass
class ReplayStats:
    """What the replay of one function produced."""

    invocations: int = 0
    cold_starts: int = 0
    instance_starts: int = 0
    prewarm_starts: int = 0
    ahead_starts: int = 0
    wasted_mb_s: float = 0.0
    loads: list[float] = field(default_factory=list)
    unloads: list[float] = field(default_factory=list)

    @property
    def cold_pct(self) -> float:
        return 100.0 * self.cold_starts / self.invocations if self.invocations else 0.0


_END, _RELOAD, _UNLOAD, _READY = 0, 1, 2, 3
_BUSY, _IDLE, _PENDING, _GONE = 0, 1, 2, 3


class _Instance:
    __slots__ = ("gen", "idle_since", "keepalive_s", "last_end", "ready_at", "reload_keep_s",
                 "reload_s", "state")

    def __init__(self) -> None:
        self.gen = 0
        self.last_end = 0.0
        self.state = _BUSY
        self.idle_since = 0.0
        self.keepalive_s = 0.0
        self.reload_s = 0.0  # after a hold: load again this long after the release
        self.reload_keep_s = 0.0
        self.ready_at = 0.0  # started ahead: loaded and starting until then


class _Replay:
    """The event loop of one function: arrivals in order, plus a heap of instance events."""

    def __init__(self, ft: FunctionTrace, policy: KeepAlivePolicy, cold_start_s: float) -> None:
        self.fn = ft.fn
        self.mb = ft.memory_mb
        self.policy = policy
        self.cold_start_s = cold_start_s
        self.stats = ReplayStats()
        self.heap: list[tuple[float, int, int, _Instance, int]] = []
        self.seq = 0
        # idle loaded instances, most recently used first: (-last_end, seq, instance, gen);
        # entries whose instance changed since (gen) are skipped when popped
        self.idle: list[tuple[float, int, _Instance, int]] = []
        self.pending: list[_Instance] = []  # released, waiting for their pre-warm
        self.ahead = getattr(policy, "ahead", None)
        self.in_flight = 0  # calls running or starting

    def push(self, t: float, kind: int, inst: _Instance) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, inst, inst.gen))

    def run_until(self, t: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= t:
            te, _, kind, inst, gen = heapq.heappop(heap)
            if gen != inst.gen:
                continue  # cancelled by a later arrival
            if kind == _END:
                self.in_flight -= 1
                self.on_idle(inst, te)
            elif kind == _RELOAD and inst.state == _PENDING:
                self.load_idle(inst, te, prewarm=True)
            elif kind == _UNLOAD and inst.state == _IDLE:
                self.release(inst, te)
            elif kind == _READY and inst.state == _PENDING:
                inst.ready_at = 0.0
                self.load_idle(inst, te, prewarm=False)

    def arrive(self, t: float, duration_s: float) -> None:
        self.run_until(t)
        self.policy.on_invocation(self.fn, t)
        st = self.stats
        st.invocations += 1
        self.in_flight += 1
        inst = self.pop_idle()
        if inst is not None:
            st.wasted_mb_s += (t - inst.idle_since) * self.mb
            busy_s = duration_s
        else:
            inst = _pop_pending(self.pending) or _Instance()
            st.cold_starts += 1
            if inst.ready_at > t:  # started ahead and still starting: wait for the rest
                busy_s = inst.ready_at - t + duration_s
                inst.ready_at = 0.0
            else:
                st.instance_starts += 1
                st.loads.append(t)
                busy_s = self.cold_start_s + duration_s
            if self.ahead is not None:
                self.start_ahead(t, self.ahead(self.fn, t, self.in_flight))
        inst.state = _BUSY
        inst.gen += 1
        self.push(t + busy_s, _END, inst)

    def start_ahead(self, t: float, keeps: tuple[float, ...]) -> None:
        """Start an instance for each keep-alive in ``keeps``, ready ``cold_start_s`` later."""
        st = self.stats
        for keep in keeps:
            inst = _Instance()
            inst.state = _PENDING
            inst.last_end = t
            inst.keepalive_s = keep
            inst.ready_at = t + self.cold_start_s
            self.pending.append(inst)
            self.push(inst.ready_at, _READY, inst)
            st.instance_starts += 1
            st.ahead_starts += 1
            st.loads.append(t)

    def pop_idle(self) -> _Instance | None:
        idle = self.idle
        while idle:
            _, _, inst, gen = heapq.heappop(idle)
            if inst.gen == gen and inst.state == _IDLE:
                return inst
        return None

    def on_idle(self, inst: _Instance, t: float) -> None:
        inst.last_end = t
        inst.reload_s = 0.0
        w = self.policy.windows(self.fn, t)
        if w.prewarm_s > 0 and w.hold_s > 0:
            # held for the rest of a burst, then released until the pre-warm
            inst.keepalive_s = min(w.hold_s, w.prewarm_s)
            inst.reload_s = w.prewarm_s - inst.keepalive_s
            inst.reload_keep_s = w.keepalive_s
            self.load_idle(inst, t, prewarm=False)
            return
        if w.prewarm_s > 0:
            self.stats.unloads.append(t)
            self.unload(inst, t, w.prewarm_s, w.keepalive_s)
            return
        inst.keepalive_s = w.keepalive_s
        self.load_idle(inst, t, prewarm=False)

    def unload(self, inst: _Instance, t: float, reload_s: float, keep_s: float) -> None:
        """``inst`` is released at ``t`` and loaded again ``reload_s`` later (inf: never)."""
        inst.state = _GONE
        inst.reload_s = 0.0
        if math.isfinite(reload_s):
            inst.state = _PENDING
            inst.keepalive_s = keep_s
            self.pending.append(inst)
            self.push(t + reload_s, _RELOAD, inst)

    def load_idle(self, inst: _Instance, t: float, prewarm: bool) -> None:
        if prewarm:
            self.stats.instance_starts += 1
            self.stats.prewarm_starts += 1
            self.stats.loads.append(t)
        inst.state = _IDLE
        inst.idle_since = t
        if inst.keepalive_s <= 0:
            self.release(inst, t)
            return
        self.seq += 1
        heapq.heappush(self.idle, (-inst.last_end, self.seq, inst, inst.gen))
        if math.isfinite(inst.keepalive_s):
            self.push(t + inst.keepalive_s, _UNLOAD, inst)

    def release(self, inst: _Instance, t: float) -> None:
        self.stats.wasted_mb_s += (t - inst.idle_since) * self.mb
        self.stats.unloads.append(t)
        if inst.reload_s > 0:
            self.unload(inst, t, inst.reload_s, inst.reload_keep_s)
        else:
            inst.state = _GONE

    def finish(self, horizon: float) -> ReplayStats:
        """Run the events up to ``horizon``; count idle instances as wasted until then."""
        self.run_until(horizon)
        for _, _, inst, gen in self.idle:
            if inst.gen == gen and inst.state == _IDLE:
                self.release(inst, horizon)
        return self.stats


def _pop_pending(stack: list[_Instance]) -> _Instance | None:
    while stack:
        inst = stack.pop()
        if inst.state == _PENDING:
            return inst
    return None


def replay(
    ft: FunctionTrace,
    policy: KeepAlivePolicy,
    seed: int = 0,
    spread: str = "uniform",
    cold_start_s: float = DEFAULT_COLD_START_S,
) -> ReplayStats:
    """Replay one function through ``policy``; deterministic for (function, seed, spread).

    A policy with a ``set_memory(fn, mb)`` method is first told the function's instance size.
    """
    rng = random.Random(f"{seed}:{ft.fn}")
    set_memory = getattr(policy, "set_memory", None)
    if set_memory is not None:
        set_memory(ft.fn, ft.memory_mb)
    arrivals = ft.arrivals(spread, rng)
    sim = _Replay(ft, policy, cold_start_s)
    last_end = 0.0
    for t in arrivals:
        d = ft.draw_duration_s(rng)
        sim.arrive(t, d)
        last_end = max(last_end, t + d + cold_start_s)
    return sim.finish(max(60.0 * len(ft.counts), last_end))


def _percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linearly interpolated percentile (0-100) of sorted values."""
    if not sorted_vals:
        return 0.0
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _peak(loads: list[float], unloads: list[float]) -> int:
    """Most instances loaded at once; an unload at the same instant as a load comes first."""
    loads = sorted(loads)
    unloads = sorted(unloads)
    cur = peak = j = 0
    for t in loads:
        while j < len(unloads) and unloads[j] <= t:
            j += 1
            cur -= 1
        cur += 1
        peak = max(peak, cur)
    return peak


def _run(
    traces: list[FunctionTrace],
    policy: KeepAlivePolicy,
    seed: int,
    spread: str,
    cold_start_s: float,
) -> dict[str, Any]:
    started = time.perf_counter()
    per_fn = [replay(ft, policy, seed, spread, cold_start_s) for ft in traces]
    pcts = sorted(s.cold_pct for s in per_fn if s.invocations)
    loads = [t for s in per_fn for t in s.loads]
    unloads = [t for s in per_fn for t in s.unloads]
    invocations = sum(s.invocations for s in per_fn)
    cold = sum(s.cold_starts for s in per_fn)
    return {
        "functions": len(traces),
        "invocations": invocations,
        "cold_starts": cold,
        "cold_start_pct": {
            "p50": _percentile(pcts, 50),
            "p75": _percentile(pcts, 75),
            "p90": _percentile(pcts, 90),
            "mean": sum(pcts) / len(pcts) if pcts else 0.0,
        },
        "cold_start_pct_overall": 100.0 * cold / invocations if invocations else 0.0,
        "wasted_memory_mb_s": sum(s.wasted_mb_s for s in per_fn),
        "instance_starts": sum(s.instance_starts for s in per_fn),
        "prewarm_starts": sum(s.prewarm_starts for s in per_fn),
        "ahead_starts": sum(s.ahead_starts for s in per_fn),
        "peak_instances": _peak(loads, unloads),
        "sim_wall_s": time.perf_counter() - started,
    }


def simulate(
    trace_dir: str | Path,
    policy: str = DEFAULT_POLICY,
    seed: int = 0,
    spread: str = "uniform",
    limit: int | None = None,
    normalize: bool = True,
    cold_start_s: float = DEFAULT_COLD_START_S,
    **policy_args: Any,
) -> dict[str, Any]:
    """Replay a trace folder through the policy registered as ``policy``.

    Returns a JSON-serialisable dict (see docs/elasticity.md). With ``normalize``, the
    ``fixed`` 600 s policy is replayed on the same trace and ``normalized_memory`` is the
    ratio of wasted memory to it. ``sim_wall_s`` is the wall time of the policy's replay,
    ``total_wall_s`` that of the whole call (trace loading and baseline included). Identical
    inputs give identical results except these wall times.
    """
    if spread not in ("uniform", "random"):
        raise ValueError("spread must be 'uniform' or 'random'")
    if cold_start_s < 0:
        raise ValueError("cold_start_s must be >= 0")
    started = time.perf_counter()
    traces = load_trace(trace_dir, limit)
    result: dict[str, Any] = {
        "policy": policy,
        "policy_args": {k: _json_safe(v) for k, v in policy_args.items()},
        "trace": str(trace_dir),
        "seed": seed,
        "spread": spread,
        "cold_start_s": cold_start_s,
    }
    result.update(_run(traces, make_policy(policy, **policy_args), seed, spread, cold_start_s))
    if normalize:
        if policy == BASELINE_POLICY and policy_args in ({}, {"ttl_s": BASELINE_TTL_S}):
            base = result  # the run above is the baseline
        else:
            baseline = make_policy(BASELINE_POLICY, ttl_s=BASELINE_TTL_S)
            base = _run(traces, baseline, seed, spread, cold_start_s)
        waste = base["wasted_memory_mb_s"]
        result["normalized_memory"] = result["wasted_memory_mb_s"] / waste if waste else 0.0
        result["baseline"] = {
            "policy": BASELINE_POLICY,
            "ttl_s": BASELINE_TTL_S,
            "wasted_memory_mb_s": waste,
            "cold_start_pct": base["cold_start_pct"],
        }
    result["total_wall_s"] = time.perf_counter() - started
    return result


def _json_safe(value: Any) -> Any:
    """Non-finite floats as strings ("inf"), since JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _policy_arg(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m faasbox.simulator",
        description=(__doc__ or "").splitlines()[0] + " Prints the result as JSON.",
    )
    parser.add_argument("--trace", default=str(DEV_TRACE),
                        help="trace folder (inv.csv, run.csv, mem.csv); default: the shipped"
                             " dev sample")
    parser.add_argument("--policy", default=DEFAULT_POLICY, choices=sorted(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", default="uniform", choices=("uniform", "random"))
    parser.add_argument("--limit", type=int, default=None, help="first N functions only")
    parser.add_argument("--cold-start", type=float, default=DEFAULT_COLD_START_S, metavar="S")
    parser.add_argument("--no-normalize", action="store_true")
    parser.add_argument(
        "--arg", type=_policy_arg, action="append", default=[], metavar="KEY=VALUE",
        help="a numeric policy parameter, e.g. ttl_s=300 (repeatable)",
    )
    ns = parser.parse_args(argv)
    result = simulate(
        ns.trace, ns.policy, seed=ns.seed, spread=ns.spread, limit=ns.limit,
        normalize=not ns.no_normalize, cold_start_s=ns.cold_start, **dict(ns.arg),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
