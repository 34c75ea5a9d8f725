"""Live scaling status of every function (what ``faasbox top`` shows)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from faasbox import errors
from faasbox.platform import Platform

router = APIRouter(tags=["system"])


@router.get("/v1/status", summary="Instances, demand and autoscaler state of every function")
async def status(request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    functions = []
    for fn in await p.registry.functions():
        try:
            latest = await p.registry.resolve(fn.name, None)
        except errors.NotFound:
            continue  # deleted meanwhile
        spec = latest.spec
        functions.append({
            "name": fn.name,
            "version": latest.version,
            "min_instances": spec["min_instances"],
            "max_instances": spec["max_instances"],
            "memory_mb": spec["memory_mb"],
            **p.scheduler.status(fn.name),
        })
    return {
        "time": p.clock.now(),
        "keepalive_policy": p.settings.keepalive_policy,
        "nodes": p.resources.describe(),
        "functions": functions,
    }
