"""Health, metrics and what the node can do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from faasbox import __version__
from faasbox.api.auth import ScopedRoute
from faasbox.api.responses import V1, error_responses
from faasbox.metering import gauges
from faasbox.platform import Platform

router = APIRouter(tags=["system"], route_class=ScopedRoute)


@router.get("/healthz", summary="Liveness", responses=error_responses(500))
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/metrics", summary="Prometheus metrics (an admin key, unless"
            " FAASBOX_METRICS_PUBLIC=1)", response_class=Response,
            responses=error_responses(401, 403, 500))
async def metrics(request: Request) -> Response:
    p: Platform = request.app.state.platform
    await p.refresh_task_metrics()
    await gauges.refresh(p.store, p.metrics)  # jobs by state
    return Response(generate_latest(p.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/node", summary="Node capacity and active isolation features",
            responses=error_responses(*V1))
async def node(request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    return {
        "nodes": p.resources.describe(),
        "sandbox": [{"feature": f, "active": a, "detail": d}
                    for f, a, d in [*p.features.report(), p.builds.report()]],
    }
