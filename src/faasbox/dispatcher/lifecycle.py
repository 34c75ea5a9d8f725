"""The task lifecycle: runs a leased task, records how it ended, classifies failures for a
retry, cancels and long-polls.

A leased task runs on an instance through the invoker. Its end is written to the queue fenced
by its attempt: succeeded; back to the queue (the function was at capacity: no attempt is
counted); ``retry_wait`` with a backoff when its policy retries that kind of failure; or a
terminal failure (``failed``, ``dead`` after the last attempt, ``expired`` when no retry fits
before ``max_event_age_s``, ``cancelled``). A terminal end is announced as a
:class:`~faasbox.events.TaskFinished` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from faasbox import errors
from faasbox.clock import Clock
from faasbox.dispatcher.policies import Policies
from faasbox.events import CancelRequested, Events, TaskFinished
from faasbox.invoker import Invoker, new_request_id
from faasbox.node import Instance
from faasbox.registry import Registry
from faasbox.store.queue import ERROR_CATEGORY, Failure, TaskQueue, TaskRow, backoff_s

GIVE_BACK_DELAY_S = 1.0
FIRST_RECHECK_S = 0.005
# A function whose runs are short gets leased tasks held here, started the moment a run ends
# (no lease round trip between two runs). Held longer than AHEAD_MAX_WAIT_S, one goes back.
AHEAD_MAX_MS = 50.0
AHEAD_MAX_WAIT_S = 2.0
AHEAD_MIN, AHEAD_MOST = 4, 64
# ... and each of its instances that runs calls in order takes more, sent ahead: as many as
# run in about PIPELINE_WAIT_MS (by the function's recent calls), at least 1, at most
# PIPELINE_MOST. An instance with frames waiting runs them back to back instead of sleeping
# between two, so the server's write does not have to wake it. (At 10 ms and 16 the server's
# loop still slept a fifth of the time, waiting on instances: +7 % tasks/s at 30 and 32.)
PIPELINE_WAIT_MS = 30.0
PIPELINE_MOST = 32
T = TypeVar("T")
log = logging.getLogger(__name__)

# told when a run ended: (task, when it is runnable again or None)
Done = Callable[[TaskRow, float | None], None]


def pipeline_depth(run_ms: float | None, call_ms: float | None, ordered: bool) -> int:
    """How many calls to send an instance ahead of its running ones: none unless it runs calls
    in order and the function is short (:func:`_short`); then as many as its calls
    (``call_ms``, on the instance) run in about ``PIPELINE_WAIT_MS``, 1 to ``PIPELINE_MOST``,
    so that the last one sent does not wait long."""
    if not ordered or not _short(run_ms, call_ms):
        return 0
    call = AHEAD_MAX_MS if call_ms is None else max(call_ms, 0.001)
    return max(1, min(PIPELINE_MOST, int(PIPELINE_WAIT_MS / call)))


def _short(run_ms: float | None, call_ms: float | None) -> bool:
    """Whether a function's calls are short enough to hold or send tasks ahead for: by their
    time on the instance, or by its runs (lease to end) until a call is timed. Not by runs
    once calls are timed: a run counts its wait behind the calls sent ahead of it, and under
    load that switched both off."""
    ms = call_ms if call_ms is not None else run_ms
    return ms is not None and ms <= AHEAD_MAX_MS


def _average(averages: dict[str, float], function: str, value: float) -> None:
    """Move ``function``'s moving average toward ``value`` (a fifth of the way)."""
    last = averages.get(function)
    averages[function] = value if last is None else 0.8 * last + 0.2 * value


def recheck_delays(most_s: float) -> Iterator[float]:
    """How long a long poll waits for its wake-up before it reads again. One server wakes its
    waiters itself (``most_s`` infinite: never). With several servers, what it waits for may
    end on another, which wakes nobody here: after 5 ms, then twice as long each time, up to
    ``most_s`` (most tasks are short)."""
    delay = FIRST_RECHECK_S if math.isfinite(most_s) else math.inf
    while True:
        yield delay
        delay = min(delay * 2, most_s)


class TaskLifecycle:
    def __init__(self, queue: TaskQueue, registry: Registry, invoker: Invoker,
                 policies: Policies, events: Events, clock: Clock) -> None:
        self.queue = queue
        self.registry = registry
        self.invoker = invoker
        self.policies = policies
        self.events = events
        # a waiter reads its task again at most this far apart: with several servers, the
        # one that finishes it may be another (one server wakes its waiters itself)
        self.recheck_s = math.inf
        self.clock = clock
        self.running: dict[str, asyncio.Task[None]] = {}
        self.acquiring: Counter[str] = Counter()  # leased, not yet on an instance
        self.running_by_function: Counter[str] = Counter()
        # task id -> the instance running it and the invocation's id
        self._instances: dict[str, tuple[Instance, str]] = {}
        self._cancelling: set[str] = set()
        self._writing: set[str] = set()  # runs over, their ends being written
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.started = 0
        self.running_mb = 0.0  # memory the running tasks hold (for fair shares)
        # leased tasks held to start when a run of their function ends: (task, done, cost,
        # held since)
        self.ahead: dict[str, deque[tuple[TaskRow, Done, float, float]]] = {}
        self.run_ms: dict[str, float] = {}  # a function's recent run time (moving average)
        # ... and its calls' time on the instance (their records' duration), moving average
        self.call_ms: dict[str, float] = {}
        self.ordered: dict[str, bool] = {}  # its last instance runs calls in order
        self._background: set[asyncio.Future[None]] = set()  # held tasks going back
        self.may_start: Callable[[str], bool] = lambda function: True  # false: paused
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- running ----------------------------------------------------------------------------
    def start(self, task: TaskRow, done: Done, cost_mb: float = 0.0) -> None:
        """Run a leased task in the background; ``done`` hears when it ended. ``cost_mb``:
        the memory it holds while it runs."""
        self.started += 1
        self.acquiring[task.function] += 1
        self.running_by_function[task.function] += 1
        self.running_mb += cost_mb
        # the loop's own create_task: no lookup of the running loop per task
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self.running[task.id] = loop.create_task(self._run(task, done, cost_mb),
                                                 name=f"task-{task.id}")

    def pipeline(self, function: str) -> int:
        """Calls of ``function`` an instance may take beyond its concurrency, sent ahead."""
        return pipeline_depth(self.run_ms.get(function), self.call_ms.get(function),
                              self.ordered.get(function, False))

    def ahead_room(self, function: str) -> int:
        """How many more leased tasks of ``function`` to hold here: for a function whose runs
        are short, two per call in a slot or one per running task, whichever is more (at least
        ``AHEAD_MIN``, at most ``AHEAD_MOST``), leased again only once half are gone, so that
        leases come in batches. (Two per running task counted those sent ahead twice: the
        rounds grew with the pipeline, and a long round delays the sync calls behind it.)"""
        running = self.running_by_function[function]
        if not _short(self.run_ms.get(function), self.call_ms.get(function)) or running == 0:
            return 0  # held tasks start when a run ends: with none running, none would
        in_slots = math.ceil(running / (1 + self.pipeline(function)))
        target = min(AHEAD_MOST, max(AHEAD_MIN, 2 * in_slots, running))
        held = len(self.ahead.get(function, ()))
        return target - held if held <= target // 2 else 0

    def stranded(self) -> bool:
        """Whether a function has held tasks and no run that would start them."""
        return any(not self.running_by_function[f] for f in self.ahead)

    def hold(self, task: TaskRow, done: Done, cost_mb: float = 0.0) -> None:
        """Keep a leased task to start when a run of its function ends (:meth:`start_held`)."""
        self.ahead.setdefault(task.function, deque()).append(
            (task, done, cost_mb, self.clock.monotonic()))

    def start_held(self, function: str, most: int = 1) -> int:
        """Start up to ``most`` held tasks of ``function``; those held too long go back to
        the queue instead. Returns how many started."""
        held = self.ahead.get(function)
        started = 0
        if held and not self.may_start(function):
            self.release_held(function)
            return 0
        while held and started < most:
            task, done, cost_mb, since = held.popleft()
            if self.clock.monotonic() - since > AHEAD_MAX_WAIT_S:
                self._spawn(self._give_back(task, done))
                continue
            self.start(task, done, cost_mb)
            started += 1
        if not held:
            self.ahead.pop(function, None)
        return started

    def release_held(self, function: str) -> None:
        """Give the held tasks of ``function`` back to the queue (its queue was paused)."""
        for task, done, _, _ in self.ahead.pop(function, ()):
            self._spawn(self._give_back(task, done))

    async def settle_held(self) -> None:
        """Wait until the held tasks given back are back in the queue."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        job = asyncio.ensure_future(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _give_back(self, task: TaskRow, done: Done) -> None:
        again = self.clock.now()
        with contextlib.suppress(errors.StoreUnavailable):  # its lease runs out, then
            await self.queue.give_back(task.id, task.attempts, again)
        done(task, again)

    def _drop_held(self, task_id: str) -> TaskRow | None:
        for function, held in self.ahead.items():
            for entry in held:
                if entry[0].id == task_id:
                    held.remove(entry)
                    if not held:
                        del self.ahead[function]
                    entry[1](entry[0], None)
                    return entry[0]
        return None

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """The end of an attempt, written to the store; tried again while the store is away
        (the attempt's lease keeps the task until then), so a finished attempt is not run
        again just because the database restarted."""
        delay = 0.1
        while True:
            try:
                return await write()
            except errors.StoreUnavailable as exc:
                log.warning("the store is away; writing a task's end again in %.1f s: %s",
                            delay, exc)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run(self, task: TaskRow, done: Done, cost_mb: float) -> None:
        acquired = False
        over = False
        again: float | None = None

        def on_start(inst: Instance) -> None:
            nonlocal acquired
            acquired = True
            self.acquiring[task.function] -= 1
            self._instances[task.id] = (inst, invocation_id)
            self.ordered[task.function] = inst.ordered

        def run_over() -> None:
            # the instance is free: the next held task starts now, while this end is written
            nonlocal over
            if not over:
                over = True
                self._run_over(task, cost_mb,
                               (self.clock.monotonic() - began) * 1000 if acquired else None)

        invocation_id = new_request_id()
        began = self.clock.monotonic()
        try:
            row = await self.registry.resolve(task.function, task.version)
            extra: dict[str, Any] = {"task_id": task.id, "attempt": task.attempts,
                                     "trace_id": task.trace_id}
            if task.source == "shard":
                extra["shard"] = {"index": task.shard_index, "count": task.shard_count}
            policy = await self.policies.of_task(task)
            try:
                outcome = await self.invoker.invoke(
                    row, task.event, trigger="task" if task.source == "async" else task.source,
                    request_id=invocation_id, extra=extra, on_start=on_start,
                    interruptible=policy.interruptible, write_record=False,
                    pipeline=self.pipeline(task.function))
            finally:
                run_over()
        except errors.Throttled:
            back = again = self.clock.now() + GIVE_BACK_DELAY_S
            await self._durably(lambda: self.queue.give_back(task.id, task.attempts, back))
        except errors.NotStarted:  # sent ahead to an instance stopped before it ran
            back = again = self.clock.now()
            await self._durably(lambda: self.queue.give_back(task.id, task.attempts, back))
        except asyncio.CancelledError:
            await self._finish_cancelled(task, invocation_id if acquired else None)
            raise
        except errors.FaasboxError as exc:
            failure = await self.failure(task, exc)
            record = getattr(exc, "record", None)  # the attempt's, written with its end
            ended = await self._durably(lambda: self.queue.fail(
                task.id, task.attempts, failure, invocation_id if acquired else None,
                self.clock.now(), record))
            again = failure.retry_at
            if again is None and ended:
                self._finished(task, failure.final_status, None)
        else:
            _average(self.call_ms, task.function, outcome.record.duration_ms)
            # one write: the attempt's record and the task's end
            if await self._durably(lambda: self.queue.succeed(
                    task.id, task.attempts, outcome.payload, invocation_id, self.clock.now(),
                    outcome.record)):
                self._finished(task, "succeeded", outcome.payload)
        finally:
            run_over()
            self._ended(task, done, again)

    def _run_over(self, task: TaskRow, cost_mb: float, run_ms: float | None) -> None:
        """A run is over (``run_ms`` None: it never got an instance); its end may not be
        written yet. A held task of the function takes its place at once."""
        if run_ms is None:
            self.acquiring[task.function] -= 1
        else:
            _average(self.run_ms, task.function, run_ms)
        self.running_by_function[task.function] -= 1
        self.running_mb -= cost_mb
        self._instances.pop(task.id, None)
        self._writing.add(task.id)
        if task.function in self.ahead:
            self.start_held(task.function)

    def _ended(self, task: TaskRow, done: Done, again: float | None) -> None:
        """A task's attempt ended and its end is written (or given up on)."""
        self.running.pop(task.id, None)
        self._writing.discard(task.id)
        self._cancelling.discard(task.id)
        self.resolve_waiters(task.id)
        done(task, again)

    async def _finish_cancelled(self, task: TaskRow, invocation_id: str | None) -> None:
        failure = Failure("cancelled", "cancelled while it ran", None, "cancelled")
        with contextlib.suppress(Exception):
            if await asyncio.shield(self.queue.fail(
                    task.id, task.attempts, failure, invocation_id, self.clock.now())):
                self._finished(task, "cancelled", None)

    def _finished(self, task: TaskRow, status: str, result: bytes | None) -> None:
        self.events.emit(TaskFinished(task, status, result))

    async def failure(self, task: TaskRow, exc: errors.FaasboxError) -> Failure:
        """How a failed attempt ends: a retry at some time, or a terminal status."""
        if task.id in self._cancelling:
            return Failure("cancelled", "cancelled while it ran", None, "cancelled")
        if isinstance(exc, errors.NotFound):
            return Failure(exc.code, exc.message, None, "failed")
        policy = await self.policies.of_task(task)
        category = ERROR_CATEGORY.get(exc.code)
        # a preempted task did nothing wrong: it is retried whatever retry_on says
        if category not in policy.retry_on and exc.code != "preempted":
            return Failure(exc.code, exc.message, None, "failed")
        if task.attempts >= task.max_attempts:
            return Failure(exc.code, f"{exc.message} (after {task.attempts} attempts)", None,
                           "dead")
        retry_at = self.clock.now() + backoff_s(policy, task.attempts)
        if retry_at >= task.expires_at:
            return Failure(exc.code, f"{exc.message} (no time left for a retry before"
                           " max_event_age_s)", None, "expired")
        return Failure(exc.code, exc.message, retry_at)

    # -- operations -------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRow:
        row = await self.queue.get(task_id)
        if row is None:
            raise errors.TaskNotFound(f"no task {task_id!r}")
        return row

    async def cancel(self, task_id: str) -> TaskRow:
        row = await self.queue.cancel(task_id, self.clock.now())
        if row is None:
            raise errors.TaskNotFound(f"no task {task_id!r}")
        if row.status == "cancelled" and task_id not in self.running:
            self._finished(row, "cancelled", None)
        if row.status == "running" and (task_id in self.running or self.is_held(task_id)):
            await self.interrupt(task_id)
        elif row.status == "running":  # another server runs it
            self.events.emit(CancelRequested(task_id))
        self.resolve_waiters(task_id)
        return await self.get(task_id)

    async def interrupt(self, task_id: str) -> None:
        """Stop the attempt of ``task_id`` running here, if any (it ends cancelled)."""
        held = self._drop_held(task_id)
        if held is not None:
            await self._finish_cancelled(held, None)
            self.resolve_waiters(task_id)
            return
        if task_id not in self.running:
            return
        if task_id in self._writing:  # too late to stop: its end is being written
            await asyncio.wait({self.running[task_id]})
            return
        self._cancelling.add(task_id)
        on = self._instances.get(task_id)
        if on is not None:
            inst, invocation_id = on
            await inst.interrupt(invocation_id, errors.Cancelled("the task was cancelled"))
        else:
            self.running[task_id].cancel()
        running = self.running.get(task_id)
        if running is not None:
            await asyncio.wait({running})

    async def wait(self, task_id: str, timeout: float) -> TaskRow:
        """The task once terminal, or as it is when ``timeout`` runs out (long poll)."""
        deadline = self.clock.monotonic() + timeout
        delays = recheck_delays(self.recheck_s)
        while True:
            # registered before the read: a finish between the two still wakes us
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(fut)
            try:
                row = await self.get(task_id)
                left = deadline - self.clock.monotonic()
                if row.terminal or left <= 0:
                    return row
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation
                async with asyncio.timeout(min(left, next(delays))):
                    await fut
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(task_id, [])
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(task_id, None)

    def resolve_waiters(self, task_id: str) -> None:
        for fut in self._waiters.pop(task_id, []):
            if not fut.done():
                fut.set_result(None)

    def wake_all_waiters(self) -> None:
        """Let every long poll re-read its task (after a sweep changed some)."""
        for task_id in list(self._waiters):
            self.resolve_waiters(task_id)

    def is_held(self, task_id: str) -> bool:
        return any(entry[0].id == task_id for held in self.ahead.values() for entry in held)

    async def close(self) -> None:
        held = [entry for q in self.ahead.values() for entry in q]
        self.ahead.clear()
        await asyncio.gather(*[self._give_back(task, done) for task, done, _, _ in held],
                             *self._background, return_exceptions=True)
        running = list(self.running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
