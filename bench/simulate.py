"""Replay the Azure Functions 2019 dev trace through every keep-alive policy.

Prints one JSON line per figure (``common.emit``), e.g.::

    {"name": "sim.cold_start_pct.p50", "value": 10.4, "unit": "%",
     "params": {"policy": "faasbox", "trace": "dev", "seed": 0}}

The figures are per-function cold-start percentages summarised across functions (p50, p75,
p90, mean), wasted memory (idle loaded MB·s) absolute and normalised to the ``fixed`` 600 s
policy, instance starts (and of them those started ahead beside a cold start), the peak of
loaded instances, and the simulator's own wall time (the policy's replay, and the whole call
with trace loading and the baseline replay).
Only ``dev/`` is for tuning; pass ``--trace .../eval`` to judge once.

``--folds K`` adds cross-validated figures: the functions are split into K folds (function
``i`` in fold ``i % K``; functions are replayed independently, so one replay per policy serves
every fold). With ``--grid KEY=V1,V2,...`` (repeatable) the ``faasbox`` parameters are chosen
on the other K - 1 folds (least ``max(p75 ratio, memory ratio)`` to ``fixed``, among the
settings whose overall cold-start rate is at most ``hybrid``'s there) and judged on the held-out
fold; ``sim.cv.*`` lines give each held-out fold and ``fold="all"`` the 100 functions each
replayed with the setting chosen without its fold. Without ``--grid`` the default parameters
are judged on each fold.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import emit, percentile, say
from faasbox.autoscaler import POLICIES, make_policy
from faasbox.simulator import DEV_TRACE, ReplayStats, load_trace, replay, simulate

DEFAULT_TRACE = DEV_TRACE  # the dev sample shipped in src/faasbox/data/traces


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace folder")
    ap.add_argument("--policies", nargs="+", default=["fixed", "hybrid", "faasbox"],
                    choices=sorted(POLICIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", default="uniform", choices=("uniform", "random"))
    ap.add_argument("--folds", type=int, default=0, metavar="K",
                    help="also print cross-validated figures over K folds of the functions")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="with --folds: faasbox parameter values to choose from per fold")
    args = ap.parse_args(argv)
    if args.folds:
        return cross_validate(args.trace, args.folds, _grid(args.grid), args.seed, args.spread)
    if not (args.trace / "inv.csv").is_file():
        say(f"no trace at {args.trace}")
        return 1
    for policy in args.policies:
        say(f"simulating {policy} on {args.trace}")
        r = simulate(args.trace, policy, seed=args.seed, spread=args.spread)
        params = {"policy": policy, "trace": args.trace.name, "seed": args.seed}
        if args.spread != "uniform":
            params["spread"] = args.spread
        for q in ("p50", "p75", "p90", "mean"):
            emit(f"sim.cold_start_pct.{q}", r["cold_start_pct"][q], "%", **params)
        emit("sim.cold_start_pct.overall", r["cold_start_pct_overall"], "%", **params)
        emit("sim.wasted_memory_mb_s", r["wasted_memory_mb_s"], "MB*s", **params)
        emit("sim.normalized_memory", r["normalized_memory"], "x", **params)
        emit("sim.instance_starts", r["instance_starts"], "count", **params)
        emit("sim.ahead_starts", r["ahead_starts"], "count", **params)
        emit("sim.peak_instances", r["peak_instances"], "count", **params)
        emit("sim.sim_wall_s", r["sim_wall_s"], "s", **params)
        emit("sim.total_wall_s", r["total_wall_s"], "s", **params)
        say(f"{policy}: cold p50/p75/p90/mean {r['cold_start_pct']['p50']:.1f}/"
            f"{r['cold_start_pct']['p75']:.1f}/{r['cold_start_pct']['p90']:.1f}/"
            f"{r['cold_start_pct']['mean']:.1f} %, memory x{r['normalized_memory']:.3f}")
    return 0


Figures = tuple[float, float, float]  # p75 ratio, memory ratio, overall cold-start %


def _grid(items: Sequence[str]) -> list[dict[str, float]]:
    keys, values = [], []
    for item in items:
        key, _, vals = item.partition("=")
        keys.append(key)
        values.append([float(v) for v in vals.split(",")])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _figures(stats: Sequence[ReplayStats], fixed: Sequence[ReplayStats],
             idx: Sequence[int]) -> Figures:
    def p75(runs: Sequence[ReplayStats]) -> float:
        return percentile(sorted(runs[i].cold_pct for i in idx if runs[i].invocations), 75)

    waste = sum(fixed[i].wasted_mb_s for i in idx)
    calls = sum(stats[i].invocations for i in idx)
    base = p75(fixed)
    return (p75(stats) / base if base else 0.0,
            sum(stats[i].wasted_mb_s for i in idx) / waste if waste else 0.0,
            100.0 * sum(stats[i].cold_starts for i in idx) / calls if calls else 0.0)


def cross_validate(trace: Path, k: int, grid: list[dict[str, float]], seed: int,
                   spread: str) -> int:
    """K-fold figures of ``fixed``, ``hybrid`` and ``faasbox`` (see the module doc)."""
    traces = load_trace(trace)

    def run(policy: str, **params: Any) -> list[ReplayStats]:
        say(f"replaying {policy} {params or ''} on {len(traces)} functions")
        p = make_policy(policy, **params)
        return [replay(ft, p, seed, spread) for ft in traces]

    fixed, hybrid = run("fixed"), run("hybrid")
    settings = grid or [{}]
    runs = [run("faasbox", **g) for g in settings]
    folds = [[i for i in range(len(traces)) if i % k == j] for j in range(k)]
    chosen: list[ReplayStats] = list(fixed)

    def score(stats: Sequence[ReplayStats], idx: Sequence[int]) -> float:
        r_p75, r_mem, overall = _figures(stats, fixed, idx)
        return max(r_p75, r_mem) + (100.0 if overall > _figures(hybrid, fixed, idx)[2] else 0)

    params: dict[str, Any] = {"trace": trace.name, "seed": seed, "folds": k}
    if spread != "uniform":
        params["spread"] = spread
    for j, held_out in enumerate(folds):
        train = [i for f in folds if f is not held_out for i in f]
        best = min(range(len(runs)), key=lambda c: score(runs[c], train))
        for i in held_out:
            chosen[i] = runs[best][i]
        _emit_cv(_figures(runs[best], fixed, held_out), _figures(hybrid, fixed, held_out),
                 fold=j, **params, **{f"chosen.{key}": v for key, v in settings[best].items()})
    everything = range(len(traces))
    _emit_cv(_figures(chosen, fixed, everything), _figures(hybrid, fixed, everything),
             fold="all", **params)
    return 0


def _emit_cv(faasbox: Figures, hybrid: Figures, **params: Any) -> None:
    for policy, (r_p75, r_mem, overall) in (("faasbox", faasbox), ("hybrid", hybrid)):
        emit("sim.cv.ratio_p75", r_p75, "x", policy=policy, **params)
        emit("sim.cv.normalized_memory", r_mem, "x", policy=policy, **params)
        emit("sim.cv.cold_start_pct.overall", overall, "%", policy=policy, **params)
    say(f"fold {params['fold']}: faasbox p75 x{faasbox[0]:.3f} memory x{faasbox[1]:.3f} "
        f"overall {faasbox[2]:.2f} % | hybrid p75 x{hybrid[0]:.3f} memory x{hybrid[1]:.3f} "
        f"overall {hybrid[2]:.2f} %")


if __name__ == "__main__":
    raise SystemExit(main())
