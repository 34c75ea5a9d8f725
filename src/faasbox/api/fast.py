"""The hot route without the framework: ``POST /v1/functions/{name}/invoke``.

FastAPI's middleware, routing and request objects cost more CPU per warm invoke than
everything faasbox itself does for it (docs/performance.md has the profile). :class:`FaasboxApp`
serves that one route before the framework sees it, with the same checks in the same order
(the :class:`~faasbox.api.auth.Gate`, the route's scope from ``SCOPES``, ``?tenant=``, the
key's functions) and the same call (:func:`faasbox.api.invoke.call`); every other request,
and this route's OpenAPI declaration, stay with FastAPI.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from faasbox import errors
from faasbox.api import invoke
from faasbox.api.auth import SCOPES, Gate, allowed_tenant
from faasbox.api.body import too_large
from faasbox.api.errors import error_parts
from faasbox.payload import MAX_EVENT
from faasbox.platform import Platform

log = logging.getLogger(__name__)

PREFIX = "/v1/functions/"
SUFFIX = "/invoke"
SCOPE = SCOPES[("POST", "/v1/functions/{name}/invoke")]
_JSON = (b"content-type", b"application/json")
_WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="faasbox"')


def hot_name(scope: Scope) -> str | None:
    """The function name when ``scope`` is a POST to the invoke route, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    name = path[len(PREFIX):-len(SUFFIX)]
    return name if name and "/" not in name else None


class FaasboxApp(FastAPI):
    """The API app; sync invokes are served by :class:`FastInvoke` once it is set."""

    fast: FastInvoke | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast is not None:
            name = hot_name(scope)
            if name is not None:
                await self.fast(scope, receive, send, name)
                return
        await super().__call__(scope, receive, send)


class FastInvoke:
    def __init__(self, platform: Platform, gate: Gate) -> None:
        self.platform = platform
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        try:
            status, headers, body = await self._serve(scope, receive, name)
        except Exception:
            log.exception("unexpected error")  # the details go to the log, not to the client
            status, headers, body = 500, [], (
                b'{"error":{"code":"internal","message":"internal error; the server log has'
                b' the details"}}')
        raw = [_JSON, (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if status == 401:
            raw.append(_WWW_AUTHENTICATE)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _serve(self, scope: Scope, receive: Receive,
                     name: str) -> tuple[int, invoke.Headers, bytes]:
        version = traceparent = None
        try:
            principal, _ = self.gate.admit(scope)
            asked = None
            if scope["query_string"]:
                # as Starlette's QueryParams: blank values kept, the last one wins
                for key, value in parse_qsl(scope["query_string"].decode("latin-1"),
                                            keep_blank_values=True):
                    if key == "tenant":
                        asked = value
                    elif key == "version":
                        version = value
            tenant = allowed_tenant(principal, SCOPE, asked, name, self.platform.tenancy)
            declared = None
            for key, value in scope["headers"]:
                if key == b"traceparent":
                    traceparent = value.decode("latin-1")
                elif key == b"content-length":
                    declared = value
            if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT:
                raise errors.PayloadTooLarge(too_large("event", int(declared), MAX_EVENT))
        except errors.FaasboxError as exc:
            return error_parts(exc)
        return await invoke.call(self.platform, tenant, name, version, traceparent,
                                 lambda: read_body(receive))


async def read_body(receive: Receive, limit: int = MAX_EVENT) -> bytes:
    """The request body, refused past ``limit`` bytes (as ``body.read_capped``)."""
    chunks = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequest("the client went away while sending the event")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(too_large("event", size, limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]
