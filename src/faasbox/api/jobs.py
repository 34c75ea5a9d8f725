"""Jobs, cron triggers and traces."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Header, Query, Request, Response

from faasbox import errors
from faasbox.api.auth import ScopedRoute, function_of, principal_of, tenant_of
from faasbox.api.body import trace_id_of
from faasbox.api.responses import V1, error_responses
from faasbox.api.views import job_view, record_view, task_view, trigger_view
from faasbox.platform import Platform
from faasbox.spec import check_name
from faasbox.store.triggers import JOB_STATUSES
from faasbox.tenancy.names import display, qualify
from faasbox.tenancy.names import tenant_of as tenant_of_function
from faasbox.triggers.cron import NamedTriggerSpec, TriggerSpec, check_trigger_name
from faasbox.triggers.jobs import JobSpec

router = APIRouter(route_class=ScopedRoute, responses=error_responses(*V1))

MAX_WAIT_S = 60.0


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


async def _job(p: Platform, request: Request, job_id: str) -> None:
    job = await p.trigger_store.get_job(job_id)
    if job is None or tenant_of_function(job.function) != tenant_of(request):
        raise errors.JobNotFound(f"no job {job_id!r}")


def _record(p: Platform, request: Request, action: str, function: str, trigger: str,
            detail: dict[str, Any]) -> None:
    p.tenancy.record(principal_of(request), tenant_of(request), action,
                     f"{function}/{trigger}", detail)


# -- jobs -----------------------------------------------------------------------------------
@router.post("/v1/jobs", status_code=202, tags=["jobs"],
             summary="Start a sharded job (202 once the job and its shards are queued)",
             responses=error_responses(400, 404, 422))
async def create_job(
    spec: JobSpec, request: Request, response: Response,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
    traceparent: str | None = Header(None),
) -> dict[str, Any]:
    p = _platform(request)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 256:
        raise errors.InvalidRequest("Idempotency-Key must be 1-256 characters")
    for name in (spec.function, spec.reduce):
        if name is not None:
            check_name(name)
    tenant = tenant_of(request)
    spec = spec.model_copy(update={
        "function": qualify(tenant, spec.function),
        "reduce": None if spec.reduce is None else qualify(tenant, spec.reduce)})
    p.admit_tasks(tenant, len(spec.events()))
    job, created = await p.jobs.create(spec, idempotency_key, trace_id_of(traceparent))
    if created:
        p.tenancy.record(principal_of(request), tenant, "job.create", job.id,
                         {"function": display(job.function), "shards": job.shard_count})
    if not created:
        response.status_code = 200
    return {"job_id": job.id, "status": job.status, "shard_count": job.shard_count,
            "trace_id": job.trace_id, "created": created}


@router.get("/v1/jobs/{job_id}", tags=["jobs"],
            summary="A job: progress, timings, shard results; ?wait=S long-polls for its end",
            responses=error_responses(404, 422))
async def get_job(
    job_id: str, request: Request,
    wait: float = Query(0, ge=0, le=MAX_WAIT_S),
    results: bool = Query(True, description="include the shard results (one page)"),
    results_from: int = Query(0, ge=0, le=2**31,
                              description="the first shard of the page (results_next)"),
    shards: bool = Query(False, description="include each shard's status and timings"),
) -> dict[str, Any]:
    p = _platform(request)
    await _job(p, request, job_id)
    job = await p.jobs.wait(job_id, wait) if wait > 0 else await p.jobs.get(job_id)
    return await job_view(p.queue, job, results=results, shards=shards,
                          results_from=results_from)


@router.get("/v1/jobs", tags=["jobs"], summary="Jobs, newest first",
            responses=error_responses(400, 422))
async def list_jobs(
    request: Request,
    function: str | None = None,
    status: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    p = _platform(request)
    if status is not None and status not in JOB_STATUSES:
        raise errors.InvalidRequest(f"status must be one of {', '.join(sorted(JOB_STATUSES))}")
    qualified = None if function is None else function_of(request, function)
    rows = await p.trigger_store.list_jobs(qualified, status, limit, cursor, tenant_of(request))
    ids = [r.id for r in rows]
    counts, started = await p.queue.jobs_counts(ids), await p.queue.jobs_started(ids)
    body: dict[str, Any] = {"jobs": [
        await job_view(p.queue, r, results=False, counts=counts[r.id], started=started)
        for r in rows]}
    if len(rows) == limit:
        body["next_cursor"] = rows[-1].id
    return body


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"],
             summary="Cancel a job: its queued shards at once, its running ones stopped",
             responses=error_responses(404, 422))
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    await _job(p, request, job_id)
    job = await p.jobs.cancel(job_id)
    p.tenancy.record(principal_of(request), tenant_of(request), "job.cancel", job_id)
    return await job_view(p.queue, job, results=False)


# -- triggers -------------------------------------------------------------------------------
@router.post("/v1/functions/{name}/triggers", status_code=201, tags=["triggers"],
             summary="Add a cron trigger", responses=error_responses(400, 404, 409, 422))
async def create_trigger(name: str, spec: NamedTriggerSpec, request: Request) -> dict[str, Any]:
    p = _platform(request)
    body = TriggerSpec(**spec.model_dump(exclude={"name"}))
    row = await p.triggers.put(function_of(request, name), spec.name, body, create_only=True)
    _record(p, request, "trigger.create", name, row.name, body.model_dump())
    return trigger_view(row, p.clock.now())


@router.get("/v1/functions/{name}/triggers", tags=["triggers"],
            summary="A function's cron triggers", responses=error_responses(404, 422))
async def list_function_triggers(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    return {"triggers": [trigger_view(r, p.clock.now()) for r in p.triggers.list(qualified)]}


@router.get("/v1/triggers", tags=["triggers"], summary="Every cron trigger")
async def list_triggers(request: Request) -> dict[str, Any]:
    p = _platform(request)
    tenant = tenant_of(request)
    return {"triggers": [trigger_view(r, p.clock.now()) for r in p.triggers.list(None)
                         if tenant_of_function(r.function) == tenant]}


@router.get("/v1/functions/{name}/triggers/{trigger}", tags=["triggers"],
            summary="One cron trigger with its fire state",
            responses=error_responses(404, 422))
async def get_trigger(name: str, trigger: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return trigger_view(p.triggers.get(function_of(request, name), trigger), p.clock.now())


@router.put("/v1/functions/{name}/triggers/{trigger}", tags=["triggers"],
            summary="Create or replace a cron trigger (the stack file uses this)",
            responses=error_responses(400, 404, 422))
async def put_trigger(name: str, trigger: str, spec: TriggerSpec,
                      request: Request) -> dict[str, Any]:
    p = _platform(request)
    try:
        check_trigger_name(trigger)
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    row = await p.triggers.put(function_of(request, name), trigger, spec, create_only=False)
    _record(p, request, "trigger.put", name, trigger, spec.model_dump())
    return trigger_view(row, p.clock.now())


@router.patch("/v1/functions/{name}/triggers/{trigger}", tags=["triggers"],
              summary="Change some fields of a trigger (e.g. {\"enabled\": false})",
              responses=error_responses(400, 404, 422))
async def patch_trigger(
    name: str, trigger: str, request: Request,
    changes: dict[str, Any] = Body(..., examples=[{"enabled": False}]),
) -> dict[str, Any]:
    p = _platform(request)
    unknown = set(changes) - set(TriggerSpec.model_fields)
    if unknown:
        raise errors.InvalidRequest(f"unknown trigger fields: {', '.join(sorted(unknown))}")
    row = await p.triggers.update(function_of(request, name), trigger, changes)
    _record(p, request, "trigger.update", name, trigger, changes)
    return trigger_view(row, p.clock.now())


@router.delete("/v1/functions/{name}/triggers/{trigger}", status_code=204, tags=["triggers"],
               summary="Delete a cron trigger", responses=error_responses(404, 422))
async def delete_trigger(name: str, trigger: str, request: Request) -> Response:
    p = _platform(request)
    await p.triggers.delete(function_of(request, name), trigger)
    _record(p, request, "trigger.delete", name, trigger, {})
    return Response(status_code=204)


# -- traces ---------------------------------------------------------------------------------
@router.get("/v1/traces/{trace_id}", tags=["traces"],
            summary="Everything one trace caused: invocations in order, tasks and jobs",
            responses=error_responses(404, 422))
async def get_trace(trace_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    tenant = tenant_of(request)
    invocations = [r for r in await p.store.list_invocations_by_trace(trace_id)
                   if tenant_of_function(r.function) == tenant]
    tasks = [t for t in await p.queue.by_trace(trace_id)
             if tenant_of_function(t.function) == tenant]
    jobs = sorted({t.job_id for t in tasks if t.job_id})
    if not invocations and not tasks:
        raise errors.TraceNotFound(f"no trace {trace_id!r}")
    return {
        "trace_id": trace_id,
        "invocations": [record_view(r) for r in invocations],
        "tasks": [{k: v for k, v in task_view(t).items() if k != "result"}
                  for t in tasks],
        "jobs": jobs,
    }
