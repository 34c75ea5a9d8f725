"""Sharded batch jobs: a job is a set of shard tasks on the durable queue.

- Creating a job commits the job row and every shard task at once; shards beyond
  ``max_parallel`` are ``held`` and released as others end, lowest index first.
- A shard is an ordinary task (``source = shard``): retried per the job's retry policy, taken
  back from a dead instance or server like any task (shard failover). The handler sees
  ``context.shard = {"index": i, "count": n}``.
- A job's progress is always counted from its shard tasks, so a restarted server resumes it
  where it was: every running job is reconciled at start and by a periodic sweep.
- When every shard succeeded, the optional reduce function runs once (an idempotency key
  guards it) on ``{"job_id", "results": [...]}``; its result is the job's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.dispatcher import Dispatcher, TaskLifecycle
from faasbox.dispatcher.lifecycle import recheck_delays
from faasbox.events import Events, TaskFinished, TasksEnqueued
from faasbox.invoker import new_id, new_task_id, new_trace_id
from faasbox.registry import Registry
from faasbox.spec import check_name
from faasbox.store.queue import TERMINAL, NewTask, TaskPolicy, TaskQueue
from faasbox.store.triggers import JobRow, TriggerStore
from faasbox.tenancy.names import display, within
from faasbox.triggers.shards import MAX_SHARDS, shard_events

log = logging.getLogger(__name__)

MAX_REDUCE_EVENT = 64 * 2**20
FAILED = ("failed", "dead", "expired", "cancelled")


class JobSpec(BaseModel):
    """``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: str
    version: int | None = Field(None, ge=1, lt=2**31, description="pin a version; default: latest")
    shards: list[Any] | dict[str, Any] = Field(
        description="a list of shard events (one shard each), or {\"count\": N, \"params\":"
        " {...}}: N shards that all get params as their event")
    max_parallel: int | None = Field(
        None, ge=1, le=MAX_SHARDS, description="most shards queued or running at once")
    on_failure: Literal["stop", "continue"] = Field(
        "stop", description="stop: a failed shard cancels the rest and fails the job;"
        " continue: run every shard, the job fails at the end")
    retry: TaskPolicy = Field(default_factory=TaskPolicy,
                              description="retry policy of each shard")
    reduce: str | None = Field(None, description="function run once on all shard results")

    @field_validator("function", "reduce")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None:
            check_name(display(v))  # the API qualifies plain names with the tenant
        return v

    @model_validator(mode="after")
    def _shards(self) -> JobSpec:
        self.events()
        return self

    def events(self) -> list[bytes]:
        return shard_events(self.shards)


class JobService:
    def __init__(
        self, store: TriggerStore, queue: TaskQueue, dispatcher: Dispatcher,
        tasks: TaskLifecycle, registry: Registry, events: Events, clock: Clock,
        sweep_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self.queue = queue
        self.dispatcher = dispatcher
        self.tasks = tasks
        self.events = events
        self.registry = registry
        self.clock = clock
        self.sweep_interval_s = sweep_interval_s
        self._specs: dict[str, JobSpec] = {}
        self._dirty: set[str] = set()
        # jobs being stopped here: ended already, their waiters hear of it once the running
        # shards are cancelled too
        self._stopping: set[str] = set()
        self._kick = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.recheck_s = math.inf  # with several servers, a job may end on another (wait)
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for job in await self.store.running_jobs():
            self._dirty.add(job.id)
        self._loop = asyncio.create_task(self._advance_loop(), name="jobs")
        self._kick.set()

    async def close(self) -> None:
        await background.stop(self._loop)

    # -- creating ---------------------------------------------------------------------------
    async def create(
        self, spec: JobSpec, idempotency_key: str | None = None, trace_id: str | None = None,
        trigger_name: str | None = None,
    ) -> tuple[JobRow, bool]:
        row = await self.registry.resolve(spec.function, spec.version)  # 404 if unknown
        if spec.reduce is not None:
            await self.registry.get(within(spec.function, spec.reduce))
        events = spec.events()
        job_id = new_id()
        trace_id = trace_id or new_trace_id()
        count = len(events)
        first = count if spec.max_parallel is None else spec.max_parallel
        shards = [NewTask(new_task_id(), e, None, trace_id, source="shard", job_id=job_id,
                          shard_index=i, shard_count=count, held=i >= first,
                          trigger_name=trigger_name)
                  for i, e in enumerate(events)]
        stored = spec.model_dump(exclude={"shards"})
        if isinstance(spec.shards, dict):
            stored["params"] = spec.shards.get("params")
        job = JobRow(id=job_id, function=spec.function,
                     version=row.version if spec.version else None, status="running",
                     spec=stored, shard_count=count, created_at=self.clock.now(),
                     trace_id=trace_id,
                     # keys are per function, as for tasks (jobs.idempotency_key is unique
                     # across functions): a cron key names only the trigger
                     idempotency_key=None if idempotency_key is None
                     else f"{spec.function}:{idempotency_key}",
                     trigger_name=trigger_name)
        job, created = await self.store.create_job(job, shards, spec.retry,
                                                   self.dispatcher.dedup_window_s)
        if created:
            self.events.emit(TasksEnqueued(spec.function, count))
            self._specs[job.id] = spec
            self.dispatcher.notify(spec.function, job.created_at)
        return job, created

    async def _spec(self, job_id: str) -> JobSpec | None:
        spec = self._specs.get(job_id)
        if spec is None:
            job = await self.store.get_job(job_id)
            if job is None:
                return None
            spec = self._specs[job_id] = _spec_of(job)
        return spec

    # -- progress ---------------------------------------------------------------------------
    def on_task_finished(self, event: TaskFinished) -> None:
        if event.task.job_id is not None:
            self._dirty.add(event.task.job_id)
            self._kick.set()

    async def _advance_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sweep_interval_s):  # keeps a cancel (3.11)
                    await self._kick.wait()
            self._kick.clear()
            if not self._dirty:  # the periodic sweep: expiries and the like
                self._dirty.update(j.id for j in await self._running_safe())
            dirty, self._dirty = self._dirty, set()
            for job_id in dirty:
                try:
                    await self.advance(job_id)
                except Exception:
                    log.exception("advancing job %s failed", job_id)
                    self._dirty.add(job_id)

    async def _running_safe(self) -> list[JobRow]:
        try:
            return await self.store.running_jobs()
        except Exception:
            log.exception("listing running jobs failed")
            return []

    async def advance(self, job_id: str) -> None:
        """Release held shards, stop on failure, reduce or finish: whatever is due."""
        if job_id in self._stopping:
            return  # the stop ends it
        job = await self.store.get_job(job_id)
        if job is None or job.terminal:
            self._done(job_id)
            return
        spec = await self._spec(job_id)
        assert spec is not None
        counts = await self.queue.job_counts(job_id)
        failed = sum(counts.get(s, 0) for s in FAILED)
        if failed and spec.on_failure == "stop":
            await self._stop(job, "failed", "shard_failed",
                             await self._failure_message(job_id, failed))
            return
        active = sum(counts.get(s, 0) for s in ("queued", "running", "retry_wait"))
        held = counts.get("held", 0)
        if held and spec.max_parallel is not None and active < spec.max_parallel:
            n = await self.queue.release(job_id, spec.max_parallel - active, self.clock.now(),
                                         spec.retry.max_event_age_s)
            if n:
                self.dispatcher.notify(job.function, self.clock.now())
            return
        if held or active:
            return
        if failed:
            await self._end(job, "failed", error_code="shard_failed",
                            error_message=await self._failure_message(job_id, failed))
        elif spec.reduce is None:
            await self._end(job, "succeeded")
        else:
            await self._reduce(job, spec)

    async def _failure_message(self, job_id: str, failed: int) -> str:
        first = next((t for t in await self.queue.job_tasks(job_id, results=False)
                      if t.status in FAILED), None)
        msg = f"{failed} shard{'s' if failed != 1 else ''} failed"
        if first is not None:
            msg += f"; shard {first.shard_index}: {first.error_code}: {first.error_message}"
        return msg

    async def _reduce(self, job: JobRow, spec: JobSpec) -> None:
        assert spec.reduce is not None
        if job.reduce_task_id is not None:
            task = await self.queue.get(job.reduce_task_id)
            if task is None or task.status not in TERMINAL:
                return  # still running; its end wakes us
            if task.status == "succeeded":
                await self._end(job, "succeeded", result=task.result)
            else:
                await self._end(job, "failed", error_code="reduce_failed",
                                error_message=f"reduce {display(spec.reduce)} {task.status}:"
                                f" {task.error_code}: {task.error_message}")
            return
        # counted by the store first: thousands of results of megabytes each are never read
        size = await self.queue.job_results_size(job.id)
        event = b""
        if size <= MAX_REDUCE_EVENT:
            results = [orjson.Fragment(t.result or b"null")
                       for t in await self.queue.job_tasks(job.id)]
            event = orjson.dumps({"job_id": job.id, "function": display(job.function),
                                  "results": results})
            size = len(event)
        if size > MAX_REDUCE_EVENT:
            await self._end(job, "failed", error_code="reduce_input_too_large",
                            error_message=f"the shard results are {size} bytes; reduce"
                            f" takes at most {MAX_REDUCE_EVENT}")
            return
        new = NewTask(new_task_id(), event, f"job:{job.id}:reduce", job.trace_id, source="reduce",
                      job_id=job.id)
        [(row, _)] = await self.dispatcher.enqueue(within(job.function, spec.reduce), [new])
        await self.store.set_reduce(job.id, row.id)

    async def _stop(self, job: JobRow, status: str, code: str, message: str) -> None:
        verb = "cancelled" if status == "cancelled" else "stopped"
        self._stopping.add(job.id)
        try:
            # the job ends in the same write that cancels its waiting shards: no server's
            # advance sees cancelled shards of a running job and fails it first
            ended, running = await self.store.stop_job(
                job.id, status, self.clock.now(), code, message,
                f"the job was {verb}: {message}")
            if ended:
                log.info("job %s %s", job.id, status)
            await asyncio.gather(*(self._cancel_task(t) for t in running))
            self._done(job.id)
        finally:
            self._stopping.discard(job.id)

    async def _cancel_task(self, task_id: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.tasks.cancel(task_id)

    async def _end(self, job: JobRow, status: str, result: bytes | None = None,
                   error_code: str | None = None, error_message: str | None = None) -> None:
        if await self.store.finish_job(job.id, status, self.clock.now(), result, error_code,
                                       error_message):
            log.info("job %s %s", job.id, status)
        self._done(job.id)

    def _done(self, job_id: str) -> None:
        self._specs.pop(job_id, None)
        self.dispatcher.policies.forget_job(job_id)
        for fut in self._waiters.pop(job_id, []):
            if not fut.done():
                fut.set_result(None)

    # -- operations -------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> JobRow:
        job = await self.get(job_id)
        if not job.terminal:
            await self._stop(job, "cancelled", "cancelled", "cancelled by request")
        return await self.get(job_id)

    async def get(self, job_id: str) -> JobRow:
        job = await self.store.get_job(job_id)
        if job is None:
            raise errors.JobNotFound(f"no job {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout: float) -> JobRow:
        """The job once it ended, or as it is when ``timeout`` runs out (long poll)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        deadline = self.clock.monotonic() + timeout
        delays = recheck_delays(self.recheck_s)
        try:
            job = await self.get(job_id)
            while not job.terminal and not fut.done():
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, next(delays))):
                        await asyncio.shield(fut)
                job = await self.get(job_id)
            return job
        finally:
            waiters = self._waiters.get(job_id, [])
            if fut in waiters:
                waiters.remove(fut)


def _spec_of(job: JobRow) -> JobSpec:
    stored = dict(job.spec)
    params = stored.pop("params", None)
    return JobSpec(**stored, shards={"count": job.shard_count, "params": params})
