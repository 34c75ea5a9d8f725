"""Usage of an invocation: billed duration and GB-seconds."""

from __future__ import annotations

import math


def billed_ms(duration_ms: float) -> int:
    """Duration rounded up to the next millisecond, at least 1 ms (as Lambda bills)."""
    return max(1, math.ceil(duration_ms))


def gb_seconds(billed: int, memory_mb: int) -> float:
    return billed / 1000 * memory_mb / 1024
