"""One clock for every component.

Components take a :class:`Clock` instead of reading time themselves, so that tests and the
trace simulator can drive them with :class:`VirtualClock`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zoneinfo
from functools import lru_cache
from typing import Protocol


@lru_cache(maxsize=64)
def time_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; ValueError for a name that is not one (a missing zone, a
    directory of zones such as ``America``, a name too long for a file)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as"
                         " 'Europe/Berlin' or 'UTC')") from None


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time, for records and schedules)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """A clock that only moves when told to.

    ``advance(dt)`` moves time forward and wakes every sleeper whose deadline has passed,
    in deadline order. ``now()`` and ``monotonic()`` are the same virtual number.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut

    def set(self, t: float) -> None:
        """Jump to absolute time ``t`` (never backwards)."""
        self.advance(t - self._t)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock does not go back")
        self._t += seconds
        while self._sleepers and self._sleepers[0][0] <= self._t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
