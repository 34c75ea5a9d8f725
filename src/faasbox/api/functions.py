"""Functions: deploy, change (PATCH), list, describe, delete, versions, instances."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response

from faasbox import errors
from faasbox.api.auth import ScopedRoute, function_of, principal_of, tenant_of
from faasbox.api.body import read_capped
from faasbox.api.models import (
    CreateRequest,
    DeployRequest,
    PatchRequest,
    function_view,
    version_view,
)
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform
from faasbox.spec import FunctionSpec, as_spec, check_name, merge_spec

router = APIRouter(prefix="/v1/functions", tags=["functions"], route_class=ScopedRoute,
                   responses=error_responses(*V1))
MAX_DEPLOY = 96 * 2**20  # a 50 MiB zip in base64, plus the spec


def platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


M = TypeVar("M", DeployRequest, PatchRequest)


async def _parse(request: Request, model: type[M]) -> M:
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    raw = await read_capped(request, MAX_DEPLOY, "deploy request")
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _deploy(p: Platform, request: Request, name: str,
                  req: DeployRequest | PatchRequest) -> tuple[dict[str, Any], bool]:
    qualified = function_of(request, name)
    if isinstance(req, DeployRequest):
        spec: FunctionSpec | dict[str, Any] = req.spec()
        whole = req.spec()
    else:
        spec = req.changes()
        whole = merge_spec(as_spec((await p.registry.resolve(qualified, None)).spec), spec)
    await p.check_deploy(qualified, whole)
    result = await p.registry.deploy(qualified, spec, req.code(), check=req.check)
    fn = await p.registry.get(qualified)
    if not result.unchanged:
        p.tenancy.record(principal_of(request), tenant_of(request), "function.deploy", name,
                         {"version": result.version.version,
                          "code_sha256": result.version.code_sha})
    body = {**function_view(fn, result.version), "unchanged": result.unchanged,
            "load_check_ms": result.check_ms}
    return body, result.created


@router.put("/{name}", status_code=201, summary="Deploy a new version (creates the function)",
            responses=error_responses(400, 413, 422),
            openapi_extra={"requestBody": {"content": {"application/json": {
                "schema": DeployRequest.model_json_schema()}}}})
async def deploy(name: str, request: Request, response: Response) -> dict[str, Any]:
    p = platform(request)
    body, created = await _deploy(p, request, name, await _parse(request, DeployRequest))
    response.status_code = 201 if created else 200
    return body


@router.patch("/{name}", summary="Change some spec fields (and optionally the code): a new"
              " version, or none when nothing changed",
              responses=error_responses(400, 404, 413, 422),
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": PatchRequest.openapi_schema()}}}})
async def patch(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    body, _ = await _deploy(p, request, name, await _parse(request, PatchRequest))
    return body


@router.post("", status_code=201, summary="Create a function (409 if it exists)",
             responses=error_responses(400, 409, 413, 422),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": CreateRequest.model_json_schema()}}}})
async def create(request: Request) -> dict[str, Any]:
    p = platform(request)
    req = await _parse(request, CreateRequest)
    assert isinstance(req, CreateRequest)
    check_name(req.name)
    if await p.store.get_function(function_of(request, req.name)) is not None:
        raise errors.Conflict(f"function {req.name!r} already exists; PUT deploys a new version")
    deploy_req = DeployRequest(**req.model_dump(exclude={"name"}))
    body, _ = await _deploy(p, request, req.name, deploy_req)
    return body


@router.get("", summary="List functions")
async def list_functions(request: Request) -> dict[str, Any]:
    p = platform(request)
    out = []
    for fn in await p.registry.functions(tenant_of(request)):
        try:
            latest = await p.registry.resolve(fn.name, None)
        except errors.NotFound:
            continue  # deleted meanwhile
        out.append(function_view(fn, latest))
    return {"functions": out}


@router.get("/{name}", summary="Describe a function", responses=error_responses(404, 422))
async def get_function(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    qualified = function_of(request, name)
    fn = await p.registry.get(qualified)
    latest = await p.registry.resolve(qualified, None)
    return {**function_view(fn, latest), "instances": p.instances.describe(qualified)}


@router.delete("/{name}", status_code=204, summary="Delete a function and stop its instances",
               responses=error_responses(404, 422))
async def delete_function(name: str, request: Request) -> Response:
    p = platform(request)
    await p.registry.delete(function_of(request, name))
    p.tenancy.record(principal_of(request), tenant_of(request), "function.delete", name)
    return Response(status_code=204)


@router.get("/{name}/versions", summary="List a function's versions",
            responses=error_responses(404, 422))
async def versions(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    versions = await p.registry.versions(function_of(request, name))
    return {"versions": [version_view(v) for v in versions]}


@router.get("/{name}/instances", summary="A function's instances",
            responses=error_responses(404, 422))
async def instances(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    return {"instances": p.instances.describe(qualified)}
