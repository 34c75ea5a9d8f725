"""The cron trigger service: turns schedules into tasks (or jobs) on the durable queue.

Every fire is enqueued with the idempotency key ``cron:<trigger>:<scheduled time>`` before
the trigger's ``next_fire_at`` moves past it. A crash between the two makes the restarted
server plan the same fire again, and the key turns it into the task already queued: a
restart neither loses a fire nor makes it twice. Fires missed while the server was down are
handled by the trigger's misfire policy, a still-running previous fire by its overlap policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.dispatcher import Dispatcher, TaskLifecycle
from faasbox.events import Events, FunctionDeleted, ScheduleChanged, TaskFinished
from faasbox.invoker import new_id
from faasbox.registry import Registry
from faasbox.spec import check_name
from faasbox.store.queue import TaskQueue
from faasbox.store.triggers import TriggerRow, TriggerStore
from faasbox.tenancy.names import display, tenant_of, within
from faasbox.triggers.cron import TriggerSpec, fire_event, plan
from faasbox.triggers.jobs import JobService, JobSpec
from faasbox.triggers.shards import shard_count

log = logging.getLogger(__name__)

MAX_SLEEP_S = 30.0  # re-plan at least this often (clock jumps, pending fires)
PREWARM_HORIZON = 3  # upcoming fires told to the scaler per trigger


class TriggerService:
    def __init__(
        self, store: TriggerStore, queue: TaskQueue, dispatcher: Dispatcher,
        tasks: TaskLifecycle, jobs: JobService, registry: Registry, events: Events,
        clock: Clock, admit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.admit = admit  # the tenant's rate and max_queued_tasks, as for submitted tasks
        self.store = store
        self.queue = queue
        self.dispatcher = dispatcher
        self.tasks = tasks
        self.jobs = jobs
        self.registry = registry
        self.events = events
        self.clock = clock
        self._triggers: dict[tuple[str, str], TriggerRow] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for row in await self.store.list_triggers(None):
            self._triggers[(row.function, row.name)] = row
        await self.tick()
        self._loop = asyncio.create_task(self._run(), name="cron")

    async def close(self) -> None:
        await background.stop(self._loop)

    async def reload(self, _: str = "") -> None:
        """Read every trigger again (another server changed or fired them)."""
        rows = await self.store.list_triggers(None)
        async with self._lock:
            self._triggers = {(row.function, row.name): row for row in rows}
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = await self.tick()
            except Exception:
                log.exception("cron tick failed")
                next_at = self.clock.now() + 1.0
            delay = MAX_SLEEP_S if next_at is None else next_at - self.clock.now()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(MAX_SLEEP_S, max(0.0, delay))):  # keeps a cancel
                    await self._wake.wait()

    async def tick(self) -> float | None:
        """Make every fire due by now; returns the time of the next one."""
        async with self._lock:
            now = self.clock.now()
            for key in list(self._triggers):
                row = self._triggers.get(key)
                if row is not None and row.spec.enabled:
                    await self._due(row, now)
            times = [r.next_fire_at for r in self._triggers.values()
                     if r.next_fire_at is not None and r.spec.enabled]
            return min(times) if times else None

    async def _due(self, row: TriggerRow, now: float) -> None:
        fire = plan(row.spec, row.next_fire_at, now)
        fired = skipped = 0
        pending = row.pending_fires
        last_run, last_fire = row.last_run, row.last_fire_at
        # a fire queued behind a run that has ended since
        while pending and not await self._active(row, last_run):
            if not self._admitted(row):
                break  # still queued: tried again at the next fire
            last_run = await self._start(row, last_fire or now, after=last_run)
            pending -= 1
            fired += 1
        for t in fire.fires:
            if await self._active(row, last_run):
                overlap = row.spec.overlap
                if overlap == "skip":
                    skipped += 1
                    continue
                if overlap == "queue":
                    pending = min(pending + 1, row.spec.max_catchup)
                    last_fire = t
                    continue
                if overlap == "replace":
                    await self._cancel(row, last_run)
            if not self._admitted(row):
                skipped += 1
                last_fire = t
                continue
            last_run = await self._start(row, t)
            last_fire = t
            fired += 1
        if fire.fires or fired or fire.next_fire_at != row.next_fire_at or fire.missed:
            if fire.missed:
                log.warning("trigger %s/%s: %d missed fires skipped (misfire=%s)",
                            row.function, row.name, fire.missed, row.spec.misfire)
            await self.store.update_trigger(
                row.function, row.name, next_fire_at=fire.next_fire_at, last_fire_at=last_fire,
                last_run=last_run, pending_fires=pending, fired=fired,
                skipped=skipped + fire.missed, now=now)
            row.next_fire_at, row.last_fire_at, row.last_run = (fire.next_fire_at, last_fire,
                                                                 last_run)
            row.pending_fires = pending
            row.fires += fired
            row.skipped += skipped + fire.missed
            self._tell_schedule(row.function)

    def _admitted(self, row: TriggerRow) -> bool:
        """Whether the tenant's rate and queue take this fire's tasks (a job's shards); a
        fire they do not take is skipped, and logged."""
        if self.admit is None:
            return True
        n = 1 if row.spec.job is None else shard_count(row.spec.job.shards)
        try:
            self.admit(tenant_of(row.function), n)
        except errors.OverLimit as exc:
            log.warning("trigger %s/%s: fire skipped: %s", display(row.function), row.name,
                        exc.message)
            return False
        return True

    async def _start(self, row: TriggerRow, scheduled: float, after: str | None = None) -> str:
        """Enqueue one fire (idempotently); the id of the task or job it made. A fire that
        waited for run ``after`` to end is keyed by that run: one per ended run."""
        key = f"cron:{row.name}:" + (f"after:{after}" if after else f"{scheduled:.3f}")
        event = fire_event(row.spec, display(row.function), row.name, scheduled)
        if row.spec.job is not None:
            tpl = row.spec.job
            retry = tpl.retry or await self.dispatcher.policies.of_function(row.function)
            spec = JobSpec(function=row.function, shards=tpl.shards,
                           max_parallel=tpl.max_parallel, on_failure=tpl.on_failure,
                           retry=retry,
                           reduce=None if tpl.reduce is None else within(row.function, tpl.reduce))
            job, _ = await self.jobs.create(spec, idempotency_key=key, trigger_name=row.name)
            return job.id
        [(task, _)] = await self.dispatcher.submit(
            row.function, [orjson.dumps(event)], [key], source="cron", trigger_name=row.name)
        return task.id

    async def _active(self, row: TriggerRow, run_id: str | None) -> bool:
        if run_id is None:
            return False
        if row.spec.job is not None:
            job = await self.store.get_job(run_id)
            return job is not None and not job.terminal
        task = await self.queue.get(run_id)
        return task is not None and not task.terminal

    async def _cancel(self, row: TriggerRow, run_id: str | None) -> None:
        if run_id is None:
            return
        with contextlib.suppress(errors.NotFound):
            if row.spec.job is not None:
                await self.jobs.cancel(run_id)
            else:
                await self.tasks.cancel(run_id)

    def on_task_finished(self, event: TaskFinished) -> None:
        task = event.task
        if task.trigger_name is None:
            return
        row = self._triggers.get((task.function, task.trigger_name))
        if row is not None and row.pending_fires:
            self._wake.set()

    def _tell_schedule(self, function: str) -> None:
        now = self.clock.now()
        times: list[float] = []
        instances = 1
        for row in self._triggers.values():
            if row.function == function and row.spec.enabled and row.next_fire_at:
                times.extend(row.spec.schedule().upcoming(now, PREWARM_HORIZON))
                if row.spec.job is not None:  # a job fire runs shards side by side
                    shards = row.spec.job.shards
                    count = len(shards) if isinstance(shards, list) else int(shards["count"])
                    instances = max(instances, min(count, row.spec.job.max_parallel or count))
        self.events.emit(ScheduleChanged(function, sorted(times), instances))

    # -- CRUD -------------------------------------------------------------------------------
    async def put(self, function: str, name: str | None, spec: TriggerSpec,
                  create_only: bool) -> TriggerRow:
        await self.registry.get(function)  # 404 for an unknown function
        if spec.job is not None:  # the job it would start must be valid now, not at 2 am
            if spec.job.reduce is not None:
                try:  # a plain name: the reduce runs in the trigger's own tenant
                    check_name(spec.job.reduce)
                except errors.InvalidSpec as exc:
                    raise errors.InvalidSpec(f"job.reduce: {exc.message}") from None
                await self.registry.get(within(function, spec.job.reduce))
        now = self.clock.now()
        async with self._lock:
            name = name or f"cron-{new_id()[:8]}"
            old = self._triggers.get((function, name))
            if old is not None and create_only:
                raise errors.Conflict(
                    f"function {display(function)!r} already has a trigger {name!r}")
            same_schedule = old is not None and (old.spec.cron, old.spec.timezone,
                                                 old.spec.enabled) == (
                spec.cron, spec.timezone, spec.enabled)
            next_at = (old.next_fire_at if same_schedule and old else
                       spec.schedule().after(now) if spec.enabled else None)
            row = TriggerRow(
                function=function, name=name, spec=spec, next_fire_at=next_at,
                last_fire_at=old.last_fire_at if old else None,
                last_run=old.last_run if old else None,
                pending_fires=old.pending_fires if old else 0, fires=old.fires if old else 0,
                skipped=old.skipped if old else 0, created_at=old.created_at if old else now,
                updated_at=now)
            if not await self.store.put_trigger(row, create_only):
                raise errors.Conflict(
                    f"function {display(function)!r} already has a trigger {name!r}")
            self._triggers[(function, name)] = row
        self._tell_schedule(function)
        self._wake.set()
        return row

    async def update(self, function: str, name: str, changes: dict[str, Any]) -> TriggerRow:
        old = self.get(function, name)
        try:
            spec = TriggerSpec(**{**old.spec.model_dump(exclude_unset=False), **changes})
        except ValueError as exc:
            raise errors.InvalidSpec(str(exc)) from None
        return await self.put(function, name, spec, create_only=False)

    def get(self, function: str, name: str) -> TriggerRow:
        row = self._triggers.get((function, name))
        if row is None:
            raise errors.TriggerNotFound(f"function {display(function)!r} has no trigger {name!r}")
        return row

    def list(self, function: str | None) -> list[TriggerRow]:
        return sorted((r for r in self._triggers.values()
                       if function is None or r.function == function),
                      key=lambda r: (r.function, r.name))

    async def delete(self, function: str, name: str) -> None:
        async with self._lock:
            if not await self.store.delete_trigger(function, name):
                raise errors.TriggerNotFound(
                    f"function {display(function)!r} has no trigger {name!r}")
            self._triggers.pop((function, name), None)
        self._tell_schedule(function)

    async def on_function_deleted(self, event: FunctionDeleted) -> None:
        await self.delete_function(event.function)

    async def delete_function(self, function: str) -> None:
        async with self._lock:
            await self.store.delete_triggers(function)
            for key in [k for k in self._triggers if k[0] == function]:
                del self._triggers[key]
        self._tell_schedule(function)
