"""Service groups: named pools of dedicated capacity of a tenant (admin manages them;
a developer may list and read its own tenant's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from faasbox.api.auth import ScopedRoute, principal_of, tenant_of
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform
from faasbox.tenancy.groups import ServiceGroupPatch, ServiceGroupSpec

router = APIRouter(prefix="/v1/service-groups", tags=["service groups"],
                   route_class=ScopedRoute, responses=error_responses(*V1))


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


@router.post("", status_code=201, summary="Create a service group: its memory is carved out"
             " of the node (admin; ?tenant= names the owner)",
             responses=error_responses(400, 404, 409, 422))
async def create_group(spec: ServiceGroupSpec, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row = await p.groups.create(tenant_of(request), spec, principal_of(request))
    return await p.groups.describe(row, admin=True)


@router.get("", summary="The tenant's service groups")
async def list_groups(request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"service_groups": [p.groups.view(r) for r in p.groups.of_tenant(tenant_of(request))]}


@router.get("/{group}", summary="A service group: usage, warm floor, upcoming fires, isolation",
            responses=error_responses(404, 422))
async def get_group(group: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row = p.groups.get(tenant_of(request), group)
    return await p.groups.describe(row, admin=principal_of(request).scope == "admin")


@router.patch("/{group}", summary="Change a service group (admin)",
              responses=error_responses(400, 404, 409, 422))
async def patch_group(group: str, patch: ServiceGroupPatch, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row = await p.groups.update(tenant_of(request), group, patch, principal_of(request))
    return await p.groups.describe(row, admin=True)


@router.delete("/{group}", status_code=204,
               summary="Delete a service group no function uses (admin); its memory goes back",
               responses=error_responses(404, 409, 422))
async def delete_group(group: str, request: Request) -> Response:
    p = _platform(request)
    await p.groups.delete(tenant_of(request), group, principal_of(request))
    return Response(status_code=204)
