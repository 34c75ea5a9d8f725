"""Synchronous invocation and invocation records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from faasbox import errors
from faasbox.api.auth import ScopedRoute, function_of, tenant_of
from faasbox.api.body import read_capped, trace_id_of, validate_event
from faasbox.api.errors import error_parts
from faasbox.api.responses import V1, error_responses
from faasbox.api.views import record_view
from faasbox.invoker import new_request_id, new_trace_id
from faasbox.payload import MAX_EVENT
from faasbox.platform import Platform
from faasbox.store import InvocationRecord
from faasbox.tenancy.names import qualify
from faasbox.tenancy.names import tenant_of as tenant_of_function

router = APIRouter(tags=["invoke"], route_class=ScopedRoute,
                   responses=error_responses(*V1))


# The hot route reads its optional query and header itself: FastAPI's parameter solving
# cost more than the rest of the route. They are declared for the OpenAPI spec here.
_INVOKE_PARAMETERS = [
    {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "a version number or 'latest'"},
    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "W3C trace context; its trace id is carried to everything this call"
     " causes"},
]


@router.post("/v1/functions/{name}/invoke", summary="Invoke and wait for the result",
             responses={200: {"description": "the handler's JSON result"},
                        **error_responses(400, 404, 413, 422, 429, 504)},
             openapi_extra={"parameters": _INVOKE_PARAMETERS, "requestBody": {"content": {
                 "application/json": {"schema": {"description": "the event: any JSON value"}}}}})
async def invoke(name: str, request: Request) -> Response:
    # served by api/fast.py in front of the framework; this is the same call for the spec and
    # for an app without the fast path
    status, headers, body = await call(
        request.app.state.platform, tenant_of(request), name,
        request.query_params.get("version"), request.headers.get("traceparent"),
        lambda: read_capped(request, MAX_EVENT, "event"))
    return Response(body, status, dict(headers), media_type="application/json")


Headers = list[tuple[str, str]]


async def call(p: Platform, tenant: str, name: str, version: str | None,
               traceparent: str | None, read: Callable[[], Awaitable[bytes]],
               ) -> tuple[int, Headers, bytes]:
    """One sync invoke of the tenant's function ``name``: ``(status, headers, body)``, an
    error body for a failure. The body is read (``read``) after the limits are checked."""
    headers: Headers = []
    try:
        row = await p.registry.resolve(qualify(tenant, name), version)
        p.admission.take(tenant)
        event = validate_event(await read())
        request_id = new_request_id()
        trace_id = trace_id_of(traceparent) or new_trace_id()
        headers = [("X-Faasbox-Request-Id", request_id),
                   ("X-Faasbox-Version", str(row.version)), ("X-Faasbox-Trace-Id", trace_id)]
        try:
            outcome = await p.invoker.invoke(row, event, request_id=request_id,
                                             extra={"trace_id": trace_id})
        except errors.InvocationError as exc:
            headers.append(("X-Faasbox-Function-Error", exc.code))
            if exc.record is not None:
                headers += _usage_headers(exc.record)
            raise
    except errors.FaasboxError as exc:
        status, extra, body = error_parts(exc)
        return status, headers + extra, body
    return 200, headers + _usage_headers(outcome.record), outcome.payload


def _usage_headers(rec: InvocationRecord) -> Headers:
    return [("X-Faasbox-Cold-Start", "true" if rec.cold_start else "false"),
            ("X-Faasbox-Duration-Ms", f"{rec.duration_ms:.3f}"),
            ("X-Faasbox-Billed-Ms", str(rec.billed_ms))]


@router.get("/v1/invocations", summary="Invocation records, newest first",
            responses=error_responses(422))
async def list_invocations(
    request: Request,
    function: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    before: float | None = Query(None, description="cursor: started_at of the last record seen"),
    since: float | None = Query(None, description="only records started after this time,"
                                " oldest first (for following)"),
) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    tenant = tenant_of(request)
    qualified = None if function is None else function_of(request, function)
    if since is not None:
        records = await p.store.list_invocations_since(qualified, since, limit, tenant)
    else:
        records = await p.store.list_invocations(qualified, limit, before, tenant)
    body: dict[str, Any] = {"invocations": [record_view(r) for r in records]}
    if since is None and len(records) == limit:
        body["next_before"] = records[-1].started_at
    return body


@router.get("/v1/invocations/{invocation_id}", summary="One invocation record",
            responses=error_responses(404, 422))
async def get_invocation(invocation_id: str, request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    rec = await p.store.get_invocation(invocation_id)
    if rec is None or tenant_of_function(rec.function) != tenant_of(request):
        raise errors.InvocationNotFound(f"no invocation {invocation_id!r}")
    return record_view(rec)
