"""Health, metrics and what the node can do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from faasbox import __version__
from faasbox.api.auth import ScopedRoute
from faasbox.api.responses import V1, error_responses
from faasbox.metering import gauges
from faasbox.platform import Platform

router = APIRouter(tags=["system"], route_class=ScopedRoute)


@router.get("/healthz", summary="Liveness, and whether this server reaches its store"
            " (503 while it does not: it leases no tasks then)",
            responses=error_responses(500))
async def healthz(request: Request) -> Response:
    p: Platform = request.app.state.platform
    body: dict[str, Any] = {"status": "ok", "version": __version__, "server": p.cluster.id}
    if not p.cluster.store_ok:
        body.update(status="store_unavailable", detail=p.cluster.store_error, leasing=False)
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


@router.get("/v1/nodes", summary="Every server on this store: capacity, instances, heartbeat",
            responses=error_responses(*V1))
async def nodes(request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    return {"store": p.store.db.description.split(" ")[0], "self": p.cluster.id,
            "server_timeout_s": p.cluster.dead_after_s,
            "servers": [m.view() for m in await p.cluster.servers()]}


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
