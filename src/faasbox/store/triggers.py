"""Persistence of cron triggers and jobs: rows and the contract every backend keeps.

- ``put_trigger`` and ``update_trigger`` return once committed; a trigger's fire state
  (``next_fire_at``, ``last_run``, ``pending_fires``) lives in its row, so a restarted server
  resumes from it.
- ``create_job`` commits the job row and all its shard tasks in one transaction, and at most
  one job per idempotency key (a cron fire uses one, so a fire retried after a crash does not
  start a second job).
- ``finish_job`` changes only a ``running`` job: the first end wins.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from faasbox.store.queue import NewTask, TaskPolicy
from faasbox.triggers.cron import TriggerSpec


@dataclass
class TriggerRow:
    function: str
    name: str
    spec: TriggerSpec
    next_fire_at: float | None
    last_fire_at: float | None
    last_run: str | None
    pending_fires: int
    fires: int
    skipped: int
    created_at: float
    updated_at: float


@dataclass
class JobRow:
    id: str
    function: str
    version: int | None
    status: str  # running | succeeded | failed | cancelled
    spec: dict[str, Any]  # max_parallel, on_failure, retry, reduce, params
    shard_count: int
    created_at: float
    finished_at: float | None = None
    reduce_task_id: str | None = None
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    trace_id: str | None = None
    idempotency_key: str | None = None
    trigger_name: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status != "running"


JOB_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled"})


class TriggerStore(abc.ABC):
    # triggers
    @abc.abstractmethod
    async def put_trigger(self, row: TriggerRow, create_only: bool) -> bool:
        """Insert, or replace spec and state; False when ``create_only`` and it exists."""

    @abc.abstractmethod
    async def update_trigger(
        self, function: str, name: str, *, next_fire_at: float | None,
        last_fire_at: float | None, last_run: str | None, pending_fires: int,
        fired: int, skipped: int, now: float,
    ) -> None:
        """Store fire state; ``fired``/``skipped`` are added to the counters."""

    @abc.abstractmethod
    async def get_trigger(self, function: str, name: str) -> TriggerRow | None: ...

    @abc.abstractmethod
    async def list_triggers(self, function: str | None) -> list[TriggerRow]: ...

    @abc.abstractmethod
    async def delete_trigger(self, function: str, name: str) -> bool: ...

    @abc.abstractmethod
    async def delete_triggers(self, function: str) -> int: ...

    # jobs
    @abc.abstractmethod
    async def create_job(
        self, job: JobRow, shards: list[NewTask], policy: TaskPolicy, dedup_window_s: float,
    ) -> tuple[JobRow, bool]:
        """The job and its shard tasks in one transaction; ``(job, created)``."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRow | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, function: str | None, status: str | None, limit: int, before: str | None,
        tenant: str | None = None,
    ) -> list[JobRow]:
        """Newest first; ``before`` is a job id cursor (exclusive)."""

    @abc.abstractmethod
    async def running_jobs(self) -> list[JobRow]: ...

    @abc.abstractmethod
    async def set_reduce(self, job_id: str, task_id: str) -> None: ...

    @abc.abstractmethod
    async def finish_job(
        self, job_id: str, status: str, now: float, result: bytes | None = None,
        error_code: str | None = None, error_message: str | None = None,
    ) -> bool:
        """End a running job; False if it had already ended."""

    @abc.abstractmethod
    async def stop_job(
        self, job_id: str, status: str, now: float, error_code: str, error_message: str,
        shard_message: str,
    ) -> tuple[bool, list[str]]:
        """In one transaction: end a running job (cancelled or failed) and cancel its held
        and runnable shards (``shard_message``). Returns (whether this ended it, the ids of
        its running shards), so that no server ever sees its shards cancelled while the
        job still runs."""
