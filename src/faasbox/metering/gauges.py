"""The task, queue and job gauges of ``/metrics``, read from the store at each scrape."""

from __future__ import annotations

import sqlite3

from faasbox.metrics import Metrics, labels
from faasbox.store.sqlite import SqliteStore

WAITING = ("queued", "retry_wait")


async def refresh(store: SqliteStore, metrics: Metrics, now: float) -> None:
    def q(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, int, float]],
                                             list[tuple[str, str, int]]]:
        tasks = conn.execute("SELECT function, status, COUNT(*), MIN(created_at) FROM tasks"
                             " GROUP BY function, status").fetchall()
        jobs = conn.execute("SELECT function, status, COUNT(*) FROM jobs"
                            " GROUP BY function, status").fetchall()
        return [tuple(r) for r in tasks], [tuple(r) for r in jobs]

    tasks, jobs = await store.read(q)
    for gauge in (metrics.tasks, metrics.queue_depth, metrics.queue_oldest, metrics.jobs):
        gauge.clear()
    depth: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for function, status, n, first in tasks:
        metrics.tasks.labels(*labels(function), status).set(n)
        if status in WAITING:
            depth[function] = depth.get(function, 0) + n
            oldest[function] = min(oldest.get(function, first), first)
    for function, n in depth.items():
        metrics.queue_depth.labels(*labels(function)).set(n)
        metrics.queue_oldest.labels(*labels(function)).set(max(0.0, now - oldest[function]))
    for function, status, n in jobs:
        metrics.jobs.labels(*labels(function), status).set(n)
