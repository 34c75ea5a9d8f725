"""Live scaling status of every function (what ``faasbox top`` shows)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from faasbox import errors
from faasbox.api.auth import ScopedRoute, principal_of, tenant_of
from faasbox.api.responses import V1, error_responses
from faasbox.platform import Platform
from faasbox.scheduler import InstancePools
from faasbox.tenancy.names import display

router = APIRouter(tags=["system"], route_class=ScopedRoute,
                   responses=error_responses(*V1))


@router.get("/v1/status", summary="Instances, demand and autoscaler state of every function")
async def status(request: Request) -> dict[str, Any]:
    p: Platform = request.app.state.platform
    functions = []
    for fn in await p.registry.functions(tenant_of(request)):
        try:
            latest = await p.registry.resolve(fn.name, None)
        except errors.NotFound:
            continue  # deleted meanwhile
        spec = latest.spec
        functions.append({
            "name": display(fn.name),
            "version": latest.version,
            "min_instances": spec.min_instances,
            "max_instances": spec.max_instances,
            "memory_mb": spec.memory_mb,
            **function_status(p.instances, fn.name, p.clock.now()),
        })
    return {
        "time": p.clock.now(),
        "keepalive_policy": p.settings.keepalive_policy,
        # the node is shared by every tenant: only an admin sees its capacity
        **({"nodes": p.resources.describe(),
            "servers": [m.view() for m in await p.cluster.servers()]}
           if principal_of(request).scope == "admin" else {}),
        "functions": functions,
    }


def function_status(instances: InstancePools, function: str, now: float) -> dict[str, Any]:
    """The scaling state of one function (for ``GET /v1/status`` and ``faasbox top``)."""
    pool = instances.pools.get(function)
    states = {"starting": 0, "idle": 0, "busy": 0, "stopping": 0}
    if pool is None:
        return {"instances": {**states, "total": 0}, "in_flight": 0, "waiting": 0,
                "queue_depth": 0, "desired": 0, "floor": 0, "hold": 0, "target": 0,
                "panic": False,
                "reason": "", "cold_starts_per_min": 0, "pending_prewarms": 0,
                "cold_start_ms": None}
    for inst in pool.instances:
        states[inst.state if inst.state in states else "stopping"] += 1
    states["starting"] += pool.starting
    planner = pool.planner
    plan, obs = planner.last_plan, planner.last_observation
    return {
        "instances": {**states, "total": sum(states.values())},
        "in_flight": max(0, pool.demand - len(pool.waiters)),
        "waiting": len(pool.waiters),
        "queue_depth": obs.queue_depth if obs else 0,
        "desired": plan.desired if plan else 0,
        "floor": plan.floor if plan else 0,
        "hold": plan.hold if plan else 0,
        "target": plan.target if plan else 0,
        "panic": plan.panic if plan else False,
        "reason": plan.reason if plan else "",
        "cold_starts_per_min": planner.cold_starts_per_min(now),
        "pending_prewarms": len(planner.pending),
        "cold_start_ms": round(planner.cold_start_s * 1000, 1),
    }
