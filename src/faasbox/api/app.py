"""The FastAPI application."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from faasbox import __version__
from faasbox.api import (
    delivery,
    docs,
    errors,
    functions,
    groups,
    invoke,
    jobs,
    status,
    system,
    tasks,
    tenants,
    usage,
)
from faasbox.api.auth import AuthMiddleware, Gate, is_loopback
from faasbox.api.body import check_json_routes
from faasbox.api.fast import FaasboxApp, FastInvoke
from faasbox.platform import Platform
from faasbox.stack import deploy_stack
from faasbox.ui import app as ui

log = logging.getLogger(__name__)


def create_app(platform: Platform, deploy: Path | None = None,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if deploy is not None:
            for line in await deploy_stack(platform, deploy):  # failures are logged there
                log.info("%s", line)
        # what start-up made lives as long as the server: collections need not scan it
        gc.freeze()
        # calls make many short-lived containers, freed by their counts: a young collection
        # every 10,000 (not 700) finds as many cycles for a fraction of the scans (+3 % tasks/s)
        gc.set_threshold(10_000, 20, 20)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await platform.close()

    app = FaasboxApp(title="faasbox", version=__version__, lifespan=lifespan,
                  description="A self-hosted serverless platform for Python functions and jobs.",
                  docs_url=None, redoc_url=None)  # docs.install serves /docs offline
    app.state.platform = platform
    errors.install(app)
    # invoke first: the hot route matches soonest. Every route is an auth.ScopedRoute: it
    # checks the key's scope, and reads its body as JSON whatever the Content-Type
    # (body.JSONBodyRoute), so curl -d works on all of them.
    for module in (invoke, functions, tasks, delivery, jobs, system, status, tenants, usage,
                   groups):
        app.include_router(check_json_routes(module.router))
    settings = platform.settings
    gate = Gate(platform.tenancy,
                server_names=server_names(settings.host, settings.server_names),
                metrics_public=settings.metrics_public, insecure_no_auth=settings.insecure_no_auth)
    app.add_middleware(AuthMiddleware, gate=gate)
    if settings.fast_invoke:  # sync invokes skip the framework (api/fast.py)
        app.fast = FastInvoke(platform, gate)
    ui.install(app, platform)  # the dashboard at /ui (not in the API's spec)
    docs.install(app)  # last: the API routes match first
    return app


def server_names(host: str, configured: str) -> frozenset[str] | None:
    """The Host names to answer to: the configured ones (with the loopback names), else the
    loopback names for a loopback server, else any (None)."""
    names = {n.strip().lower() for n in configured.split(",") if n.strip()}
    if names:
        return frozenset(names | {"localhost", "127.0.0.1", "[::1]"})
    if is_loopback(host):
        return frozenset({"localhost", "127.0.0.1", "[::1]", "::1", host})
    return None
