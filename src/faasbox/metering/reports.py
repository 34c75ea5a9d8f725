"""Usage, cost and waste of a tenant over a period, as the API, the CLI and the dashboard show
them (the rollups read back and handed to the pure ``cost`` and ``waste`` code)."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any

from faasbox import errors
from faasbox.clock import Clock
from faasbox.metering.cost import HourUsage, PriceBook, models, sum_hours
from faasbox.metering.rollup import Meter
from faasbox.metering.usage import DAY_S, HOUR_S, Usage
from faasbox.metering.waste import Finding, FunctionFacts, report
from faasbox.registry import Registry
from faasbox.tenancy.names import display, qualify

STEPS = {"hour": HOUR_S, "day": DAY_S}
MAX_TIME = 1e11  # epoch seconds: the year 5138


def parse_time(value: str | None, default: float) -> float:
    """Epoch seconds, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return default
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(t) or not 0 <= t < MAX_TIME:
            raise errors.InvalidRequest(f"{value!r} is not a time between 1970 and 5138")
        return t
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidRequest(
            f"{value!r} is neither epoch seconds nor an ISO 8601 date or time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp())


def month_start(now: float) -> float:
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC).timestamp()


class Reports:
    def __init__(self, meter: Meter, registry: Registry, book: PriceBook, clock: Clock) -> None:
        self.meter = meter
        self.registry = registry
        self.book = book
        self.clock = clock

    def period(self, start: str | None, end: str | None) -> tuple[float, float]:
        """``[from, to)``: by default from the start of this month (UTC) to now."""
        now = self.clock.now()
        lo = parse_time(start, month_start(now))
        hi = parse_time(end, now)
        if hi <= lo:
            raise errors.InvalidRequest("'to' must come after 'from'")
        return lo, hi

    async def _hours(self, tenant: str, lo: float, hi: float,
                     function: str | None = None) -> dict[tuple[str, int], Usage]:
        await self.meter.flush()  # what has returned is counted
        return await self.meter.usage.hours(lo - HOUR_S + 1, hi, tenant=tenant,
                                            function=function)

    async def check_function(self, tenant: str, name: str) -> str:
        function = qualify(tenant, name)
        if await self.registry.store.get_function(function) is None:
            rows = await self.meter.usage.hours(0, float("inf"), function=function)
            if not rows:
                raise errors.FunctionNotFound(f"function {name!r} does not exist")
        return function

    # -- usage --------------------------------------------------------------------------------
    async def usage(self, tenant: str, function: str | None, start: str | None,
                    end: str | None, step: str) -> dict[str, Any]:
        lo, hi = self.period(start, end)
        size = STEPS[step]
        qualified = None if function is None else await self.check_function(tenant, function)
        hours = await self._hours(tenant, lo, hi, qualified)
        per: dict[str, dict[int, Usage]] = defaultdict(lambda: defaultdict(Usage))
        every: dict[int, Usage] = defaultdict(Usage)  # all functions together, per bucket
        total = Usage()
        for (fn, hour), u in hours.items():
            per[fn][hour // size * size].add(u)
            every[hour // size * size].add(u)
            total.add(u)
        functions = []
        for fn in sorted(per):
            fn_total = Usage()
            buckets = []
            for start_t in sorted(per[fn]):
                fn_total.add(per[fn][start_t])
                buckets.append({"start": start_t, **per[fn][start_t].view()})
            functions.append({"function": display(fn), "total": fn_total.view(),
                              "buckets": buckets})
        return {"tenant": tenant, "from": lo, "to": hi, "step": step,
                "total": total.view(),
                "buckets": [{"start": t, **every[t].view()} for t in sorted(every)],
                "functions": functions}

    # -- cost ---------------------------------------------------------------------------------
    async def cost(self, tenant: str, start: str | None, end: str | None) -> dict[str, Any]:
        lo, hi = self.period(start, end)
        per: dict[str, list[HourUsage]] = defaultdict(list)
        for (fn, hour), u in sorted((await self._hours(tenant, lo, hi)).items()):
            per[fn].append(HourUsage(hour, u.gb_s, u.invocations, u.spot_gb_s))
        period_s = hi - lo
        functions = [{"function": display(fn), **models(h, period_s, self.book).view()}
                     for fn, h in sorted(per.items())]
        every = [h for hs in per.values() for h in hs]
        return {"tenant": tenant, "from": lo, "to": hi, "period_s": period_s,
                "price_book": self.book.view(),
                "total": models(sum_hours(every), period_s, self.book).view(),
                "functions": functions}

    # -- waste --------------------------------------------------------------------------------
    async def waste(self, tenant: str, start: str | None, end: str | None) -> dict[str, Any]:
        lo, hi = self.period(start, end)
        per: dict[str, Usage] = defaultdict(Usage)
        for (fn, _), u in (await self._hours(tenant, lo, hi)).items():
            per[fn].add(u)
        findings: list[Finding] = []
        for fn, u in sorted(per.items()):
            findings += report(await self._facts(fn, u), u, hi - lo, self.book)
        findings.sort(key=lambda f: -f.saving_per_month)
        return {"tenant": tenant, "from": lo, "to": hi, "period_s": hi - lo,
                "price_book": self.book.view(),
                "saving_per_month": round(sum(f.saving_per_month for f in findings), 6),
                "findings": [f.view() for f in findings]}

    async def _facts(self, function: str, usage: Usage) -> FunctionFacts:
        try:
            spec = (await self.registry.resolve(function, None)).spec
        except errors.NotFound:  # deleted since: what its calls ran with
            return FunctionFacts(display(function), usage.memory_mb)
        return FunctionFacts(display(function), spec.memory_mb, spec.min_instances,
                                   spec.concurrency, spec.idle_ttl_s)
