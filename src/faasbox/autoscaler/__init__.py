"""Elasticity policies: how many instances a function needs, and how long idle ones stay.

* :mod:`~faasbox.autoscaler.kpa`: a Knative-KPA-like per-function autoscaler (stable and panic
  windows over in-flight concurrency, async backlog, latency).
* :mod:`~faasbox.autoscaler.keepalive`: keep-alive and pre-warm policies (``fixed``,
  ``hybrid``, ``faasbox``) behind one :class:`KeepAlivePolicy` protocol, selectable by name.

Everything here is pure: decisions take ``now`` and never read a clock, so the platform drives
them with the real clock and the trace simulator (:mod:`faasbox.simulator`) with virtual time.
"""

from faasbox.autoscaler.adaptive import FaasboxPolicy
from faasbox.autoscaler.base import KeepAlivePolicy, Windows, prewarm_plan
from faasbox.autoscaler.keepalive import (
    DEFAULT_POLICY,
    POLICIES,
    FixedKeepAlive,
    HybridHistogramPolicy,
    make_policy,
)
from faasbox.autoscaler.kpa import Autoscaler, Decision, ScalerConfig

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Autoscaler",
    "Decision",
    "FaasboxPolicy",
    "FixedKeepAlive",
    "HybridHistogramPolicy",
    "KeepAlivePolicy",
    "ScalerConfig",
    "Windows",
    "make_policy",
    "prewarm_plan",
]
