"""The platform's events: what one component tells the others, wired by ``platform.py``.

A component publishes an event without knowing who listens; a listener subscribes to the
event's class. Two ways to send one:

- ``await events.publish(event)`` runs every listener in turn and awaits the ones that are
  coroutines; an exception of a listener reaches the publisher. For what must happen before
  the publisher carries on (a chained task is enqueued before the task is marked succeeded).
- ``events.emit(event)`` is a notification: listeners run now; a coroutine is run as a
  background task; an exception is logged, never raised. For hot paths and for news that the
  publisher does not wait on.

Events are frozen dataclasses; listeners must not change what they carry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from faasbox.node import Instance
    from faasbox.store import InvocationRecord, VersionRow
    from faasbox.store.queue import TaskRow

log = logging.getLogger(__name__)


class Event:
    """Base of every event."""


@dataclass(frozen=True)
class InvocationFinished(Event):
    """An invocation ended (sync call, task attempt, shard, cron fire); published (awaited)
    before its caller hears of it. ``payload`` is the result JSON when it succeeded."""

    row: VersionRow
    record: InvocationRecord
    payload: bytes | None
    extra: dict[str, Any] = field(default_factory=dict)  # task_id, attempt, shard, trace_id


@dataclass(frozen=True)
class InvocationThrottled(Event):
    """A call of ``function`` was refused with 429 (over a concurrency limit, or no slot
    within the acquire timeout)."""

    function: str


@dataclass(frozen=True)
class InstanceRetired(Event):
    """An instance was taken out of service (its memory given back); it is being stopped.
    Emitted before its process is killed, so it can still be measured."""

    instance: Instance


@dataclass(frozen=True)
class TaskFinished(Event):
    """A task reached a terminal state (succeeded, failed, dead, expired, cancelled)."""

    task: TaskRow
    status: str
    result: bytes | None


@dataclass(frozen=True)
class TasksEnqueued(Event):
    """``count`` new tasks of ``function`` were committed to the queue."""

    function: str
    count: int


@dataclass(frozen=True)
class SlotReleased(Event):
    """An instance slot of ``function`` was given back (capacity for queued tasks)."""

    function: str


@dataclass(frozen=True)
class FunctionDeployed(Event):
    """``row`` is the function's new latest version."""

    row: VersionRow


@dataclass(frozen=True)
class FunctionDeleted(Event):
    """A function and its versions are gone; everything it owns must go with it."""

    function: str


@dataclass(frozen=True)
class ScheduleChanged(Event):
    """The known upcoming fires of a function's triggers (epoch seconds) and how many
    instances each fire needs; ``fire_times`` is empty when none are left."""

    function: str
    fire_times: Sequence[float]
    instances: int = 1


@dataclass(frozen=True)
class ControlChanged(Event):
    """A control-plane change was made (what the audit log records): ``action`` as
    ``tenant.update``, ``trigger.create``, ...; ``target`` what it changed (a function's
    plain name within ``tenant`` for ``function.*``)."""

    tenant: str
    action: str
    target: str


@dataclass(frozen=True)
class CancelRequested(Event):
    """A running task was asked to stop, and it runs on another server."""

    task_id: str


E = TypeVar("E", bound=Event)
Listener = Callable[[E], Awaitable[None] | None]


class Events:
    def __init__(self) -> None:
        self._listeners: dict[type[Event], list[Callable[[Any], Awaitable[None] | None]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def subscribe(self, kind: type[E], listener: Listener[E]) -> None:
        self._listeners.setdefault(kind, []).append(listener)

    def listeners(self, kind: type[Event]) -> int:
        return len(self._listeners.get(kind, ()))

    async def publish(self, event: Event) -> None:
        for listener in self._listeners.get(type(event), ()):
            result = listener(event)
            if result is not None:
                await result

    def emit(self, event: Event) -> None:
        for listener in self._listeners.get(type(event), ()):
            try:
                result = listener(event)
            except Exception:
                log.exception("a listener of %s failed", type(event).__name__)
                continue
            if result is not None:
                task = asyncio.ensure_future(self._guard(event, result))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    @staticmethod
    async def _guard(event: Event, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            log.exception("a listener of %s failed", type(event).__name__)

    async def drain(self) -> None:
        """Wait for the background listeners that ``emit`` started (at close)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
