"""Topics: named channels of a tenant that functions subscribe to.

Publishing a message enqueues one durable task per matching subscriber (at least once), each
under the idempotency key ``topic:<topic>:<message id>`` in the subscriber's queue: publishing
the same message id again (a client retry, a destination fired again after a crash) adds no
second task. A subscription's filter matches the message's fields by equality (dotted paths
reach into nested objects); a message that is not an object matches only an empty filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from faasbox import errors
from faasbox.clock import Clock
from faasbox.dispatcher import Dispatcher
from faasbox.invoker import new_id, new_task_id, new_trace_id
from faasbox.store.queue import NewTask
from faasbox.store.relational.delivery import SqlDeliveryStore, Subscription
from faasbox.tenancy.names import display, qualify, tenant_of

TOPIC_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_FILTER_KEYS = 16
MESSAGE_ID_MAX = 200


def check_topic(name: str) -> str:
    if not TOPIC_RE.match(name):
        raise errors.InvalidSpec(f"invalid topic name {name!r}: use 1-63 lowercase letters,"
                                 " digits, '-', '_' or '.', starting with a letter or digit")
    return name


def check_filter(flt: Any) -> dict[str, Any]:
    if flt is None:
        return {}
    if not isinstance(flt, dict) or len(flt) > MAX_FILTER_KEYS:
        raise errors.InvalidSpec(f"a filter is an object of at most {MAX_FILTER_KEYS}"
                                 " field: value pairs")
    for key in flt:
        if not key or any(not part for part in key.split(".")):
            raise errors.InvalidSpec(f"filter field {key!r} is not a field path")
    return dict(flt)


def matches(flt: dict[str, Any], message: Any) -> bool:
    for path, want in flt.items():
        value = message
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        if value != want or type(value) is not type(want):
            return False
    return True


class Topics:
    def __init__(self, store: SqlDeliveryStore, dispatcher: Dispatcher,
                 clock: Clock) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock

    async def create(self, topic: str) -> bool:
        check_topic(display(topic))
        return await self.store.create_topic(topic, self.clock.now())

    async def require(self, topic: str) -> None:
        if await self.store.topic(topic) is None:
            raise errors.NotFound(f"no topic {display(topic)!r}")

    async def subscribe(self, topic: str, function: str, flt: Any) -> bool:
        await self.require(topic)
        return await self.store.subscribe(
            Subscription(topic, function, check_filter(flt), self.clock.now()))

    async def publish(
        self, topic: str, message: bytes, message_id: str | None = None,
        trace_id: str | None = None, admit: Callable[[int], None] | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        """Enqueue the message for every matching subscriber; (message id, the tasks).
        ``admit(n)`` first, with the number of tasks it will make (it raises to refuse)."""
        await self.require(topic)
        message_id = message_id or new_id()
        if not 0 < len(message_id) <= MESSAGE_ID_MAX:
            raise errors.InvalidRequest(f"a message id is 1-{MESSAGE_ID_MAX} characters")
        decoded = orjson.loads(message)
        key = f"topic:{display(topic)}:{message_id}"
        out = []
        subs = [s for s in await self.store.subscriptions(topic) if matches(s.filter, decoded)]
        if admit is not None:
            admit(len(subs))
        for sub in subs:
            new = NewTask(new_task_id(), message, key, trace_id or new_trace_id(), source="topic")
            [(row, created)] = await self.dispatcher.enqueue(sub.function, [new])
            out.append({"function": display(sub.function), "task_id": row.id,
                        "created": created})
        return message_id, out


def qualified_topic(tenant: str, name: str) -> str:
    return qualify(tenant, check_topic(name))


def topic_tenant(topic: str) -> str:
    return tenant_of(topic)
