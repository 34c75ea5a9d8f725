"""The Celery peer: one no-op task on a Redis broker, no result backend, results ignored.

Started as ``celery -A _peers_celery worker --pool prefork --concurrency P`` by ``peers.py``
(every other setting is Celery's default: prefetch multiplier 4, early acks, JSON).
"""

from __future__ import annotations

from celery import Celery

from _peers_common import REDIS_URL, mark_done

app = Celery("peers", broker=REDIS_URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop(i: int) -> None:
    mark_done()


def enqueue(i: int) -> None:
    """Enqueue one task: one call, one message."""
    noop.delay(i)
