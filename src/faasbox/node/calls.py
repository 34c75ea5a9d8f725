"""A call on an instance, and the one timer that serves the deadlines of an instance's calls.

A call's frame may be sent before it starts (behind running calls: sent ahead); it is timed
from when it starts. Rather than a timer per call, an instance has one :class:`Deadlines`:
armed at the earliest running call's deadline, it fails the calls past theirs when it fires
and re-arms at the next, so a call shorter than its timeout (nearly all) arms and cancels
nothing of its own.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from faasbox import errors

TIMER_SLACK_S = 0.001  # the loop's timers fire to the millisecond: a deadline this near is due


@dataclass
class InvokeResult:
    payload: bytes  # the handler's result as JSON bytes
    duration_ms: float
    logs: str
    peak_rss_mb: float


class Call:
    """A call sent to the instance. ``started`` is None while it waits behind others (its
    frame sent ahead, pipelined); the node times it from when it starts (a call that does
    not wait: from just before its frame is sent), by ``time.perf_counter``: the event
    loop's clock moves in whole milliseconds (a 50.3 ms call read 50 or 51)."""

    __slots__ = ("deadline", "fut", "started", "stop_reason", "timeout_s")

    def __init__(self, fut: asyncio.Future[tuple[dict[str, Any], bytes]],
                 timeout_s: float) -> None:
        self.fut = fut
        self.timeout_s = timeout_s
        self.started: float | None = None
        self.deadline = math.inf  # loop time; set when it starts
        self.stop_reason: errors.InvocationError | None = None


class TimedOut(Exception):
    """Set on a call's future when it ran past its deadline."""


class Stopping(Exception):
    """Set on a call's future when it was stopped while it waited to start."""


class Deadlines:
    """One timer for the deadlines of the calls in ``calls`` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, calls: Iterable[Call]) -> None:
        self.loop = loop
        self.calls = calls  # a live view: the instance's calls in flight
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def start(self, call: Call) -> None:
        """``call`` started now: it is due ``timeout_s`` later."""
        call.deadline = self.loop.time() + call.timeout_s
        if call.deadline < self._at:
            self._arm(call.deadline)

    def stop(self) -> None:
        """No deadline is watched any more (the instance is gone)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = self.loop.call_at(at, self._fired)

    def _fired(self) -> None:
        self._timer, self._at = None, math.inf
        now = self.loop.time()
        earliest = math.inf
        for call in self.calls:
            if call.started is None or call.fut.done():
                continue
            if call.deadline <= now + TIMER_SLACK_S:
                call.fut.set_exception(TimedOut())
            elif call.deadline < earliest:
                earliest = call.deadline
        if earliest < math.inf:
            self._arm(earliest)
