"""The Dramatiq peer: one no-op actor on a Redis broker, no results middleware.

Started as ``dramatiq _peers_dramatiq --processes P --threads T`` by ``peers.py`` (every
other setting is Dramatiq's default: its default middleware, prefetch 2 x threads, acks after
the task ran).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from _peers_common import REDIS_URL, mark_done

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor
def noop(i: int) -> None:
    mark_done()


def enqueue(i: int) -> None:
    """Enqueue one task: one call, one message."""
    noop.send(i)
