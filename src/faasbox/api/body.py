"""Reading request bodies with a size cap."""

from __future__ import annotations

import orjson
from fastapi import Request

from faasbox import errors

MAX_EVENT = 6 * 2**20


async def read_capped(request: Request, limit: int, what: str = "request body") -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(_too_large(what, int(declared), limit))
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(_too_large(what, size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, size: int, limit: int) -> str:
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
    """The trace id of a W3C traceparent header (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if traceparent is None:
        return None
    parts = traceparent.strip().split("-")
    if (len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32
            or any(c not in "0123456789abcdef" for c in parts[1])):
        raise errors.InvalidRequest("traceparent must be a W3C trace context header"
                                    " (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)")
    return parts[1]
