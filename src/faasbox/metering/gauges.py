"""The job gauges of ``/metrics``, read from the store at each scrape."""

from __future__ import annotations

from faasbox.metrics import Metrics, labels
from faasbox.store.database import Conn
from faasbox.store.relational.functions import SqlStore


async def refresh(store: SqlStore, metrics: Metrics) -> None:
    def q(conn: Conn) -> list[tuple[str, str, int]]:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT function, status, COUNT(*) FROM jobs GROUP BY function, status")]

    jobs = await store.read(q)
    metrics.jobs.clear()
    for function, status, n in jobs:
        metrics.jobs.labels(*labels(function), status).set(n)
