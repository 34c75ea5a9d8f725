"""Usage, cost and waste of the caller's tenant (an admin may name one with ``?tenant=``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from faasbox.api.auth import ScopedRoute, tenant_of
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform

router = APIRouter(tags=["usage"], route_class=ScopedRoute,
                   responses=error_responses(*V1, 400, 422))

FROM = Query(None, alias="from", max_length=64,
             description="epoch seconds or ISO 8601 (UTC); default: the start of this month")
TO = Query(None, max_length=64, description="epoch seconds or ISO 8601 (UTC); default: now")


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


@router.get("/v1/usage", summary="Usage per function and hour or day: invocations by trigger"
            " and status, billed GB-s, cold starts, throttles, instance memory-time",
            responses=error_responses(404))
async def usage(
    request: Request, start: str | None = FROM, to: str | None = TO,
    function: str | None = Query(None, max_length=200, description="one function's usage"),
    step: Literal["hour", "day"] = Query("hour"),
) -> dict[str, Any]:
    return await _platform(request).reports.usage(tenant_of(request), function, start, to, step)


@router.get("/v1/cost", summary="The period's cost under pay-per-use, reserved and spot"
            " models, per function and for the tenant")
async def cost(request: Request, start: str | None = FROM, to: str | None = TO) -> dict[str, Any]:
    return await _platform(request).reports.cost(tenant_of(request), start, to)


@router.get("/v1/waste", summary="What the functions pay for and do not use, with"
            " recommendations and their saving per month")
async def waste(request: Request, start: str | None = FROM,
                to: str | None = TO) -> dict[str, Any]:
    return await _platform(request).reports.waste(tenant_of(request), start, to)
