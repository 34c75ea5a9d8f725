"""The API's own documentation: Swagger UI at ``/docs`` that works offline, and the spec.

The Swagger UI assets are served from the ``fastapi-offline`` package (swagger-ui-dist files)
under ``/docs/static``, so ``/docs`` loads nothing from outside the server. ReDoc is not served:
its bundle fetches a logo from outside.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"
SCHEMAS = "#/components/schemas/"


def install(app: FastAPI) -> None:
    """Serve ``/docs`` (the app is made with ``docs_url=None, redoc_url=None``) and have the
    spec resolve every ``$ref``."""
    app.mount(STATIC_URL, StaticFiles(packages=[("fastapi_offline", "static")]),
              name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            oauth2_redirect_url=None,
        )

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_security(lift_defs(generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_security(spec: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer API keys every route but ``/healthz`` takes (``/metrics`` too,
    unless the server makes it public), with each route's least scope as ``x-faasbox-scope``."""
    from faasbox.api.auth import SCOPES

    spec.setdefault("components", {})["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "fbx_<key id>_<secret>",
        "description": "an API key of a tenant (docs/tenancy.md)"}}
    spec["security"] = [{"bearer": []}]
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            scope = SCOPES.get((method.upper(), path))
            if scope == "open":
                op["security"] = []
            elif scope is not None:
                op["x-faasbox-scope"] = scope
    return spec


def lift_defs(spec: dict[str, Any]) -> dict[str, Any]:
    """Move the ``$defs`` of schemas FastAPI did not make itself (a pydantic
    ``model_json_schema()`` in ``openapi_extra``) into ``components/schemas`` and point their
    ``#/$defs/...`` references there: in the spec, ``#`` is the whole document, which has no
    ``$defs``."""
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, schema in (node.pop("$defs", None) or {}).items():
                schemas.setdefault(name, schema)
                walk(schema)
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = SCHEMAS + ref.removeprefix("#/$defs/")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.get("paths", {}))
    return spec
