"""Durable asynchronous tasks: the queue contract, task rows and retry policy.

Contract of every :class:`TaskQueue` backend (``sqlite`` now; a PostgreSQL one must keep it):

- ``enqueue``/``enqueue_batch`` return only after the tasks are committed. A batch is one
  transaction: all of it or none.
- Idempotency: at most one task per ``(function, idempotency_key)`` within the dedup window;
  a second enqueue returns the first task with ``created=False``, also when both race.
- ``lease`` atomically moves runnable tasks (``queued`` or ``retry_wait`` whose ``run_at`` has
  come) to ``running``, increments ``attempts`` and sets ``lease_until``; a task is never leased
  twice at once. Tasks past ``expires_at`` are moved to ``expired`` instead of being leased.
- ``finish`` is fenced by the attempt number: a late report from an attempt whose lease was
  taken back changes nothing.
- ``recover`` returns tasks whose lease ran out (or whose owner is known dead) to the runnable
  set, or to ``dead`` when that was their last attempt. Guarantee: at-least-once execution.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from faasbox.delivery.model import Destinations
from faasbox.store.base import InvocationRecord

# redriven: a dead (failed, expired) task submitted again as a new task (``redriven_to``)
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired", "dead", "redriven"})
# held: a job shard waiting for a place within the job's max_parallel
STATUSES = frozenset({"held", "queued", "running", "retry_wait"}) | TERMINAL
SOURCES = frozenset({"async", "cron", "shard", "reduce", "chain", "destination", "topic",
                     "workflow"})
MAX_PRIORITY = 1000
MIN_EVENT_AGE_S = 1.0  # the shortest max_event_age_s
RetryOn = Literal["function_error", "timeout", "oom", "crash"]
ALL_RETRY_ON: list[RetryOn] = ["function_error", "timeout", "oom", "crash"]

# invocation error codes -> the retry_on category they belong to
ERROR_CATEGORY = {
    "function_error": "function_error",
    "response_too_large": "function_error",
    "timeout": "timeout",
    "out_of_memory": "oom",
    "instance_crashed": "crash",
    "preempted": "crash",
    "protocol_error": "crash",
    "init_error": "crash",
}


class TaskPolicy(BaseModel):
    """How a function's async tasks are retried and limited; changeable without a deploy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(3, ge=1, le=100)
    backoff_base_s: float = Field(1.0, ge=0, le=3600)
    backoff_cap_s: float = Field(300.0, ge=0, le=86400)
    max_event_age_s: float = Field(21600.0, ge=MIN_EVENT_AGE_S, le=7 * 86400)
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: list(ALL_RETRY_ON))
    interruptible: bool = Field(
        False, description="its tasks may be stopped when the node needs room for other work"
        " and are then retried; priced at the spot rate (docs/cost.md)")
    async_concurrency: int | None = Field(
        None, ge=1, le=10000, description="most tasks of this function running at once;"
        " default: max_instances x concurrency")
    destinations: Destinations = Field(
        default_factory=Destinations, description="where results go: on_success after a"
        " success, on_failure after the task ended dead or expired (docs/delivery.md)")

    @model_validator(mode="after")
    def _cap(self) -> TaskPolicy:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s cannot be below backoff_base_s")
        return self


def backoff_s(policy: TaskPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before the attempt after ``attempt`` (1-based): exponential with "equal jitter"
    (half fixed, half random), so retries spread out but never fire at once."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** (attempt - 1))
    r: float = (rng or random).random()
    return float(ceiling / 2 + ceiling / 2 * r)


@dataclass
class TaskRow:
    id: str
    function: str
    version: int | None
    status: str
    event: bytes
    idempotency_key: str | None
    attempts: int
    max_attempts: int
    created_at: float
    run_at: float
    expires_at: float
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    lease_owner: str | None = None
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    invocation_ids: list[str] = field(default_factory=list)
    trace_id: str | None = None
    cancel_requested: bool = False
    source: str = "async"  # async | cron | shard | reduce | chain
    job_id: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    trigger_name: str | None = None
    priority: int = 0
    redrive_of: str | None = None  # the task this one redrives
    redriven_to: str | None = None  # the task that redrove this one
    workflow_id: str | None = None
    workflow_step: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class NewTask:
    id: str
    event: bytes
    idempotency_key: str | None = None
    trace_id: str | None = None
    source: str = "async"
    job_id: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    trigger_name: str | None = None
    held: bool = False  # a job shard: runnable only once released
    run_at: float | None = None  # a delayed task: not before this (default: now)
    priority: int = 0  # higher first within the function's queue
    redrive_of: str | None = None
    workflow_id: str | None = None
    workflow_step: int | None = None


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a batch operation (redrive, cancel, purge) acts on; None: any."""

    tenant: str | None = None
    function: str | None = None  # qualified
    statuses: tuple[str, ...] = ()
    since: float | None = None  # finished (created, for unfinished tasks) at or after
    before: float | None = None  # finished before
    ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Failure:
    """How an attempt ended badly, and what happens next."""

    code: str
    message: str
    retry_at: float | None  # None: no more attempts
    final_status: str = "failed"  # when retry_at is None: failed | dead | cancelled | expired


class TaskQueue(abc.ABC):
    @abc.abstractmethod
    async def enqueue(
        self, function: str, tasks: list[NewTask], version: int | None, policy: TaskPolicy,
        now: float, dedup_window_s: float,
    ) -> list[tuple[TaskRow, bool]]:
        """Commit ``tasks`` in one transaction; ``[(row, created)]`` in the same order."""

    @abc.abstractmethod
    async def lease(
        self, function: str, limit: int, now: float, lease_s: float, owner: str,
    ) -> list[TaskRow]:
        """Take up to ``limit`` runnable tasks of ``function``, oldest ``run_at`` first."""

    @abc.abstractmethod
    async def succeed(
        self, task_id: str, attempt: int, result: bytes, invocation_id: str, now: float,
        record: InvocationRecord | None = None,
    ) -> bool:
        """Record a successful attempt (and its invocation ``record``, in the same write);
        False when the attempt no longer holds the task."""

    @abc.abstractmethod
    async def fail(
        self, task_id: str, attempt: int, failure: Failure, invocation_id: str | None,
        now: float, record: InvocationRecord | None = None,
    ) -> bool:
        """Record a failed attempt (and its invocation ``record``): back to ``retry_wait`` or
        to its final status."""

    @abc.abstractmethod
    async def give_back(self, task_id: str, attempt: int, run_at: float) -> bool:
        """Return a leased task unrun (no capacity after all); the attempt is not counted."""

    @abc.abstractmethod
    async def cancel(self, task_id: str, now: float) -> TaskRow | None:
        """Cancel a queued task now; mark a running one ``cancel_requested``. None if unknown."""

    @abc.abstractmethod
    async def recover(self, now: float, owner: str | None = None,
                      live_since: float | None = None) -> int:
        """Make tasks with an ended lease runnable again, and tasks leased by servers other
        than ``owner`` (this one): all of them (one server per store), or with
        ``live_since`` only those of servers without a heartbeat since then."""

    @abc.abstractmethod
    async def expire(self, now: float) -> int:
        """Move runnable tasks past their ``expires_at`` to ``expired``."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """When :meth:`recover` or :meth:`expire` may next have work: the earliest lease
        deadline of a running task or ``expires_at`` of a runnable one (None: neither)."""

    @abc.abstractmethod
    async def purge(self, before: float) -> int:
        """Delete terminal tasks finished before ``before`` (retention)."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRow | None: ...

    # jobs: a job's shards are tasks with its ``job_id``
    @abc.abstractmethod
    async def release(self, job_id: str, limit: int, now: float, max_event_age_s: float) -> int:
        """Make up to ``limit`` held shards of a job runnable, lowest index first."""

    @abc.abstractmethod
    async def job_counts(self, job_id: str) -> dict[str, int]:
        """A job's shards by status."""

    @abc.abstractmethod
    async def jobs_counts(self, job_ids: list[str]) -> dict[str, dict[str, int]]:
        """The shards of several jobs by status, in one query (job listings)."""

    @abc.abstractmethod
    async def jobs_started(self, job_ids: list[str]) -> dict[str, float]:
        """When the first shard of each job started (jobs none of whose shards did are left
        out), in one query."""

    @abc.abstractmethod
    async def job_tasks(self, job_id: str, results: bool = True) -> list[TaskRow]:
        """A job's shard tasks in shard order, with results unless ``results`` is False
        (events left out)."""

    @abc.abstractmethod
    async def job_results_page(self, job_id: str, first: int, max_shards: int,
                               max_bytes: int) -> list[TaskRow]:
        """A job's shard tasks from shard index ``first`` in shard order, with results: at
        most ``max_shards``, and no more than ``max_bytes`` of results in all, counted by the
        store before any is read (but always the first one)."""

    @abc.abstractmethod
    async def job_results_size(self, job_id: str) -> int:
        """The bytes of a job's shard results in all, counted by the store (none read)."""

    @abc.abstractmethod
    async def by_trace(self, trace_id: str) -> list[TaskRow]:
        """Tasks of one trace, oldest first (events left out)."""

    # -- batch operations and queue control (docs/tasks.md) ----------------------------------
    @abc.abstractmethod
    async def find(self, where: TaskFilter, limit: int) -> list[TaskRow]:
        """Tasks matching ``where``, oldest first (events left out)."""

    @abc.abstractmethod
    async def redrive(
        self, ids: list[str], policies: dict[str, TaskPolicy], now: float,
    ) -> list[tuple[TaskRow, TaskRow]]:
        """In one transaction: for each task that is still dead, failed or expired and not
        redriven yet, a new task with its event and fresh attempts (``redrive_of``); the old
        one becomes ``redriven`` (``redriven_to``). ``[(old, new)]``."""

    @abc.abstractmethod
    async def cancel_where(self, where: TaskFilter, now: float) -> tuple[list[TaskRow], list[str]]:
        """Cancel matching held, queued and waiting tasks now; mark running ones
        ``cancel_requested``. Returns (the tasks cancelled, the ids of running ones)."""

    @abc.abstractmethod
    async def purge_where(self, where: TaskFilter) -> int:
        """Delete matching terminal tasks."""

    @abc.abstractmethod
    async def depth(self) -> dict[str, tuple[int, float]]:
        """Runnable and waiting tasks by function: (count, oldest created_at)."""

    @abc.abstractmethod
    async def paused(self) -> set[str]:
        """Functions whose queue is paused."""

    @abc.abstractmethod
    async def set_paused(self, function: str, paused: bool, now: float) -> None: ...

    @abc.abstractmethod
    async def list(
        self, function: str | None, status: str | None, limit: int, before: str | None,
        tenant: str | None = None,
    ) -> list[TaskRow]:
        """Newest first; ``before`` is a task id cursor (exclusive); ``tenant`` keeps one
        tenant's tasks."""

    @abc.abstractmethod
    async def runnable_functions(self, now: float) -> dict[str, float]:
        """Functions with runnable or waiting tasks -> earliest ``run_at``."""

    @abc.abstractmethod
    async def next_run_at(self, function: str) -> float | None:
        """The earliest ``run_at`` of the function's runnable or waiting tasks, if any."""

    @abc.abstractmethod
    async def counts(self, function: str) -> dict[str, int]:
        """Tasks of a function by status."""

    @abc.abstractmethod
    async def unfinished(self) -> dict[str, int]:
        """Tasks not yet finished (held, queued, retrying, running) by function."""

    @abc.abstractmethod
    async def get_policy(self, function: str) -> TaskPolicy: ...

    @abc.abstractmethod
    async def put_policy(self, function: str, policy: TaskPolicy, now: float) -> None: ...
