"""A bucketed sliding-window average with bounded memory."""

from __future__ import annotations

import math


class BucketedWindow:
    """Average of samples over the last ``window_s`` seconds, kept in ``bucket_s`` buckets.

    Memory is one slot per bucket, whatever the sample rate. ``average(now)`` is the mean of the
    per-bucket means of the buckets in ``(now - window_s, now]`` that received a sample, so a
    burst seen in one bucket counts fully at once; a caller that wants quiet time to count as
    zero records zeros (the autoscaler's caller observes every tick).
    """

    __slots__ = ("_count", "_idx", "_sum", "bucket_s", "nbuckets")

    def __init__(self, window_s: float, bucket_s: float = 1.0) -> None:
        if window_s <= 0 or bucket_s <= 0:
            raise ValueError("window_s and bucket_s must be > 0")
        self.bucket_s = bucket_s
        self.nbuckets = max(1, math.ceil(window_s / bucket_s))
        self._idx = [-1] * self.nbuckets
        self._sum = [0.0] * self.nbuckets
        self._count = [0] * self.nbuckets

    def record(self, now: float, value: float) -> None:
        idx = math.floor(now / self.bucket_s)
        slot = idx % self.nbuckets
        if self._idx[slot] != idx:
            self._idx[slot] = idx
            self._sum[slot] = 0.0
            self._count[slot] = 0
        self._sum[slot] += value
        self._count[slot] += 1

    def average(self, now: float) -> float | None:
        """The window's average at ``now``, or None when no bucket in it has a sample."""
        newest = math.floor(now / self.bucket_s)
        oldest = newest - self.nbuckets
        total = 0.0
        buckets = 0
        for idx, s, c in zip(self._idx, self._sum, self._count, strict=True):
            if oldest < idx <= newest and c:
                total += s / c
                buckets += 1
        return total / buckets if buckets else None

    def latest(self, now: float) -> float | None:
        """The mean of the newest bucket in the window that has a sample, or None."""
        newest = math.floor(now / self.bucket_s)
        best_idx = newest - self.nbuckets
        value: float | None = None
        for idx, s, c in zip(self._idx, self._sum, self._count, strict=True):
            if best_idx < idx <= newest and c:
                best_idx, value = idx, s / c
        return value
