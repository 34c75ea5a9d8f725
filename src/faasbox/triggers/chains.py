"""Chains: a function's ``on_success`` starts the next function with its result.

The next task is enqueued before the finished one is marked succeeded, under the key
``chain:<task or invocation id>``: if the server dies in between, the retried attempt finds
the chained task already queued instead of starting a second one. Job shards do not chain
(their results go to the job and its reduce function, which may chain on).
"""

from __future__ import annotations

from typing import Any

from faasbox.dispatcher import Dispatcher
from faasbox.invoker import Outcome
from faasbox.store import VersionRow


class Chains:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def after_success(self, row: VersionRow, outcome: Outcome,
                            extra: dict[str, Any]) -> None:
        nxt = row.spec.get("on_success")
        if not nxt or "shard" in extra:
            return
        cause = extra.get("task_id") or outcome.record.id
        await self.dispatcher.submit(nxt, [outcome.payload], [f"chain:{cause}"],
                                     trace_id=outcome.record.trace_id, source="chain")
