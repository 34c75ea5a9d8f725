"""Functions: deploy, list, describe, delete, versions, instances."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from faasbox import errors
from faasbox.api.body import read_capped
from faasbox.api.models import CreateRequest, DeployRequest, function_view, version_view
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform

router = APIRouter(prefix="/v1/functions", tags=["functions"], responses=error_responses(*V1))
MAX_DEPLOY = 96 * 2**20  # a 50 MiB zip in base64, plus the spec


def platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


async def _parse(request: Request, model: type[DeployRequest]) -> DeployRequest:
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    raw = await read_capped(request, MAX_DEPLOY, "deploy request")
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _deploy(p: Platform, name: str, req: DeployRequest) -> tuple[dict[str, Any], bool]:
    result = await p.registry.deploy(name, req.spec(), req.code(), check=req.check)
    fn = await p.registry.get(name)
    body = {**function_view(fn, result.version), "load_check_ms": result.check_ms}
    return body, result.created


@router.put("/{name}", status_code=201, summary="Deploy a new version (creates the function)",
            responses=error_responses(400, 413, 422),
            openapi_extra={"requestBody": {"content": {"application/json": {
                "schema": DeployRequest.model_json_schema()}}}})
async def deploy(name: str, request: Request, response: Response) -> dict[str, Any]:
    p = platform(request)
    body, created = await _deploy(p, name, await _parse(request, DeployRequest))
    response.status_code = 201 if created else 200
    return body


@router.post("", status_code=201, summary="Create a function (409 if it exists)",
             responses=error_responses(400, 409, 413, 422),
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": CreateRequest.model_json_schema()}}}})
async def create(request: Request) -> dict[str, Any]:
    p = platform(request)
    req = await _parse(request, CreateRequest)
    assert isinstance(req, CreateRequest)
    if await p.store.get_function(req.name) is not None:
        raise errors.Conflict(f"function {req.name!r} already exists; PUT deploys a new version")
    deploy_req = DeployRequest(**req.model_dump(exclude={"name"}))
    body, _ = await _deploy(p, req.name, deploy_req)
    return body


@router.get("", summary="List functions")
async def list_functions(request: Request) -> dict[str, Any]:
    p = platform(request)
    out = []
    for fn in await p.registry.functions():
        latest = await p.registry.resolve(fn.name, None)
        out.append(function_view(fn, latest))
    return {"functions": out}


@router.get("/{name}", summary="Describe a function", responses=error_responses(404, 422))
async def get_function(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    fn = await p.registry.get(name)
    latest = await p.registry.resolve(name, None)
    return {**function_view(fn, latest), "instances": p.scheduler.describe(name)}


@router.delete("/{name}", status_code=204, summary="Delete a function and stop its instances",
               responses=error_responses(404, 422))
async def delete_function(name: str, request: Request) -> Response:
    p = platform(request)
    await p.registry.delete(name)
    await p.triggers.delete_function(name)
    await p.scheduler.drop(name)
    return Response(status_code=204)


@router.get("/{name}/versions", summary="List a function's versions",
            responses=error_responses(404, 422))
async def versions(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    return {"versions": [version_view(v) for v in await p.registry.versions(name)]}


@router.get("/{name}/instances", summary="A function's instances",
            responses=error_responses(404, 422))
async def instances(name: str, request: Request) -> dict[str, Any]:
    p = platform(request)
    await p.registry.get(name)
    return {"instances": p.scheduler.describe(name)}
