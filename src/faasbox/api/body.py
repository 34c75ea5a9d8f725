"""Reading request bodies: JSON whatever the Content-Type, with a size cap."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from faasbox import errors
from faasbox.payload import MAX_EVENT

_JSON = (b"content-type", b"application/json")
# the most a model-bound body (jobs, workflows, publish, triggers, policies) may be: an event
# of MAX_EVENT and room for the rest; FastAPI reads such a body whole before it is validated
MODEL_BODY_LIMIT = 16 * 2**20


def is_json_media_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class JSONBodyRoute(APIRoute):
    """A route whose request body is read as JSON whatever its Content-Type says.

    Every body the API takes is JSON. The routes that read the raw body (invoke, tasks, deploy)
    never looked at the Content-Type; FastAPI's model-bound bodies (jobs, triggers, task
    policy) parse JSON only under ``application/json`` and would answer 422 to ``curl -d``
    (``application/x-www-form-urlencoded``), ``text/plain`` or no Content-Type at all. This
    route class makes them agree: the body is parsed as JSON in every case, and a body that is
    not JSON is a 400 ``malformed_json`` error. Every router of the API uses it
    (:func:`json_router`; :func:`check_json_routes` enforces it when the app is built).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # no declared body: raw-body routes and GETs as they are
            return handler

        async def json_body_handler(request: Request) -> Response:
            body = await read_capped(request, MODEL_BODY_LIMIT)  # the 413 is ours

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            headers = request.scope["headers"]
            if not is_json_media_type(request.headers.get("content-type")):
                headers = [*(h for h in headers if h[0] != b"content-type"), _JSON]
            return await handler(Request({**request.scope, "headers": headers}, replay))

        return json_body_handler


def json_router(**kwargs: Any) -> APIRouter:
    """An ``APIRouter`` whose routes take JSON bodies whatever their Content-Type."""
    return APIRouter(route_class=JSONBodyRoute, **kwargs)


def check_json_routes(router: APIRouter) -> APIRouter:
    """``router`` itself, once every API route of it is a :class:`JSONBodyRoute`."""
    for route in router.routes:
        if isinstance(route, APIRoute) and not isinstance(route, JSONBodyRoute):
            raise TypeError(f"route {route.path} is not a JSONBodyRoute: make its router"
                            " with faasbox.api.body.json_router()")
    return router


async def read_capped(request: Request, limit: int, what: str = "request body") -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(too_large(what, int(declared), limit))
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(too_large(what, size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(what: str, size: int, limit: int) -> str:
    return f"the {what} is {size} bytes or more; the limit is {limit} bytes ({limit // 2**20} MiB)"


async def read_event(request: Request) -> bytes:
    """The JSON event of an invocation, validated but passed on as bytes."""
    return validate_event(await read_capped(request, MAX_EVENT, "event"))


def validate_event(body: bytes) -> bytes:
    """The body itself if it is JSON (an empty body is the event ``null``)."""
    if not body.strip():
        return b"null"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJSON(f"the event is not valid JSON: {exc}") from None
    return body


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent header (``00-<32 hex>-<16 hex>-<2 hex>``); a header
    that is not one is ignored (None), as the W3C Trace Context spec says."""
    if traceparent is None:
        return None
    parts = traceparent.strip().split("-")
    if (len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32
            or any(c not in "0123456789abcdef" for c in parts[1])):
        return None
    return parts[1]
