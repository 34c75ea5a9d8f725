"""What one function's instances should be doing, tick by tick: the live platform's planner.

A :class:`FunctionPlanner` combines, for one function, the pieces the simulator uses one at a
time: the KPA :class:`~faasbox.autoscaler.kpa.Autoscaler` (how many instances demand needs),
a :class:`~faasbox.autoscaler.base.KeepAlivePolicy` (what happens to an instance that went idle:
keep it, or release it and pre-warm one before the predicted next call), and floors of warm
instances: ``min_instances``, scheduled provisioned windows and known future fires (cron).

Pure like the rest of the package: every method takes ``now`` (epoch seconds of the platform's
clock); the scheduler's loop feeds it observations and acts on the :class:`Plan`.

The rules (docs/elasticity.md, "The live platform"):

* **target** = ``max(desired, floor)`` within ``max_instances``: start what is missing, in
  parallel. The autoscaler's count starts instances ahead of demand only when it panics or
  there is an async backlog (otherwise calls start their own cold starts, in parallel, and the
  count only holds instances); never for a function with ``idle_ttl_s`` 0, and not within a
  stable window after ``idle_ttl_s`` stopped an instance the autoscaler still counted (else it
  would start it again at once).
* **idle instances**: each has an :class:`IdleWindow`. Past ``keep_until`` (the learned
  keep-alive, at most ``idle_ttl_s``) it is stopped if the function has more than
  ``hold = max(desired, floor)`` instances; past ``hard_until`` (``idle_ttl_s``, the user's
  explicit bound) it is stopped if it has more than ``floor``.
* **pre-warm**: an instance whose window says "release now (or after ``hold_s``), load again
  in ``prewarm_s``" is stopped (its ``keep_until`` is the hold), and a new one is started
  ``cold_start_s`` before that moment and kept ``keepalive_s`` (at most ``idle_ttl_s``). A
  cold start cancels one pending pre-warm.
* **bursts**: a call that cold-starts also starts the instances the policy's ``ahead`` asks
  for (free room only), each idle for its keep-alive (at most ``idle_ttl_s``) if no call
  takes it.
* **known fires**: ``fire_times`` get ``instances`` warm from ``fire - lead`` (``lead`` =
  observed cold start + ``lead_margin_s``) until the fire's calls are done (or ``no_show_s``
  after the fire when none came); then the function's idle instances may go.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from faasbox.autoscaler.base import KeepAlivePolicy, Windows
from faasbox.autoscaler.kpa import Autoscaler, ScalerConfig
from faasbox.autoscaler.provisioned import ProvisionedWindow, provisioned_at

__all__ = ["FunctionPlanner", "IdleWindow", "Observation", "Plan"]

FIRE_EARLY_S = 1.0  # a call this close before a known fire is taken to be the fire


@dataclass(frozen=True)
class Observation:
    """One function's state at a tick.

    ``demand``: average invocations holding or waiting for a slot since the last tick;
    ``busy``: invocations holding a slot right now; ``ready``: instances of the latest version
    serving (idle or busy); ``live``: ``ready`` plus starting ones.
    """

    demand: float
    busy: int = 0
    queue_depth: int = 0
    ready: int = 0
    live: int = 0
    latency_ms: float | None = None


@dataclass(frozen=True)
class Plan:
    desired: int  # the autoscaler's count
    floor: int  # min_instances, provisioned windows, known fires
    target: int  # instances to have now
    hold: int  # idle instances past their keep-alive are not stopped below this
    prewarms: tuple[float, ...]  # due pre-warms: keep-alive (s) of each instance to load now
    panic: bool
    reason: str
    release_idle: bool = False  # a known fire's work is done: its idle instances may go


@dataclass
class IdleWindow:
    """The plan for one idle instance (times in epoch seconds)."""

    since: float
    keep_until: float
    hard_until: float
    prewarm_at: float | None = None
    prewarm_keep_s: float = 0.0


@dataclass
class _Fire:
    at: float
    instances: int
    arrivals: int = 0


@dataclass
class _Pending:
    start_at: float
    keep_s: float


class ScalingSpec(Protocol):
    """The scaling fields of a function spec (:class:`faasbox.spec.FunctionSpec` has them)."""

    @property
    def concurrency(self) -> int: ...
    @property
    def min_instances(self) -> int: ...
    @property
    def max_instances(self) -> int: ...
    @property
    def idle_ttl_s(self) -> float: ...
    @property
    def memory_mb(self) -> int: ...
    @property
    def provisioned(self) -> Sequence[ProvisionedWindow]: ...


@dataclass
class FunctionPlanner:
    """See the module docstring. One per function; the policy object is shared."""

    name: str
    policy: KeepAlivePolicy
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    lead_margin_s: float = 2.0
    no_show_s: float = 30.0
    cold_start_s: float = 0.5  # observed, smoothed (see observe_cold_start)
    min_instances: int = 0
    max_instances: int = 10
    idle_ttl_s: float = 300.0
    provisioned: tuple[ProvisionedWindow, ...] = ()
    fires: list[_Fire] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    cold_times: deque[float] = field(default_factory=deque)
    last_plan: Plan | None = None
    last_observation: Observation | None = None
    _autoscaler: Autoscaler | None = None
    _ttl_cut_at: float | None = None
    _spec_key: Any = None
    _latency_ms: float | None = None

    def __post_init__(self) -> None:
        self._autoscaler = Autoscaler(self.scaler)
        # a policy that can learn a release now and compute its windows later (only for an
        # instance that goes idle): see KeepAlivePolicy
        self._released: Callable[[str, float], Callable[[], Windows]] = getattr(
            self.policy, "released", _at_once(self.policy))
        self._ahead: Callable[[str, float, int], tuple[float, ...]] | None = getattr(
            self.policy, "ahead", None)

    @property
    def autoscaler(self) -> Autoscaler:
        assert self._autoscaler is not None
        return self._autoscaler

    # -- configuration ----------------------------------------------------------------------
    def configure(self, spec: ScalingSpec) -> None:
        """Take the scaling fields of the function's latest spec (cheap when unchanged)."""
        key = (spec.concurrency, spec.min_instances, spec.max_instances, spec.idle_ttl_s,
               spec.memory_mb, tuple(spec.provisioned))
        if key == self._spec_key:
            return
        self._spec_key = key
        self.min_instances = spec.min_instances
        self.max_instances = spec.max_instances
        self.idle_ttl_s = float(spec.idle_ttl_s)
        self.provisioned = tuple(spec.provisioned)
        self.scaler = replace(self.scaler, target_concurrency=float(spec.concurrency),
                              max_instances=self.max_instances, min_instances=0)
        self.autoscaler.config = self.scaler
        set_memory = getattr(self.policy, "set_memory", None)
        if set_memory is not None:
            set_memory(self.name, float(spec.memory_mb))

    @property
    def configured(self) -> bool:
        return self._spec_key is not None

    @property
    def lead_s(self) -> float:
        """How long before a known need an instance is started."""
        return self.cold_start_s + self.lead_margin_s

    def observe_cold_start(self, seconds: float) -> None:
        """A cold start of this function took ``seconds`` (smoothed, for pre-warm leads)."""
        self.cold_start_s = 0.7 * self.cold_start_s + 0.3 * max(0.0, seconds)

    def set_known_fires(self, fire_times: Sequence[float], instances: int = 1) -> None:
        """Known future arrivals (e.g. cron fires, epoch seconds); replaces earlier ones, but a
        fire already being served keeps its state."""
        if instances < 1:
            raise ValueError("instances must be >= 1")
        kept = {f.at: f for f in self.fires if f.arrivals}
        self.fires = sorted(
            (kept.get(t) or _Fire(float(t), instances) for t in set(fire_times) | set(kept)),
            key=lambda f: f.at)
        set_schedule = getattr(self.policy, "set_schedule", None)
        if set_schedule is not None:
            set_schedule(self.name, self._next_fire if self.fires else None)

    def _next_fire(self, now: float) -> float | None:
        return next((f.at for f in self.fires if f.at > now), None)

    # -- what happens -----------------------------------------------------------------------
    def arrival(self, now: float, cold: bool) -> None:
        """An invocation got a slot at ``now`` (``cold``: it started an instance)."""
        self.policy.on_invocation(self.name, now)
        for fire in self.fires:
            if fire.at - FIRE_EARLY_S <= now:
                fire.arrivals += 1  # a call at (or after) the fire time is the fire's
                break
        if cold:
            self.cold_times.append(now)
            if self.pending:
                self.pending.pop()  # the slot it was pre-warmed for is taken by this start

    def ahead(self, now: float, in_flight: int, live: int) -> tuple[float, ...]:
        """A call cold-starts at ``now`` with ``in_flight`` calls running or waiting, itself
        included, and ``live`` instances (its own included): the keep-alive (s) of each
        instance to start beside it (none for a function with ``idle_ttl_s`` 0). The policy
        asks for room for that many more calls; an instance takes ``concurrency`` of them."""
        if self._ahead is None or self.idle_ttl_s <= 0:
            return ()
        in_flight = max(1, in_flight)
        keeps = self._ahead(self.name, now, in_flight)
        per = max(1, round(self.scaler.target_concurrency))
        wanted = -(-(in_flight + len(keeps)) // per) - live
        return tuple(min(keep, self.idle_ttl_s) for keep in keeps[:max(0, wanted)])

    def released(self, now: float) -> Callable[[float | None], IdleWindow]:
        """An invocation ended at ``now`` (the policy learns it now). The function returned
        gives the window of its instance if that is now idle (``ttl``: the instance's
        ``idle_ttl_s``, default the latest spec's); an instance that runs calls back to back
        never needs one, so none is computed for it."""
        windows = self._released(self.name, now)

        def window(ttl: float | None = None) -> IdleWindow:
            return self._window(windows(), now, self.idle_ttl_s if ttl is None else ttl)

        return window

    def finished(self, now: float, ttl: float | None = None) -> IdleWindow:
        """An invocation ended at ``now``; the window for its instance if it is now idle."""
        return self.released(now)(ttl)

    @staticmethod
    def _window(w: Windows, now: float, ttl: float) -> IdleWindow:
        hard = now + ttl
        if ttl <= 0:
            return IdleWindow(now, now, now)
        if w.prewarm_s <= 0:
            return IdleWindow(now, now + min(w.keepalive_s, ttl), hard)
        prewarm_at = now + w.prewarm_s if math.isfinite(w.prewarm_s) else None
        hold = min(w.hold_s, w.prewarm_s, ttl)
        return IdleWindow(now, now + hold, hard, prewarm_at, min(w.keepalive_s, ttl))

    def started_window(self, now: float, keep_s: float = 0.0,
                       ttl: float | None = None) -> IdleWindow:
        """The window of an instance started without a call (floors, autoscaler, pre-warm)."""
        ttl = self.idle_ttl_s if ttl is None else ttl
        return IdleWindow(now, now + min(keep_s, ttl), now + ttl)

    def expired(self, window: IdleWindow, now: float) -> str | None:
        """``"hard"`` past ``idle_ttl_s``, ``"soft"`` past the keep-alive, else None."""
        if now >= window.hard_until:
            return "hard"
        if window.prewarm_at is not None and now >= window.prewarm_at - self.cold_start_s:
            # held until its own pre-warm time: it is the pre-warmed instance now
            return "soft" if now >= window.prewarm_at + window.prewarm_keep_s else None
        return "soft" if now >= window.keep_until else None

    def retired(self, window: IdleWindow, now: float, reason: str) -> None:
        """An idle instance was stopped at ``now`` (``reason`` "hard" or "soft")."""
        if reason == "hard" and self.last_plan is not None and self.last_plan.desired > 0:
            self._ttl_cut_at = now
        at = window.prewarm_at
        if at is not None and at > now and window.prewarm_keep_s > 0:
            self.pending.append(_Pending(at - self.cold_start_s, window.prewarm_keep_s))

    def cold_starts_per_min(self, now: float) -> int:
        while self.cold_times and self.cold_times[0] <= now - 60.0:
            self.cold_times.popleft()
        return len(self.cold_times)

    # -- the tick ---------------------------------------------------------------------------
    def plan(self, now: float, obs: Observation) -> Plan:
        cfg = self.scaler
        if obs.latency_ms is not None:
            self._latency_ms = obs.latency_ms
        rate = (cfg.target_concurrency * 1000.0 / self._latency_ms
                if self._latency_ms else None)
        self.autoscaler.observe(now, obs.demand, obs.queue_depth, rate, obs.latency_ms)
        decision = self.autoscaler.decide(now, obs.ready)
        desired = decision.desired
        floor, release = self._floor(now, obs)
        reason = decision.reason
        if floor > desired:
            reason += "; floor"
        ahead = decision.panic or obs.queue_depth > 0
        if not ahead or self.idle_ttl_s <= 0 or (
                self._ttl_cut_at is not None and now - self._ttl_cut_at < cfg.stable_window_s):
            may_start = 0  # the count only holds what there is
        else:
            may_start = desired
        due = [p for p in self.pending if p.start_at <= now]
        if due:
            self.pending = [p for p in self.pending if p.start_at > now]
        target = min(max(may_start, floor), self.max_instances)
        plan = Plan(desired, floor, target, max(desired, floor),
                    tuple(p.keep_s for p in due), decision.panic, reason, release)
        self.last_plan, self.last_observation = plan, obs
        return plan

    def _floor(self, now: float, obs: Observation) -> tuple[int, bool]:
        """Warm instances asked for regardless of demand, and whether a fire just finished."""
        lead = self.lead_s
        floor = self.min_instances
        if self.provisioned:
            floor = max(floor, provisioned_at(self.provisioned, now),
                        provisioned_at(self.provisioned, now + lead))
        release = False
        still: list[_Fire] = []
        for fire in self.fires:
            if now < fire.at - lead:
                still.append(fire)
                continue
            done = now >= fire.at and fire.arrivals > 0 and obs.busy == 0
            if done or now >= fire.at + self.no_show_s:
                release = release or done
                continue
            floor = max(floor, fire.instances)
            still.append(fire)
        if len(still) != len(self.fires):
            self.fires = still
            if not still:
                self.set_known_fires([], 1)
        return min(floor, self.max_instances), release


def _at_once(policy: KeepAlivePolicy) -> Callable[[str, float], Callable[[], Windows]]:
    """``released`` for a policy that computes its windows as it learns the release."""
    def released(fn: str, now: float) -> Callable[[], Windows]:
        w = policy.windows(fn, now)
        return lambda: w

    return released
