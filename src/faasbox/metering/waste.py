"""The waste report (pure): what each function pays for and does not use, with a
recommendation and its expected saving per month at the current usage.

Memory-time is priced at the pay-per-use GB-s rate of the price book: on a self-hosted node
that is what a GB held for a second is worth (docs/cost.md). A period's figures are scaled to
a 730-hour month.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from faasbox.metering.cost import MONTH_S, PriceBook
from faasbox.metering.usage import Usage

MIN_MEMORY_MB = 128
HEADROOM = 1.2  # a right size leaves 20 % above the p99 peak RSS
CPU_UNDERUSE = 0.2  # CPU seconds per busy second below which an instance mostly waits
COLD_SHARE = 0.05  # cold starts above this share of calls are worth a floor


@dataclass(frozen=True)
class FunctionFacts:
    """What the report needs of a function besides its usage: its latest spec."""

    name: str  # as the tenant names it
    memory_mb: int
    min_instances: int = 0
    concurrency: int = 1
    idle_ttl_s: float | None = None


@dataclass
class Finding:
    function: str
    kind: str  # memory, cpu, keep_alive, min_instances, cold_start
    detail: str
    recommendation: str
    saving_per_month: float
    data: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {"function": self.function, "kind": self.kind, "detail": self.detail,
                "recommendation": self.recommendation,
                "saving_per_month": round(self.saving_per_month, 6), **self.data}


def right_size(p99_rss_mb: float, step_mb: int = 64) -> int:
    """``p99 x 1.2`` rounded up to a multiple of ``step_mb``, at least 128 MB."""
    return max(MIN_MEMORY_MB, math.ceil(p99_rss_mb * HEADROOM / step_mb) * step_mb)


def report(facts: FunctionFacts, usage: Usage, period_s: float, book: PriceBook) -> list[Finding]:
    """The findings of one function over a period of ``period_s`` seconds."""
    month = MONTH_S / period_s if period_s > 0 else 0.0
    per_gb_s = book.gb_s
    out: list[Finding] = []
    name, mem = facts.name, facts.memory_mb

    p99 = usage.percentile("rss", 0.99)
    if p99 is not None and mem > 0:
        suggested = right_size(p99)
        if suggested < mem:
            saved_gb_s = usage.gb_s * (1 - suggested / mem)
            out.append(Finding(
                name, "memory",
                f"memory_mb is {mem}; the p99 peak RSS of {usage.invocations} calls is"
                f" {p99:g} MB",
                f"set memory_mb: {suggested} (p99 + 20 %, in steps of 64 MB); CPU share"
                " follows memory, so check its duration after the change",
                saved_gb_s * per_gb_s * month,
                {"memory_mb": mem, "p99_peak_rss_mb": p99, "suggested_memory_mb": suggested}))

    if usage.busy_s > 0 and usage.cpu_s >= 0 and facts.concurrency == 1:
        ratio = usage.cpu_s / usage.busy_s
        if ratio < CPU_UNDERUSE and usage.loaded_mb_s > 0:
            k = max(2, min(8, math.floor(0.5 / max(ratio, 1e-6))))
            saved = usage.loaded_mb_s / 1024 * (1 - 1 / k) * per_gb_s * month
            out.append(Finding(
                name, "cpu",
                f"its instances used {ratio:.0%} of a CPU while busy ({usage.cpu_s:.2f} CPU-s"
                f" in {usage.busy_s:.2f} busy s): calls mostly wait",
                f"set concurrency: {k} so that one instance serves several waiting calls",
                saved, {"cpu_per_busy_s": round(ratio, 4), "suggested_concurrency": k}))

    keep = usage.keepalive_idle_mb_s / 1024
    if keep > 0:
        ttl = "" if facts.idle_ttl_s is None else f" (idle_ttl_s is {facts.idle_ttl_s:g})"
        out.append(Finding(
            name, "keep_alive",
            f"instances sat idle in keep-alive for {keep:.3f} GB-s of memory-time",
            f"lower idle_ttl_s{ttl} or use a keep-alive policy that learns the arrival"
            " pattern; each instance released early may cost a cold start",
            keep * per_gb_s * month, {"idle_gb_s": round(keep, 6)}))

    held = usage.held_mb_s / 1024
    if held > 0:
        out.append(Finding(
            name, "min_instances",
            f"instances held by min_instances ({facts.min_instances}) or a provisioned window"
            f" sat unused for {held:.3f} GB-s",
            "lower min_instances, or narrow the provisioned windows to the hours with calls",
            held * per_gb_s * month, {"held_gb_s": round(held, 6),
                                      "min_instances": facts.min_instances}))

    if usage.cold_starts:
        init_gb_s = usage.cold_start_ms / 1000 * mem / 1024
        avg = usage.cold_start_ms / usage.cold_starts
        share = usage.cold_starts / max(1, usage.invocations)
        advice = ("set min_instances: 1 or a provisioned window for the busy hours, and trim"
                  " what the module imports at load" if share > COLD_SHARE
                  else "trim what the module imports at load")
        out.append(Finding(
            name, "cold_start",
            f"{usage.cold_starts} cold starts ({share:.0%} of calls) paid {avg:.0f} ms each",
            advice, init_gb_s * per_gb_s * month,
            {"cold_starts": usage.cold_starts, "cold_start_ms": round(usage.cold_start_ms, 3),
             "cold_starts_per_month": round(usage.cold_starts * month, 1)}))
    return sorted(out, key=lambda f: -f.saving_per_month)
