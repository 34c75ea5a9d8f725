"""Runs one invocation end to end: acquire an instance, run, release, record, count.

Sync invokes come here from the API, async tasks from the task lifecycle. Every invocation
that ends is published as an :class:`~faasbox.events.InvocationFinished` event before the
caller hears of it (chains enqueue their next task there).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from faasbox import errors
from faasbox.clock import Clock
from faasbox.events import Events, InvocationFinished, InvocationThrottled
from faasbox.metering import billed_ms, gb_seconds
from faasbox.metrics import Metrics, labels
from faasbox.node import Instance
from faasbox.scheduler import Scheduler
from faasbox.store import InvocationRecord, Store, VersionRow
from faasbox.tenancy.admission import Admission

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    record: InvocationRecord
    payload: bytes  # result JSON when the record's status is succeeded


_ids = threading.local()


def new_id() -> str:
    """A random 128-bit id as 32 hex digits (job and W3C trace ids, names), cut from
    the operating system's random bytes drawn 256 ids at a time (one syscall for them)."""
    batch: Iterator[str] | None = getattr(_ids, "batch", None)
    if batch is not None:
        for one in batch:
            return one
    _ids.batch = batch = _batch()
    return next(batch)


def _batch() -> Iterator[str]:
    raw = os.urandom(16 * 256).hex()
    return (raw[i:i + 32] for i in range(0, len(raw), 32))


os.register_at_fork(after_in_child=lambda: _ids.__dict__.clear())  # never the parent's ids


def new_row_id() -> str:
    """An id as 32 hex digits that sorts by creation: the milliseconds since the epoch (12
    digits), then 80 random bits. For the ids that rows written at a high rate are indexed
    by (request, task and trace ids): the store appends each at the end of its index instead
    of at a random place (in SQLite about 3 µs less per index, and fewer pages per commit)."""
    return f"{time.time_ns() // 1_000_000:012x}{new_id()[:20]}"


new_request_id = new_row_id
new_task_id = new_row_id
new_trace_id = new_row_id  # W3C allows it; AWS X-Ray's trace ids also begin with the time


class Invoker:
    def __init__(
        self, scheduler: Scheduler, admission: Admission, store: Store, metrics: Metrics,
        events: Events, clock: Clock,
    ) -> None:
        self.scheduler = scheduler
        self.admission = admission
        self.store = store
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self._series: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    async def invoke(
        self, row: VersionRow, payload: bytes, trigger: str = "sync",
        request_id: str | None = None, extra: dict[str, Any] | None = None,
        on_start: Callable[[Instance], None] | None = None, interruptible: bool = False,
        write_record: bool = True, pipeline: int = 0,
    ) -> Outcome:
        """Run ``payload`` on ``row``. Returns a succeeded outcome, or raises the
        :class:`~faasbox.errors.FaasboxError` that explains the failure (after recording it).
        Over a concurrency limit it raises :class:`~faasbox.errors.OverLimit` at once.
        ``write_record`` False: the caller writes the record (``Outcome.record``, or the
        error's ``record``) with its own write, as a task's end does."""
        try:
            self.admission.enter(row.function)
        except errors.OverLimit:
            self.metrics.throttles.labels(*labels(row.function)).inc()
            self.events.emit(InvocationThrottled(row.function))
            raise
        try:
            return await self._invoke(row, payload, trigger, request_id, extra, on_start,
                                      interruptible, write_record, pipeline)
        finally:
            self.admission.leave(row.function)

    async def _invoke(
        self, row: VersionRow, payload: bytes, trigger: str, request_id: str | None,
        extra: dict[str, Any] | None, on_start: Callable[[Instance], None] | None,
        interruptible: bool = False, write_record: bool = True, pipeline: int = 0,
    ) -> Outcome:
        request_id = request_id or new_request_id()
        spec = row.spec
        record = InvocationRecord(
            id=request_id, function=row.function, version=row.version, trigger=trigger,
            started_at=self.clock.now(), duration_ms=0.0, billed_ms=0,
            memory_mb=spec.memory_mb, gb_s=0.0, cold_start=False, init_ms=None,
            status="running", trace_id=(extra or {}).get("trace_id"),
            task_id=(extra or {}).get("task_id"),
        )
        t0 = self.clock.monotonic()
        try:
            inst, cold = await self.scheduler.acquire(row, interruptible=interruptible,
                                                      pipeline=pipeline)
        except errors.Throttled:
            self.metrics.throttles.labels(*labels(row.function)).inc()
            self.events.emit(InvocationThrottled(row.function))
            raise
        except errors.InvocationError as exc:  # the cold start failed
            record.cold_start = True
            self._fail(record, exc, (self.clock.monotonic() - t0) * 1000, write_record)
            await self.events.publish(InvocationFinished(row, record, None, extra or {}))
            raise
        record.cold_start = cold
        record.instance_id = inst.id
        if interruptible:
            self.scheduler.instances.interruptible[inst.id] += 1
            # the meter prices this call at the spot rate
            finished = {**(extra or {}), "interruptible": True}
        else:
            finished = extra or {}
        return await self._run(row, payload, record, inst, cold, request_id, extra,
                               on_start, finished, t0, interruptible, write_record)

    def _release(self, inst: Instance, interruptible: bool) -> None:
        if interruptible:  # first: the slot may go to a sync caller at once
            self.scheduler.instances.not_interruptible(inst)
        self.scheduler.release(inst)

    async def _run(
        self, row: VersionRow, payload: bytes, record: InvocationRecord, inst: Instance,
        cold: bool, request_id: str, extra: dict[str, Any] | None,
        on_start: Callable[[Instance], None] | None,
        finished: dict[str, Any], t0: float, interruptible: bool, write_record: bool,
    ) -> Outcome:
        spec = row.spec
        if on_start is not None:
            on_start(inst)
        if cold:
            record.init_ms = inst.init_ms
            self.metrics.cold_starts.labels(*labels(row.function)).inc()
            if inst.init_ms is not None:
                self.metrics.cold_start_latency.labels(*labels(row.function)).observe(
                    inst.init_ms / 1000)
        try:
            result = await inst.invoke(request_id, payload, spec.timeout_s, extra or {})
        except errors.InvocationError as exc:
            elapsed = (self.clock.monotonic() - t0) * 1000
            if isinstance(exc, errors.InvocationTimeout):
                elapsed = spec.timeout_s * 1000
            record.peak_rss_mb = inst.peak_rss_mb or None
            self._fail(record, exc, exc.duration_ms or elapsed, write_record)
            self._release(inst, interruptible)
            await self.events.publish(InvocationFinished(row, record, None, finished))
            raise
        except BaseException:
            self._release(inst, interruptible)
            raise
        self._release(inst, interruptible)
        record.status = "succeeded"
        record.logs = result.logs
        record.peak_rss_mb = round(result.peak_rss_mb, 2)
        kept = self._finish(record, result.duration_ms, write_record)
        if kept is not None:
            await kept  # no call is reported succeeded without its record (503 if it failed)
        await self.events.publish(InvocationFinished(row, record, result.payload, finished))
        return Outcome(record, result.payload)

    def _fail(self, record: InvocationRecord, exc: errors.FaasboxError, duration_ms: float,
              write_record: bool = True) -> None:
        record.status = "timeout" if isinstance(exc, errors.InvocationTimeout) else "failed"
        record.error_code = exc.code
        record.error_message = exc.message
        record.logs = getattr(exc, "logs", "") or exc.details.get("output") or ""
        self._finish(record, duration_ms, write_record)
        if isinstance(exc, errors.InvocationError):
            exc.record = record

    def _finish(self, record: InvocationRecord, duration_ms: float,
                write_record: bool = True) -> Awaitable[None] | None:
        record.duration_ms = round(duration_ms, 3)
        record.billed_ms = billed_ms(record.duration_ms)  # the duration as recorded
        record.gb_s = gb_seconds(record.billed_ms, record.memory_mb)
        kept = self.store.record_invocation(record) if write_record else None
        series = self._series.get((record.function, record.status))
        if series is None:
            names = labels(record.function)
            series = self._series[(record.function, record.status)] = (
                self.metrics.invocations.labels(*names, record.status),
                self.metrics.gb_seconds.labels(*names), self.metrics.duration.labels(*names))
        series[0].inc()
        series[1].inc(record.gb_s)
        series[2].observe(duration_ms / 1000)
        return kept
