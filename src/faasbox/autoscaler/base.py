"""The keep-alive policy contract shared by the platform and the trace simulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Windows:
    """What to do with an instance that just went idle.

    ``prewarm_s`` > 0: release the instance (after ``hold_s``, default at once) and load one
    again ``prewarm_s`` after it went idle (``inf``: never). ``prewarm_s`` == 0: keep it
    loaded. Once loaded (now or after the pre-warm), keep it idle ``keepalive_s`` seconds
    (``inf``: forever), then release it.

    ``hold_s`` (< ``prewarm_s``) covers a need that may come soon (the rest of a burst) while
    the pre-warm covers the predicted later one: the instance is loaded over ``[0, hold_s)``
    and ``[prewarm_s, prewarm_s + keepalive_s)`` from the moment it went idle.
    """

    prewarm_s: float
    keepalive_s: float
    hold_s: float = 0.0


class KeepAlivePolicy(Protocol):
    """Decides keep-alive and pre-warm windows from a function's invocation history.

    Pure: time comes in as ``now`` (seconds, any epoch, never decreasing per function).
    State is kept per function, so functions can be replayed independently.

    A policy may also have ``released(fn, now) -> Callable[[], Windows]``: ``windows`` in two
    steps, learning the release at once and computing the windows only when called (the
    platform calls it only for an instance that went idle, not for one that took its next
    call at once). Without it, the platform calls ``windows``.

    And ``ahead(fn, now, in_flight) -> tuple[float, ...]``: a call of ``fn`` found no idle
    instance and cold-starts at ``now``, with ``in_flight`` calls of ``fn`` running or waiting
    (itself included); start one more instance beside it for each value returned, kept idle
    that many seconds if no call takes it (the rest of a burst that is rising). Without it, a
    cold start starts only its own instance.
    """

    name: str

    def on_invocation(self, fn: str, now: float) -> None:
        """An invocation of ``fn`` arrived at ``now``."""

    def windows(self, fn: str, now: float) -> Windows:
        """A call of ``fn`` ended at ``now``, which may leave its instance idle: how long to
        keep or pre-warm it."""


def prewarm_plan(next_fire: float, cold_start_s: float, lead_s: float) -> tuple[float, float]:
    """Plan an instance for a known future arrival at ``next_fire`` (e.g. a cron fire).

    Returns ``(start_at, release_after)``: start the instance at ``start_at`` so that it is
    ready ``lead_s`` before the fire, and release it if still unused ``release_after`` seconds
    after ``start_at`` (its cold start, the lead, and the same lead again after the fire).
    """
    if cold_start_s < 0 or lead_s < 0:
        raise ValueError("cold_start_s and lead_s must be >= 0")
    return next_fire - lead_s - cold_start_s, cold_start_s + 2 * lead_s
