"""A Knative-KPA-like autoscaler for one function, pure and driven by an injected ``now``.

The caller (the platform's autoscaling loop, or a test) feeds observations with
:meth:`Autoscaler.observe` at least once per tick, and asks :meth:`Autoscaler.decide` once per
tick (``tick_s``) for the number of instances it should have. Nothing here reads a clock.

How the desired count is formed (``per_instance = target_concurrency * target_utilization``):

1. **Concurrency.** In-flight invocations averaged over the stable window (60 s) and over the
   panic window (6 s): ``stable = avg_stable / per_instance``, ``panic = max(avg_panic,
   newest) / per_instance``, where ``newest`` is the mean of the newest 1 s bucket, so that a
   burst counts fully in the first decision after it is observed.
2. **Backlog.** Queued async tasks need ``queue_depth / (per_instance_rate * queue_drain_s)``
   instances to drain within the horizon; when the per-instance rate is unknown, each queued
   task counts as one unit of concurrency. This is added to both figures.
3. **Latency (secondary).** With ``latency_target_ms`` set, when the stable-window average
   latency exceeds it the figures are multiplied by ``latency / target``, capped at
   ``max_latency_boost``. Latency never lowers the count: concurrency already reflects
   slower invocations (Little's law); this only reacts to a missed latency objective.
4. **Panic.** When ``panic / max(ready, 1) >= panic_threshold`` (demand in the panic window at
   twice the current capacity), the scaler panics: it follows the panic figure and never goes
   below the highest count it asked for since panicking began (nor below the ready count then).
   It leaves panic a stable window after the threshold was last reached. Otherwise it follows
   the stable figure.
5. **Rate bounds.** At most ``ceil(max(ready, 1) * max_scale_up_rate)`` and at least
   ``floor(ready / max_scale_down_rate)`` per decision. The default x1000 means that a burst
   gets its full count in one decision; the platform starts those cold starts in parallel.
6. **Zero.** The count drops to zero only when there was no demand (nothing in flight, nothing
   queued) for ``scale_to_zero_grace_s``; until then one instance is held.
7. **Clamp** to ``[min_instances, max_instances]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from faasbox.autoscaler.window import BucketedWindow

__all__ = ["Autoscaler", "Decision", "ScalerConfig"]


@dataclass(frozen=True)
class ScalerConfig:
    """Autoscaling parameters of one function (defaults are Knative KPA's)."""

    target_concurrency: float = 1.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    min_instances: int = 0
    max_instances: int | None = None
    tick_s: float = 2.0
    bucket_s: float = 1.0
    queue_drain_s: float = 10.0
    latency_target_ms: float | None = None
    max_latency_boost: float = 2.0

    def __post_init__(self) -> None:
        if self.target_concurrency <= 0 or not 0 < self.target_utilization <= 1:
            raise ValueError("need target_concurrency > 0 and 0 < target_utilization <= 1")
        if self.panic_window_s <= 0 or self.stable_window_s < self.panic_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")
        if self.max_scale_up_rate < 1 or self.max_scale_down_rate < 1:
            raise ValueError("scale rates must be >= 1")
        if self.min_instances < 0:
            raise ValueError("min_instances must be >= 0")
        if self.max_instances is not None and self.max_instances < self.min_instances:
            raise ValueError("max_instances must be >= min_instances")
        if self.queue_drain_s <= 0 or self.max_latency_boost < 1:
            raise ValueError("need queue_drain_s > 0 and max_latency_boost >= 1")

    @property
    def per_instance(self) -> float:
        """Concurrency one instance is planned to carry."""
        return self.target_concurrency * self.target_utilization


@dataclass(frozen=True)
class Decision:
    desired: int
    panic: bool
    reason: str


class Autoscaler:
    """Desired instance count of one function from its observations (see the module doc)."""

    def __init__(self, config: ScalerConfig | None = None) -> None:
        self.config = cfg = config or ScalerConfig()
        self._stable = BucketedWindow(cfg.stable_window_s, cfg.bucket_s)
        self._panic_window = BucketedWindow(cfg.panic_window_s, cfg.bucket_s)
        self._latency = BucketedWindow(cfg.stable_window_s, cfg.bucket_s)
        self._queue_depth = 0
        self._rate: float | None = None
        self._last_demand: float | None = None
        self._panic_last: float | None = None  # last time the panic threshold was reached
        self._panic_max = 0

    def observe(
        self,
        now: float,
        in_flight: float,
        queue_depth: int = 0,
        per_instance_rate: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Record the state at ``now``: invocations running, tasks queued, and optionally the
        tasks one instance completes per second and the recent invocation latency."""
        if in_flight < 0 or queue_depth < 0:
            raise ValueError("in_flight and queue_depth must be >= 0")
        self._stable.record(now, in_flight)
        self._panic_window.record(now, in_flight)
        self._queue_depth = queue_depth
        if per_instance_rate is not None and per_instance_rate > 0:
            self._rate = per_instance_rate
        if latency_ms is not None:
            self._latency.record(now, latency_ms)
        if in_flight > 0 or queue_depth > 0:
            self._last_demand = now

    @property
    def panicking(self) -> bool:
        return self._panic_last is not None

    def decide(self, now: float, ready_instances: int) -> Decision:
        """How many instances the function should have at ``now``."""
        cfg = self.config
        backlog = self._backlog()
        boost = self._latency_boost(now)
        stable_avg = self._stable.average(now) or 0.0
        panic_avg = max(
            self._panic_window.average(now) or 0.0, self._panic_window.latest(now) or 0.0
        )
        stable = (stable_avg / cfg.per_instance + backlog) * boost
        panic = (panic_avg / cfg.per_instance + backlog) * boost
        ready = max(0, ready_instances)

        if panic / max(ready, 1) >= cfg.panic_threshold:
            if self._panic_last is None:
                self._panic_max = ready
            self._panic_last = now
        elif self._panic_last is not None and now - self._panic_last >= cfg.stable_window_s:
            self._panic_last = None

        up_bound = math.ceil(max(ready, 1) * cfg.max_scale_up_rate)
        down_bound = math.floor(ready / cfg.max_scale_down_rate)
        if self.panicking:
            want = math.ceil(panic)
            reason = "panic"
        else:
            want = math.ceil(stable)
            reason = "stable"
        if backlog > 0:
            reason += "+queue"
        if boost > 1:
            reason += "+latency"
        desired = min(max(want, down_bound), up_bound)
        if desired != want:
            reason += "; rate-limited"
        if self.panicking:
            # never scale down while panicking
            self._panic_max = desired = max(desired, self._panic_max)

        if desired == 0 and ready > 0 and self._in_grace(now):
            desired, reason = 1, "scale-to-zero grace"
        return self._clamp(desired, reason)

    def _backlog(self) -> float:
        """Instances the queued tasks need to drain within ``queue_drain_s``."""
        cfg = self.config
        if self._queue_depth <= 0:
            return 0.0
        if self._rate is None:
            return self._queue_depth / cfg.per_instance
        return self._queue_depth / (self._rate * cfg.queue_drain_s)

    def _latency_boost(self, now: float) -> float:
        cfg = self.config
        if cfg.latency_target_ms is None or cfg.latency_target_ms <= 0:
            return 1.0
        latency = self._latency.average(now)
        if latency is None or latency <= cfg.latency_target_ms:
            return 1.0
        return min(latency / cfg.latency_target_ms, cfg.max_latency_boost)

    def _in_grace(self, now: float) -> bool:
        last = self._last_demand
        return last is not None and now - last < self.config.scale_to_zero_grace_s

    def _clamp(self, desired: int, reason: str) -> Decision:
        cfg = self.config
        if desired < cfg.min_instances:
            desired, reason = cfg.min_instances, f"{reason}; min_instances"
        if cfg.max_instances is not None and desired > cfg.max_instances:
            desired, reason = cfg.max_instances, f"{reason}; max_instances"
        return Decision(desired=desired, panic=self.panicking, reason=reason)
