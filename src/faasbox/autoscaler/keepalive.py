"""Keep-alive and pre-warm policies, selectable by name.

``fixed``   keep every idle instance for a fixed TTL (Lambda-like 10 min by default).
``hybrid``  the hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (ATC 2020).
``faasbox`` faasbox's own policy (see :mod:`faasbox.autoscaler.adaptive`).

Every policy is pure: it never reads the clock, and keeps its state per function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from faasbox.autoscaler.adaptive import FaasboxPolicy
from faasbox.autoscaler.base import KeepAlivePolicy, Windows, prewarm_plan
from faasbox.autoscaler.histogram import IdleHistogram, IdleTracker

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "FaasboxPolicy",
    "FixedKeepAlive",
    "HybridHistogramPolicy",
    "KeepAlivePolicy",
    "Windows",
    "make_policy",
    "prewarm_plan",
]


class FixedKeepAlive:
    """Keep an idle instance loaded for ``ttl_s`` seconds (0: release at once; inf: never)."""

    name = "fixed"

    def __init__(self, ttl_s: float = 600.0) -> None:
        if ttl_s < 0 or math.isnan(ttl_s):
            raise ValueError("ttl_s must be >= 0")
        self.ttl_s = float(ttl_s)

    def on_invocation(self, fn: str, now: float) -> None:
        return None

    def windows(self, fn: str, now: float) -> Windows:
        return Windows(prewarm_s=0.0, keepalive_s=self.ttl_s)


@dataclass
class _HybridState:
    tracker: IdleTracker
    hist: IdleHistogram
    version: int = 0
    cached: tuple[int, Windows] | None = field(default=None)


class HybridHistogramPolicy:
    """The hybrid histogram policy (Shahrad et al., ATC 2020, section 4.2).

    Per function, a histogram of idle times (``bin_s`` = 1 min bins over ``range_s`` = 4 h):

    * representative histogram (at least ``min_samples`` in range and a coefficient of
      variation of the bin counts >= ``cv_threshold``): pre-warm = head - ``margin``,
      keep-alive = tail + ``margin`` measured from the pre-warm point, where head is the
      lower edge of the ``head_pct`` (5th) percentile bin and tail the upper edge of the
      ``tail_pct`` (99th) percentile bin;
    * more than ``oob_threshold`` of the idle times beyond the range: forecast the next idle
      time F (exponential smoothing of the out-of-range idle times, standing in for the
      paper's ARIMA) and pre-warm at F·(1 - ``forecast_margin``), keep alive
      2·``forecast_margin``·F;
    * otherwise (too few samples, or a flat histogram): standard keep-alive for the whole
      range, no pre-warm.
    """

    name = "hybrid"

    def __init__(
        self,
        bin_s: float = 60.0,
        range_s: float = 4 * 3600.0,
        head_pct: float = 5.0,
        tail_pct: float = 99.0,
        margin: float = 0.10,
        cv_threshold: float = 2.0,
        min_samples: int = 10,
        oob_threshold: float = 0.5,
        forecast_margin: float = 0.15,
        smoothing: float = 0.5,
    ) -> None:
        self.bin_s = bin_s
        self.bins = max(1, round(range_s / bin_s))
        self.head_pct = head_pct
        self.tail_pct = tail_pct
        self.margin = margin
        self.cv_threshold = cv_threshold
        self.min_samples = min_samples
        self.oob_threshold = oob_threshold
        self.forecast_margin = forecast_margin
        self.smoothing = smoothing
        self._state: dict[str, _HybridState] = {}

    @property
    def range_s(self) -> float:
        return self.bin_s * self.bins

    def _fn(self, fn: str) -> _HybridState:
        st = self._state.get(fn)
        if st is None:
            hist = IdleHistogram(bin_s=self.bin_s, bins=self.bins, smoothing=self.smoothing)
            st = self._state[fn] = _HybridState(IdleTracker(), hist)
        return st

    def histogram(self, fn: str) -> IdleHistogram:
        """The idle-time histogram of ``fn`` (for inspection)."""
        return self._fn(fn).hist

    def on_invocation(self, fn: str, now: float) -> None:
        st = self._fn(fn)
        it = st.tracker.arrival(now)
        if it is not None:
            st.hist.add(it)
            st.version += 1

    def windows(self, fn: str, now: float) -> Windows:
        st = self._fn(fn)
        st.tracker.idle(now)
        if st.cached is not None and st.cached[0] == st.version:
            return st.cached[1]
        w = self._compute(st.hist)
        st.cached = (st.version, w)
        return w

    def _compute(self, hist: IdleHistogram) -> Windows:
        if hist.oob_forecast is not None and hist.oob_share() > self.oob_threshold:
            f = hist.oob_forecast
            return Windows(f * (1 - self.forecast_margin), 2 * self.forecast_margin * f)
        if hist.total < self.min_samples or hist.cv() < self.cv_threshold:
            return Windows(0.0, self.range_s)
        prewarm = hist.head_s(self.head_pct) * (1 - self.margin)
        keep_until = hist.tail_s(self.tail_pct) * (1 + self.margin)
        return Windows(prewarm, keep_until - prewarm)


POLICIES: dict[str, Callable[..., KeepAlivePolicy]] = {
    "fixed": FixedKeepAlive,
    "hybrid": HybridHistogramPolicy,
    "faasbox": FaasboxPolicy,
}

DEFAULT_POLICY = "faasbox"


def make_policy(name: str = DEFAULT_POLICY, **kwargs: float) -> KeepAlivePolicy:
    """Build the policy registered as ``name`` with its keyword parameters."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown keep-alive policy {name!r}; known: {sorted(POLICIES)}") from None
    return factory(**kwargs)
