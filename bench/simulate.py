"""Replay the Azure Functions 2019 dev trace through every keep-alive policy.

Prints one JSON line per figure (``common.emit``), e.g.::

    {"name": "sim.cold_start_pct.p50", "value": 10.4, "unit": "%",
     "params": {"policy": "faasbox", "trace": "dev", "seed": 0}}

The figures are per-function cold-start percentages summarised across functions (p50, p75,
p90, mean), wasted memory (idle loaded MB·s) absolute and normalised to the ``fixed`` 600 s
policy, instance starts, the peak of loaded instances, and the simulator's own wall time (the
policy's replay, and the whole call with trace loading and the baseline replay).
Only ``dev/`` is for tuning; pass ``--trace .../eval`` to judge once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import emit, say
from faasbox.autoscaler import POLICIES
from faasbox.simulator import DEV_TRACE, simulate

DEFAULT_TRACE = DEV_TRACE  # the dev sample shipped in src/faasbox/data/traces


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace folder")
    ap.add_argument("--policies", nargs="+", default=["fixed", "hybrid", "faasbox"],
                    choices=sorted(POLICIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", default="uniform", choices=("uniform", "random"))
    args = ap.parse_args(argv)
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
        emit("sim.peak_instances", r["peak_instances"], "count", **params)
        emit("sim.sim_wall_s", r["sim_wall_s"], "s", **params)
        emit("sim.total_wall_s", r["total_wall_s"], "s", **params)
        say(f"{policy}: cold p50/p75/p90/mean {r['cold_start_pct']['p50']:.1f}/"
            f"{r['cold_start_pct']['p75']:.1f}/{r['cold_start_pct']['p90']:.1f}/"
            f"{r['cold_start_pct']['mean']:.1f} %, memory x{r['normalized_memory']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
