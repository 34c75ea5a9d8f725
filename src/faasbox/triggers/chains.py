"""Chains: a function's ``on_success`` starts the next function with its result.

The next task is enqueued before the finished one is marked succeeded, under the key
``chain:<task or invocation id>``: if the server dies in between, the retried attempt finds
the chained task already queued instead of starting a second one. Job shards do not chain
(their results go to the job and its reduce function, which may chain on).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from faasbox.dispatcher import Dispatcher
from faasbox.events import InvocationFinished
from faasbox.queue import TaskQueue
from faasbox.tenancy.names import within

log = logging.getLogger(__name__)

MAX_HOPS = 16  # chained tasks in one trace; deploys refuse cycles, this stops any other


class Chains:
    def __init__(self, dispatcher: Dispatcher, queue: TaskQueue, max_hops: int = MAX_HOPS,
                 ) -> None:
        self.dispatcher = dispatcher
        self.queue = queue
        self.max_hops = max_hops

    def on_invocation(self, event: InvocationFinished) -> Awaitable[None] | None:
        """Subscribed to :class:`InvocationFinished`; awaited before the caller hears."""
        nxt = event.row.spec.on_success
        if not nxt or event.payload is None or "shard" in event.extra:
            return None
        return self._next(nxt, event)

    async def _next(self, nxt: str, event: InvocationFinished) -> None:
        cause = event.extra.get("task_id") or event.record.id
        assert event.payload is not None
        trace = event.record.trace_id
        if trace is not None:
            hops = sum(1 for t in await self.queue.by_trace(trace) if t.source == "chain")
            if hops >= self.max_hops:
                log.warning("chain of trace %s stops at %s: %d chained tasks already (the"
                            " limit)", trace, nxt, hops)
                return
        await self.dispatcher.submit(within(event.row.function, nxt), [event.payload],
                                     [f"chain:{cause}"], trace_id=event.record.trace_id,
                                     source="chain")
