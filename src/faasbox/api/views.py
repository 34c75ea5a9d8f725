"""What the API shows of tasks, jobs and triggers (presentation stays out of the services)."""

from __future__ import annotations

from typing import Any

import orjson

from faasbox.store import InvocationRecord
from faasbox.store.queue import TaskQueue, TaskRow
from faasbox.store.triggers import JobRow, TriggerRow
from faasbox.tenancy.names import display

# a job's shard results come in pages: at most this many shards, and this many bytes of
# results (counted by the store before any is read; a page always has its first result)
RESULTS_PAGE_SHARDS = 1000
RESULTS_PAGE_BYTES = 16 * 2**20


def task_view(row: TaskRow) -> dict[str, Any]:
    """The API's view of a task."""
    view: dict[str, Any] = {
        "task_id": row.id, "function": display(row.function), "version": row.version,
        "status": row.status, "attempts": row.attempts, "max_attempts": row.max_attempts,
        "created_at": row.created_at, "started_at": row.started_at,
        "finished_at": row.finished_at, "run_at": row.run_at, "expires_at": row.expires_at,
        "idempotency_key": row.idempotency_key, "invocation_ids": row.invocation_ids,
        "trace_id": row.trace_id, "source": row.source, "priority": row.priority,
    }
    for key in ("redrive_of", "redriven_to", "workflow_id"):
        if getattr(row, key) is not None:
            view[key] = getattr(row, key)
    if row.workflow_id is not None:
        view["workflow_stage"] = row.workflow_step
    if row.job_id is not None:
        view["job_id"] = row.job_id
        view["shard"] = {"index": row.shard_index, "count": row.shard_count}
    if row.trigger_name is not None:
        view["trigger"] = row.trigger_name
    if row.status == "succeeded" and row.result is not None:
        view["result"] = orjson.loads(row.result)
    if row.error_code is not None:
        view["error"] = {"code": row.error_code, "message": row.error_message}
    return view


async def job_view(queue: TaskQueue, job: JobRow, results: bool = True, shards: bool = False,
                   counts: dict[str, int] | None = None,
                   started: dict[str, float] | None = None,
                   results_from: int = 0) -> dict[str, Any]:
    """The API's view of a job; ``counts``: its shards by status, ``started``: when the
    first shard of each job started (a listing's ``jobs_started``), if already read. The
    shard results are one page from shard ``results_from`` (``results_next``: where the
    next page starts, None after the last)."""
    if counts is None:
        counts = await queue.job_counts(job.id)
    tasks = await queue.job_tasks(job.id, results=False) if shards else []
    if tasks:
        starts = [t.started_at for t in tasks if t.started_at is not None]
        started_at = min(starts) if starts else None
    else:
        if started is None:
            started = await queue.jobs_started([job.id])
        started_at = started.get(job.id)
    view: dict[str, Any] = {
        "job_id": job.id, "function": display(job.function), "version": job.version,
        "status": job.status, "shard_count": job.shard_count,
        "progress": {s: counts.get(s, 0) for s in
                     ("held", "queued", "running", "retry_wait", "succeeded", "failed",
                      "dead", "expired", "cancelled")},
        "max_parallel": job.spec.get("max_parallel"),
        "on_failure": job.spec.get("on_failure"), "reduce": _name(job.spec.get("reduce")),
        "created_at": job.created_at, "started_at": started_at,
        "finished_at": job.finished_at,
        "duration_s": (job.finished_at - job.created_at) if job.finished_at else None,
        "trace_id": job.trace_id, "trigger": job.trigger_name,
        "reduce_task_id": job.reduce_task_id,
    }
    done = sum(view["progress"][s] for s in ("succeeded", "failed", "dead", "expired",
                                              "cancelled"))
    view["progress"]["done"] = done
    if results:
        page = await queue.job_results_page(job.id, results_from, RESULTS_PAGE_SHARDS,
                                            RESULTS_PAGE_BYTES)
        view["results"] = [orjson.loads(t.result) if t.status == "succeeded" and t.result
                           is not None else None for t in page]
        view["results_from"] = results_from
        end = results_from + len(page)
        view["results_next"] = end if page and end < job.shard_count else None
    if shards:
        view["shards"] = [
            {"index": t.shard_index, "task_id": t.id, "status": t.status,
             "attempts": t.attempts, "started_at": t.started_at,
             "finished_at": t.finished_at,
             **({"error": {"code": t.error_code, "message": t.error_message}}
                if t.error_code else {})} for t in tasks]
    if job.status == "succeeded" and job.result is not None:
        view["result"] = orjson.loads(job.result)
    if job.error_code is not None:
        view["error"] = {"code": job.error_code, "message": job.error_message}
    return view


def trigger_view(row: TriggerRow, now: float) -> dict[str, Any]:
    """The API's view of a cron trigger, with its next three fires."""
    upcoming = (row.spec.schedule().upcoming(now, 3)
                if row.spec.enabled else [])
    return {
        **row.spec.model_dump(), "function": display(row.function), "name": row.name,
        "next_fire_at": row.next_fire_at, "upcoming": upcoming,
        "last_fire_at": row.last_fire_at, "last_run": row.last_run,
        "pending_fires": row.pending_fires, "fires": row.fires, "skipped": row.skipped,
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def record_view(rec: InvocationRecord) -> dict[str, Any]:
    """The API's view of an invocation record."""
    view = rec.to_dict()
    view["function"] = display(rec.function)
    return view


def _name(name: str | None) -> str | None:
    return None if name is None else display(name)
