"""Jobs, cron triggers and traces."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Header, Query, Request, Response

from faasbox import errors
from faasbox.api.body import trace_id_of
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform
from faasbox.triggers.cron import NamedTriggerSpec, TriggerSpec, check_trigger_name
from faasbox.triggers.jobs import JobSpec
from faasbox.triggers.store import JOB_STATUSES

router = APIRouter(responses=error_responses(*V1))

MAX_WAIT_S = 60.0


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


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
    job, created = await p.jobs.create(spec, idempotency_key, trace_id_of(traceparent))
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
    results: bool = Query(True, description="include the shard results"),
    shards: bool = Query(False, description="include each shard's status and timings"),
) -> dict[str, Any]:
    p = _platform(request)
    job = await p.jobs.wait(job_id, wait) if wait > 0 else await p.jobs.get(job_id)
    return await p.jobs.view(job, results=results, shards=shards)


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
    rows = await p.trigger_store.list_jobs(function, status, limit, cursor)
    counts = await p.queue.jobs_counts([r.id for r in rows])
    body: dict[str, Any] = {"jobs": [await p.jobs.view(r, results=False, counts=counts[r.id])
                                     for r in rows]}
    if len(rows) == limit:
        body["next_cursor"] = rows[-1].id
    return body


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"],
             summary="Cancel a job: its queued shards at once, its running ones stopped",
             responses=error_responses(404, 422))
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return await p.jobs.view(await p.jobs.cancel(job_id), results=False)


# -- triggers -------------------------------------------------------------------------------
@router.post("/v1/functions/{name}/triggers", status_code=201, tags=["triggers"],
             summary="Add a cron trigger", responses=error_responses(400, 404, 409, 422))
async def create_trigger(name: str, spec: NamedTriggerSpec, request: Request) -> dict[str, Any]:
    p = _platform(request)
    body = TriggerSpec(**spec.model_dump(exclude={"name"}))
    row = await p.triggers.put(name, spec.name, body, create_only=True)
    return p.triggers.view(row)


@router.get("/v1/functions/{name}/triggers", tags=["triggers"],
            summary="A function's cron triggers", responses=error_responses(404, 422))
async def list_function_triggers(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    await p.registry.get(name)
    return {"triggers": [p.triggers.view(r) for r in p.triggers.list(name)]}


@router.get("/v1/triggers", tags=["triggers"], summary="Every cron trigger")
async def list_triggers(request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"triggers": [p.triggers.view(r) for r in p.triggers.list(None)]}


@router.get("/v1/functions/{name}/triggers/{trigger}", tags=["triggers"],
            summary="One cron trigger with its fire state",
            responses=error_responses(404, 422))
async def get_trigger(name: str, trigger: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return p.triggers.view(p.triggers.get(name, trigger))


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
    return p.triggers.view(await p.triggers.put(name, trigger, spec, create_only=False))


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
    return p.triggers.view(await p.triggers.update(name, trigger, changes))


@router.delete("/v1/functions/{name}/triggers/{trigger}", status_code=204, tags=["triggers"],
               summary="Delete a cron trigger", responses=error_responses(404, 422))
async def delete_trigger(name: str, trigger: str, request: Request) -> Response:
    p = _platform(request)
    await p.triggers.delete(name, trigger)
    return Response(status_code=204)


# -- traces ---------------------------------------------------------------------------------
@router.get("/v1/traces/{trace_id}", tags=["traces"],
            summary="Everything one trace caused: invocations in order, tasks and jobs",
            responses=error_responses(404, 422))
async def get_trace(trace_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    invocations = await p.store.list_invocations_by_trace(trace_id)
    tasks = await p.queue.by_trace(trace_id)
    jobs = sorted({t.job_id for t in tasks if t.job_id})
    if not invocations and not tasks:
        raise errors.NotFound(f"no trace {trace_id!r}")
    return {
        "trace_id": trace_id,
        "invocations": [r.to_dict() for r in invocations],
        "tasks": [{k: v for k, v in p.queue.to_view(t).items() if k != "result"}
                  for t in tasks],
        "jobs": jobs,
    }
