"""Cost models on actual usage (pure: usage and a price book in, prices out).

Three models price the same usage of a period (docs/cost.md):

- **pay-per-use**: billed GB-s x the GB-s rate + requests x the request rate;
- **reserved**: a monthly fee per GB of reserved capacity (prorated to the period) covers the
  work that fits in it hour by hour; what does not fit (overage) is paid at the pay-per-use
  rate; requests as in pay-per-use. The capacity priced is the one that costs least on this
  usage (0 GB when reserving does not pay); its utilisation and the break-even utilisation
  (the fee per GB-s of capacity over the pay-per-use GB-s rate) are shown;
- **spot**: the work of interruptible tasks and jobs at the GB-s rate less the spot discount,
  the rest at pay-per-use; requests as in pay-per-use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MONTH_S = 730 * 3600  # the month of cloud price lists: 730 hours
HOUR_S = 3600


@dataclass(frozen=True)
class PriceBook:
    gb_s: float = 0.0000166667  # USD per GB-s
    per_million_requests: float = 0.20  # USD per 1M requests
    reserved_gb_month: float = 36.50  # USD per GB of reserved capacity per 730-h month
    spot_discount: float = 0.70  # fraction off the GB-s rate for interruptible work
    currency: str = "USD"

    @property
    def reserved_gb_s(self) -> float:
        """The reserved fee per GB-s of capacity."""
        return self.reserved_gb_month / MONTH_S

    @property
    def break_even(self) -> float:
        """The utilisation of reserved capacity above which reserving costs less."""
        return self.reserved_gb_s / self.gb_s if self.gb_s else float("inf")

    def view(self) -> dict[str, Any]:
        return {"currency": self.currency, "gb_s": self.gb_s,
                "per_million_requests": self.per_million_requests,
                "reserved_gb_month": self.reserved_gb_month,
                "spot_discount": self.spot_discount,
                "reserved_break_even_utilisation": round(self.break_even, 4)}


@dataclass(frozen=True)
class HourUsage:
    """The billable usage of one hour (of one function, or summed over a tenant's)."""

    hour: int
    gb_s: float
    requests: int
    spot_gb_s: float = 0.0


@dataclass(frozen=True)
class Models:
    gb_s: float
    requests: int
    spot_gb_s: float
    period_s: float
    pay_per_use: float
    reserved: float
    reserved_gb: float
    reserved_utilisation: float | None
    spot: float
    break_even: float

    @property
    def cheapest(self) -> str:
        # ties go to the simplest model
        costs = {"pay_per_use": self.pay_per_use, "spot": self.spot, "reserved": self.reserved}
        return min(costs, key=lambda k: round(costs[k], 9))

    def view(self, digits: int = 6) -> dict[str, Any]:
        return {
            "gb_s": round(self.gb_s, 6), "requests": self.requests,
            "interruptible_gb_s": round(self.spot_gb_s, 6),
            "models": {
                "pay_per_use": {"cost": round(self.pay_per_use, digits)},
                "reserved": {"cost": round(self.reserved, digits),
                             "reserved_gb": round(self.reserved_gb, 4),
                             "utilisation": None if self.reserved_utilisation is None
                             else round(self.reserved_utilisation, 4),
                             "break_even_utilisation": round(self.break_even, 4)},
                "spot": {"cost": round(self.spot, digits)},
            },
            "cheapest": self.cheapest,
        }


def requests_cost(requests: int, book: PriceBook) -> float:
    return requests / 1e6 * book.per_million_requests


def pay_per_use(gb_s: float, requests: int, book: PriceBook) -> float:
    return gb_s * book.gb_s + requests_cost(requests, book)


def reserved_cost(hours: list[HourUsage], capacity_gb: float, period_s: float,
                  book: PriceBook) -> float:
    """The fee for ``capacity_gb`` over the period plus the overage of every hour."""
    fee = capacity_gb * period_s * book.reserved_gb_s
    cover = capacity_gb * HOUR_S
    overage = sum(max(0.0, h.gb_s - cover) for h in hours)
    return fee + overage * book.gb_s + requests_cost(sum(h.requests for h in hours), book)


def best_reservation(hours: list[HourUsage], period_s: float,
                     book: PriceBook) -> tuple[float, float]:
    """``(capacity GB, cost)`` of the cheapest reservation; the cost is piecewise linear in
    the capacity with its bends at each hour's average GB, so those are the candidates."""
    candidates = {0.0} | {h.gb_s / HOUR_S for h in hours if h.gb_s > 0}
    best = min(sorted(candidates), key=lambda c: (reserved_cost(hours, c, period_s, book), c))
    return best, reserved_cost(hours, best, period_s, book)


def models(hours: Iterable[HourUsage], period_s: float, book: PriceBook) -> Models:
    """The three models on the hourly usage of a period of ``period_s`` seconds."""
    hours = list(hours)
    gb_s = sum(h.gb_s for h in hours)
    requests = sum(h.requests for h in hours)
    spot_gb_s = sum(h.spot_gb_s for h in hours)
    capacity, reserved = best_reservation(hours, period_s, book)
    used = sum(min(h.gb_s, capacity * HOUR_S) for h in hours)
    utilisation = used / (capacity * period_s) if capacity > 0 and period_s > 0 else None
    spot = ((gb_s - spot_gb_s) * book.gb_s + spot_gb_s * book.gb_s * (1 - book.spot_discount)
            + requests_cost(requests, book))
    return Models(gb_s, requests, spot_gb_s, period_s, pay_per_use(gb_s, requests, book),
                  reserved, capacity, utilisation, spot, book.break_even)


def sum_hours(hours: Iterable[HourUsage]) -> list[HourUsage]:
    """Hours of several functions added up per hour (a tenant's reservation is shared)."""
    out: dict[int, list[float]] = {}
    for h in hours:
        acc = out.setdefault(h.hour, [0.0, 0.0, 0.0])
        acc[0] += h.gb_s
        acc[1] += h.requests
        acc[2] += h.spot_gb_s
    return [HourUsage(hour, g, int(r), s) for hour, (g, r, s) in sorted(out.items())]
