"""Health, metrics and what the node can do."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from faasbox import __version__
from faasbox.api.body import json_router
from faasbox.platform import Platform

router = json_router(tags=["system"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    p: Platform = request.app.state.platform
    return Response(generate_latest(p.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/node", summary="Node capacity and active isolation features")
async def node(request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    return {
        "nodes": p.resources.describe(),
        "sandbox": [{"feature": f, "active": a, "detail": d} for f, a, d in p.features.report()],
    }
