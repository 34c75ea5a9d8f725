"""Chains: a function's ``on_success`` starts the next function with its result.

The next task is enqueued before the finished one is marked succeeded, under the key
``chain:<task or invocation id>``: if the server dies in between, the retried attempt finds
the chained task already queued instead of starting a second one. Job shards do not chain
(their results go to the job and its reduce function, which may chain on).
"""

from __future__ import annotations

from collections.abc import Awaitable

from faasbox.dispatcher import Dispatcher
from faasbox.events import InvocationFinished
from faasbox.tenancy.names import within


class Chains:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def on_invocation(self, event: InvocationFinished) -> Awaitable[None] | None:
        """Subscribed to :class:`InvocationFinished`; awaited before the caller hears."""
        nxt = event.row.spec.on_success
        if not nxt or event.payload is None or "shard" in event.extra:
            return None
        return self._next(nxt, event)

    async def _next(self, nxt: str, event: InvocationFinished) -> None:
        cause = event.extra.get("task_id") or event.record.id
        assert event.payload is not None
        await self.dispatcher.submit(within(event.row.function, nxt), [event.payload],
                                     [f"chain:{cause}"], trace_id=event.record.trace_id,
                                     source="chain")
