"""Asynchronous tasks: submit (one or a batch), status with long-poll, list, cancel, policy."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from faasbox import errors
from faasbox.api.auth import ScopedRoute, function_of, principal_of, tenant_of
from faasbox.api.body import read_capped, read_event, trace_id_of
from faasbox.api.responses import V1, error_responses
from faasbox.api.views import task_view
from faasbox.delivery.webhooks import WebhookRefused, check_url
from faasbox.invoker import new_task_id, new_trace_id
from faasbox.payload import EventTooLarge, encode_event
from faasbox.platform import Platform
from faasbox.store.queue import MAX_PRIORITY, STATUSES, NewTask, TaskPolicy, TaskRow
from faasbox.tenancy.names import display
from faasbox.tenancy.names import tenant_of as tenant_of_function

router = APIRouter(tags=["tasks"], route_class=ScopedRoute,
                   responses=error_responses(*V1))

MAX_BATCH = 1000
MAX_BATCH_BODY = 64 * 2**20
MAX_WAIT_S = 60.0
KEY_MAX = 256


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


async def _version(p: Platform, name: str, version: str | None) -> int | None:
    row = await p.registry.resolve(name, version)  # 404 for an unknown function or version
    return None if version in (None, "latest") else row.version


async def _task(p: Platform, request: Request, task_id: str) -> None:
    """404 unless the task is the request's tenant's (and, for an invoke key with a list of
    functions, one of those)."""
    row = await p.queue.get(task_id)
    principal = principal_of(request)
    if (row is None or tenant_of_function(row.function) != tenant_of(request)
            or not principal.may_call(display(row.function))):
        raise errors.TaskNotFound(f"no task {task_id!r}")


MAX_DELAY_S = 30 * 86400.0

DelayQuery = Query(None, ge=0, le=MAX_DELAY_S,
                   description="run no sooner than this many seconds from now (a countdown)")
RunAtQuery = Query(None, ge=0, description="run no sooner than this Unix time (an eta)")
PriorityQuery = Query(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY,
                      description="higher runs first within the function's queue")


def _run_at(p: Platform, delay_s: float | None, run_at: float | None) -> float | None:
    if delay_s is not None and run_at is not None:
        raise errors.InvalidRequest("give delay_s or run_at, not both")
    now = p.clock.now()
    if delay_s is not None:
        return now + delay_s
    if run_at is not None and run_at > now + MAX_DELAY_S:
        raise errors.InvalidRequest("run_at is more than 30 days ahead")
    return run_at


async def _submit(
    p: Platform, function: str, events: list[bytes], keys: list[str | None],
    version: int | None, trace_id: str | None, run_at: float | None, priority: int,
) -> list[tuple[TaskRow, bool]]:
    new = [NewTask(new_task_id(), e, k, trace_id or new_trace_id(), run_at=run_at,
                   priority=priority)
           for e, k in zip(events, keys, strict=True)]
    return await p.dispatcher.enqueue(function, new, version)


def _check_key(key: str | None) -> str | None:
    if key is not None and not 0 < len(key) <= KEY_MAX:
        raise errors.InvalidRequest(f"Idempotency-Key must be 1-{KEY_MAX} characters")
    return key


@router.post("/v1/functions/{name}/tasks", status_code=202,
             summary="Submit an async task (202 once it is durably queued)",
             responses=error_responses(400, 404, 413, 422, 429),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": {"description": "the event: any JSON value"}}}}})
async def submit(
    name: str, request: Request, response: Response,
    version: str | None = Query(None, description="pin a version; default: latest at run time"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
    traceparent: str | None = Header(None),
    delay_s: float | None = DelayQuery,
    run_at: float | None = RunAtQuery,
    priority: int = PriorityQuery,
) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    pinned = await _version(p, qualified, version)
    when = _run_at(p, delay_s, run_at)
    event = await read_event(request)
    p.admit_tasks(tenant_of(request), 1)
    [(row, created)] = await _submit(
        p, qualified, [event], [_check_key(idempotency_key)], pinned, trace_id_of(traceparent),
        when, priority)
    if not created:
        response.status_code = 200
    return {"task_id": row.id, "status": row.status, "created": created, "run_at": row.run_at}


@router.post("/v1/functions/{name}/tasks:batch", status_code=202,
             summary="Submit up to 1000 tasks in one transaction",
             responses=error_responses(400, 404, 413, 422, 429),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": {"type": "array", "maxItems": MAX_BATCH}}}}})
async def submit_batch(
    name: str, request: Request,
    version: str | None = Query(None),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", description="each task gets '<key>:<index>'"),
    traceparent: str | None = Header(None),
    delay_s: float | None = DelayQuery,
    run_at: float | None = RunAtQuery,
    priority: int = PriorityQuery,
) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    pinned = await _version(p, qualified, version)
    when = _run_at(p, delay_s, run_at)
    body = await read_capped(request, MAX_BATCH_BODY, "batch")
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJSON(f"the batch is not valid JSON: {exc}") from None
    if not isinstance(events, list) or not events:
        raise errors.InvalidRequest("the batch must be a non-empty JSON array of events")
    if len(events) > MAX_BATCH:
        raise errors.PayloadTooLarge(f"a batch holds at most {MAX_BATCH} events")
    key = _check_key(idempotency_key)
    keys = [f"{key}:{i}" if key else None for i in range(len(events))]
    try:
        encoded = [encode_event(e, f"event {i}") for i, e in enumerate(events)]
    except EventTooLarge as exc:
        raise errors.PayloadTooLarge(str(exc)) from None
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    p.admit_tasks(tenant_of(request), len(events))
    rows = await _submit(p, qualified, encoded, keys, pinned, trace_id_of(traceparent), when,
                         priority)
    return {"tasks": [{"task_id": r.id, "status": r.status, "created": c} for r, c in rows]}


@router.get("/v1/tasks/{task_id}", summary="A task; ?wait=S long-polls for a terminal state",
            responses=error_responses(404, 422))
async def get_task(
    task_id: str, request: Request,
    wait: float = Query(0, ge=0, le=MAX_WAIT_S, description="seconds to wait for the end"),
) -> dict[str, Any]:
    p = _platform(request)
    await _task(p, request, task_id)
    row = await p.tasks.wait(task_id, wait) if wait > 0 else await p.tasks.get(task_id)
    return task_view(row)


@router.get("/v1/tasks", summary="Tasks, newest first", responses=error_responses(400, 422))
async def list_tasks(
    request: Request,
    function: str | None = None,
    status: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    p = _platform(request)
    if status is not None and status not in STATUSES:
        raise errors.InvalidRequest(f"status must be one of {', '.join(sorted(STATUSES))}")
    qualified = None if function is None else function_of(request, function)
    rows = await p.queue.list(qualified, status, limit, cursor, tenant_of(request))
    body: dict[str, Any] = {"tasks": [task_view(r) for r in rows]}
    if len(rows) == limit:
        body["next_cursor"] = rows[-1].id
    return body


@router.post("/v1/tasks/{task_id}/cancel", summary="Cancel a queued or running task",
             responses=error_responses(404, 422))
async def cancel_task(task_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    await _task(p, request, task_id)
    row = await p.tasks.cancel(task_id)
    p.tenancy.record(principal_of(request), tenant_of(request), "task.cancel", task_id)
    return task_view(row)


@router.get("/v1/functions/{name}/task-policy", summary="A function's async task policy",
            responses=error_responses(404, 422))
async def get_policy(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    return (await p.policies.of_function(qualified)).model_dump()


@router.put("/v1/functions/{name}/task-policy", summary="Change the task policy (no deploy)",
            responses=error_responses(400, 404, 422))
async def put_policy(name: str, policy: TaskPolicy, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    for dest in [*policy.destinations.on_success, *policy.destinations.on_failure]:
        if dest.type == "webhook":
            try:
                check_url(dest.url, p.settings.webhook_allow_private)
            except WebhookRefused as exc:
                raise errors.InvalidSpec(f"destinations: {exc}") from None
    await p.dispatcher.set_policy(qualified, policy)
    p.tenancy.record(principal_of(request), tenant_of(request), "task_policy.put", name,
                     policy.model_dump())
    return policy.model_dump()


@router.get("/v1/functions/{name}/queue", summary="Queue depth of a function by status",
            responses=error_responses(404, 422))
async def queue_depth(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    depth = (await p.queue.depth()).get(qualified)
    return {"function": name, "counts": await p.queue.counts(qualified),
            "paused": p.operations.is_paused(qualified),
            "depth": depth[0] if depth else 0,
            "oldest_age_s": round(p.clock.now() - depth[1], 3) if depth else None,
            **p.dispatcher.stats(qualified)}
