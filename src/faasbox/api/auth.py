"""Authentication and authorization of every request.

- :class:`AuthMiddleware` (pure ASGI, before routing) checks the Host header against the
  server's names (DNS rebinding) and turns ``Authorization: Bearer <key>`` into a
  :class:`~faasbox.tenancy.model.Principal` on ``request.state.principal``: 401 without a
  valid key on everything but ``/healthz``, the API docs and (if public) ``/metrics``. A new
  route is authenticated without doing anything.
- :class:`ScopedRoute` (every router's route class) enforces the scope each route is given in
  :data:`SCOPES` and resolves the tenant the request acts on: an admin may name any tenant
  with ``?tenant=``; anyone else acts on their own. A route missing from the table fails at
  start, so no route can be added without deciding who may call it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from faasbox import errors
from faasbox.api.body import JSONBodyRoute
from faasbox.api.errors import faasbox_error_response
from faasbox.tenancy.model import Principal
from faasbox.tenancy.names import qualify
from faasbox.tenancy.service import Tenancy

OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                        "/redoc", "/ui"})
# the dashboard signs its users in itself (a session cookie; ui/session.py) and calls the API
# with their keys, through this middleware
OPEN_PREFIXES = ("/docs/", "/ui/")

# (method, path) -> the least scope that may call it
SCOPES: dict[tuple[str, str], str] = {
    ("POST", "/v1/functions/{name}/invoke"): "invoke",
    ("POST", "/v1/functions/{name}/tasks"): "invoke",
    ("POST", "/v1/functions/{name}/tasks:batch"): "invoke",
    ("GET", "/v1/tasks/{task_id}"): "invoke",
    ("GET", "/v1/tasks"): "developer",
    ("POST", "/v1/tasks/{task_id}/cancel"): "developer",
    ("GET", "/v1/invocations"): "developer",
    ("GET", "/v1/invocations/{invocation_id}"): "developer",
    ("PUT", "/v1/functions/{name}"): "developer",
    ("PATCH", "/v1/functions/{name}"): "developer",
    ("POST", "/v1/functions"): "developer",
    ("GET", "/v1/functions"): "developer",
    ("GET", "/v1/functions/{name}"): "developer",
    ("DELETE", "/v1/functions/{name}"): "developer",
    ("GET", "/v1/functions/{name}/versions"): "developer",
    ("GET", "/v1/functions/{name}/instances"): "developer",
    ("GET", "/v1/functions/{name}/task-policy"): "developer",
    ("PUT", "/v1/functions/{name}/task-policy"): "developer",
    ("GET", "/v1/functions/{name}/queue"): "developer",
    ("POST", "/v1/jobs"): "developer",
    ("GET", "/v1/jobs"): "developer",
    ("GET", "/v1/jobs/{job_id}"): "developer",
    ("POST", "/v1/jobs/{job_id}/cancel"): "developer",
    ("POST", "/v1/functions/{name}/triggers"): "developer",
    ("GET", "/v1/functions/{name}/triggers"): "developer",
    ("GET", "/v1/triggers"): "developer",
    ("GET", "/v1/functions/{name}/triggers/{trigger}"): "developer",
    ("PUT", "/v1/functions/{name}/triggers/{trigger}"): "developer",
    ("PATCH", "/v1/functions/{name}/triggers/{trigger}"): "developer",
    ("DELETE", "/v1/functions/{name}/triggers/{trigger}"): "developer",
    ("GET", "/v1/traces/{trace_id}"): "developer",
    ("GET", "/v1/status"): "developer",
    ("GET", "/v1/nodes"): "admin",
    ("GET", "/v1/audit"): "developer",
    ("GET", "/v1/whoami"): "invoke",
    ("GET", "/v1/node"): "admin",
    ("GET", "/metrics"): "admin",
    ("POST", "/v1/tenants"): "admin",
    ("GET", "/v1/tenants"): "admin",
    ("GET", "/v1/tenants/{tenant}"): "admin",
    ("PATCH", "/v1/tenants/{tenant}"): "admin",
    ("DELETE", "/v1/tenants/{tenant}"): "admin",
    ("POST", "/v1/tenants/{tenant}/keys"): "admin",
    ("GET", "/v1/tenants/{tenant}/keys"): "admin",
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}"): "admin",
    # delivery (api/delivery.py)
    ("GET", "/v1/tasks/{task_id}/deliveries"): "developer",
    ("GET", "/v1/webhook-secret"): "developer",
    ("POST", "/v1/webhook-secret:rotate"): "developer",
    ("POST", "/v1/tasks:redrive"): "developer",
    ("POST", "/v1/tasks:cancel"): "developer",
    ("POST", "/v1/tasks:purge"): "developer",
    ("POST", "/v1/functions/{name}/queue:pause"): "developer",
    ("POST", "/v1/functions/{name}/queue:resume"): "developer",
    ("POST", "/v1/topics"): "developer",
    ("GET", "/v1/topics"): "developer",
    ("GET", "/v1/topics/{topic}"): "developer",
    ("DELETE", "/v1/topics/{topic}"): "developer",
    ("POST", "/v1/topics/{topic}/subscriptions"): "developer",
    ("DELETE", "/v1/topics/{topic}/subscriptions/{function}"): "developer",
    ("POST", "/v1/topics/{topic}/publish"): "developer",
    ("POST", "/v1/workflows"): "developer",
    ("GET", "/v1/workflows"): "developer",
    ("GET", "/v1/workflows/{workflow_id}"): "developer",
    ("POST", "/v1/workflows/{workflow_id}/cancel"): "developer",
    ("PUT", "/v1/workflow-definitions/{workflow}"): "developer",
    ("GET", "/v1/workflow-definitions"): "developer",
    ("GET", "/v1/workflow-definitions/{workflow}"): "developer",
    ("DELETE", "/v1/workflow-definitions/{workflow}"): "developer",
    # service groups (api/groups.py)
    ("POST", "/v1/service-groups"): "admin",
    ("GET", "/v1/service-groups"): "developer",
    ("GET", "/v1/service-groups/{group}"): "developer",
    ("PATCH", "/v1/service-groups/{group}"): "admin",
    ("DELETE", "/v1/service-groups/{group}"): "admin",
    ("GET", "/healthz"): "open",
    # metering (api/usage.py)
    ("GET", "/v1/usage"): "developer",
    ("GET", "/v1/cost"): "developer",
    ("GET", "/v1/waste"): "developer",
}

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gate:
    """Who is asking: the Host check and the bearer key of one request (no routing)."""

    def __init__(self, tenancy: Tenancy, *, server_names: frozenset[str] | None,
                 metrics_public: bool, insecure_no_auth: bool) -> None:
        self.tenancy = tenancy
        self.server_names = server_names  # None: any Host
        self.metrics_public = metrics_public
        self.insecure_no_auth = insecure_no_auth

    def admit(self, scope: Scope) -> tuple[Principal | None, bool]:
        """``(principal, public)`` of an HTTP request, or raise why it is refused. The
        principal is None on an open path, and ``public`` on /metrics when it is public."""
        headers = dict(scope["headers"])
        if self.server_names is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.server_names:
                raise errors.HostNotAllowed(
                    f"this server does not answer to the host name {host!r} (set"
                    " FAASBOX_SERVER_NAMES to add it)")
        path: str = scope["path"]
        # served to anyone by configuration: its route runs without a principal
        public = path == "/metrics" and self.metrics_public
        if self.insecure_no_auth:
            return Principal(None, "default", "admin"), public
        if public or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None, public
        principal = self._principal(headers.get(b"authorization"))
        if principal is None:
            raise errors.Unauthenticated(
                "this request needs an API key: Authorization: Bearer <key>"
                " (faasbox login, or FAASBOX_API_KEY)")
        return principal, public

    def _principal(self, header: bytes | None) -> Principal | None:
        if header is None:
            return None
        kind, _, token = header.decode("latin-1").partition(" ")
        if kind.lower() != "bearer":
            return None
        return self.tenancy.authenticate(token.strip())


class AuthMiddleware:
    """Puts the :class:`Gate`'s answer on ``request.state``, or answers 401 / 400 itself."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal, public = self.gate.admit(scope)
        except errors.FaasboxError as exc:
            await refuse(scope, receive, send, exc)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["public"] = public
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def refuse(scope: Scope, receive: Receive, send: Send, exc: errors.FaasboxError) -> None:
    headers = ({"WWW-Authenticate": 'Bearer realm="faasbox"'}
               if isinstance(exc, errors.Unauthenticated) else None)
    await faasbox_error_response(exc, headers)(scope, receive, send)


class ScopedRoute(JSONBodyRoute):
    """A route that only runs for a principal whose scope allows it (see :data:`SCOPES`),
    and reads its body as JSON whatever the Content-Type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs = {SCOPES.get((method, self.path)) for method in self.methods or ()}
        if None in needs or len(needs) != 1:
            raise RuntimeError(f"route {sorted(self.methods or ())} {self.path} has no scope in"
                               " faasbox.api.auth.SCOPES")
        scope = needs.pop()
        assert scope is not None
        if scope == "open":
            return handler

        async def scoped(request: Request) -> Response:
            if request.state.principal is None and getattr(request.state, "public", False):
                return await handler(request)  # FAASBOX_METRICS_PUBLIC
            try:
                authorize(request, scope)
            except errors.FaasboxError as exc:
                return faasbox_error_response(exc)
            return await handler(request)

        return scoped


def authorize(request: Request, scope: str) -> None:
    request.state.tenant = allowed_tenant(
        request.state.principal, scope, request.query_params.get("tenant"),
        request.path_params.get("name"), request.app.state.platform.tenancy)


def allowed_tenant(principal: Principal | None, scope: str, asked: str | None,
                   name: str | None, tenancy: Tenancy) -> str:
    """The tenant a request of ``principal`` acts on (``asked`` with ``?tenant=``), if its key
    allows ``scope`` there (and the function ``name``, for a key limited to some)."""
    if principal is None:  # an open path that is not open for this route
        raise errors.Unauthenticated("this request needs an API key")
    if not principal.allows(scope):
        raise errors.Forbidden(f"a {principal.scope} key cannot do this (needs {scope})")
    tenant = principal.tenant
    if asked is not None and asked != principal.tenant:
        if principal.scope != "admin":
            raise errors.Forbidden("only an admin key can act on another tenant")
        if asked not in tenancy.tenants:
            raise errors.NotFound(f"no tenant {asked!r}")  # nothing is there, nor made there
        tenant = asked
    if name is not None and not principal.may_call(name):
        raise errors.Forbidden(f"this key may not call function {name!r}")
    return tenant


def principal_of(request: Request) -> Principal:
    p: Principal = request.state.principal
    return p


def tenant_of(request: Request) -> str:
    t: str = request.state.tenant
    return t


def function_of(request: Request, name: str) -> str:
    """The qualified name of the request's tenant's function ``name``."""
    return qualify(tenant_of(request), name)
