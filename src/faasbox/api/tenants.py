"""Tenants, their API keys, the audit log, and who a key is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from faasbox.api.auth import ScopedRoute, principal_of, tenant_of
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform
from faasbox.tenancy.model import KeyRow, KeySpec, TenantPatch, TenantRow, TenantSpec

router = APIRouter(tags=["tenants"], route_class=ScopedRoute,
                   responses=error_responses(*V1))


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


def tenant_view(p: Platform, row: TenantRow) -> dict[str, Any]:
    return {"name": row.name, "weight": row.weight,
            "limits": row.limits.model_dump(exclude_none=True),
            "effective_limits": p.tenancy.limits(row.name).__dict__,
            "created_at": row.created_at, "updated_at": row.updated_at}


def key_view(row: KeyRow) -> dict[str, Any]:
    return {"key_id": row.id, "tenant": row.tenant, "scope": row.scope,
            "functions": row.functions, "description": row.description,
            "created_at": row.created_at}


@router.post("/v1/tenants", status_code=201, summary="Create a tenant",
             responses=error_responses(400, 409, 422))
async def create_tenant(spec: TenantSpec, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row = await p.tenancy.create_tenant(spec, principal_of(request))
    return tenant_view(p, row)


@router.get("/v1/tenants", summary="Every tenant")
async def list_tenants(request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"tenants": [tenant_view(p, t) for t in sorted(p.tenancy.tenants.values(),
                                                          key=lambda t: t.name)]}


@router.get("/v1/tenants/{tenant}", summary="A tenant, its limits and usage now",
            responses=error_responses(404, 422))
async def get_tenant(tenant: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    view = tenant_view(p, p.tenancy.get(tenant))
    view["usage"] = p.tenant_usage(tenant)
    return view


@router.patch("/v1/tenants/{tenant}", summary="Change a tenant's weight or limits",
              responses=error_responses(400, 404, 422))
async def patch_tenant(tenant: str, patch: TenantPatch, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return tenant_view(p, await p.tenancy.update_tenant(tenant, patch, principal_of(request)))


@router.delete("/v1/tenants/{tenant}", status_code=204,
               summary="Delete a tenant (it must have no functions); its keys are revoked",
               responses=error_responses(404, 409, 422))
async def delete_tenant(tenant: str, request: Request) -> Response:
    p = _platform(request)
    await p.delete_tenant(tenant, principal_of(request))
    return Response(status_code=204)


@router.post("/v1/tenants/{tenant}/keys", status_code=201,
             summary="Create an API key (the secret is in this response only)",
             responses=error_responses(400, 404, 422))
async def create_key(tenant: str, spec: KeySpec, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row, key = await p.tenancy.create_key(tenant, spec, principal_of(request))
    return {**key_view(row), "key": key}


@router.get("/v1/tenants/{tenant}/keys", summary="A tenant's live keys (no secrets)",
            responses=error_responses(404, 422))
async def list_keys(tenant: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"keys": [key_view(k) for k in p.tenancy.list_keys(tenant)]}


@router.delete("/v1/tenants/{tenant}/keys/{key_id}", status_code=204,
               summary="Revoke a key (refused from the next request on)",
               responses=error_responses(404, 422))
async def revoke_key(tenant: str, key_id: str, request: Request) -> Response:
    p = _platform(request)
    await p.tenancy.revoke_key(tenant, key_id, principal_of(request))
    return Response(status_code=204)


@router.get("/v1/audit", summary="Control-plane changes, newest first (admin: every tenant"
            " unless ?tenant=; developer: its own)", responses=error_responses(422))
async def audit(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    cursor: int | None = Query(None, ge=0, lt=2**63,
                               description="next_cursor of the previous page"),
) -> dict[str, Any]:
    p = _platform(request)
    principal = principal_of(request)
    every = principal.scope == "admin" and request.query_params.get("tenant") is None
    rows = await p.tenancy.store.list_audit(None if every else tenant_of(request), limit,
                                            cursor)
    body: dict[str, Any] = {"audit": [
        {"id": r.id, "at": r.at, "tenant": r.tenant, "key_id": r.key_id, "action": r.action,
         "target": r.target, "detail": r.detail} for r in rows]}
    if len(rows) == limit:
        body["next_cursor"] = rows[-1].id
    return body


@router.get("/v1/whoami", summary="The tenant and scope of the key in use")
async def whoami(request: Request) -> dict[str, Any]:
    principal = principal_of(request)
    return {"key_id": principal.key_id, "tenant": principal.tenant, "scope": principal.scope,
            "functions": None if principal.functions is None else sorted(principal.functions)}
