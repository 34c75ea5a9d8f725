"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from faasbox import __version__
from faasbox.api import docs, errors, functions, invoke, jobs, status, system, tasks
from faasbox.platform import Platform

log = logging.getLogger(__name__)


def create_app(platform: Platform, deploy: Path | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if deploy is not None:
            for line in await platform.deploy_stack(deploy):
                log.info("deployed %s", line)
        try:
            yield
        finally:
            await platform.close()

    app = FastAPI(title="faasbox", version=__version__, lifespan=lifespan,
                  description="A self-hosted serverless platform for Python functions and jobs.",
                  docs_url=None, redoc_url=None)  # docs.install serves /docs offline
    app.state.platform = platform
    errors.install(app)
    app.include_router(invoke.router)  # first: the hot route matches soonest
    app.include_router(functions.router)
    app.include_router(tasks.router)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(status.router)
    docs.install(app)  # last: the API routes match first
    return app
