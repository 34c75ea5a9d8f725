"""Every error leaves the API as ``{"error": {"code", "message", ...}}`` with its status."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from faasbox import errors

log = logging.getLogger(__name__)

STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                409: "conflict", 413: "payload_too_large", 422: "invalid_spec",
                429: "throttled", 500: "internal", 503: "unavailable", 504: "timeout"}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None,
    **details: Any,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in details.items() if v is not None})
    return Response(orjson.dumps({"error": body}), status_code=status,
                    media_type="application/json", headers=headers)


def faasbox_error_response(exc: errors.FaasboxError, headers: dict[str, str] | None = None,
                           ) -> Response:
    status, extra, body = error_parts(exc)
    return Response(body, status_code=status, media_type="application/json",
                    headers={**(headers or {}), **dict(extra)})


def error_parts(exc: errors.FaasboxError) -> tuple[int, list[tuple[str, str]], bytes]:
    """``exc`` as ``(status, headers, JSON body)``."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    body.update({k: v for k, v in exc.details.items() if v is not None})
    headers = ([("Retry-After", str(max(1, round(exc.retry_after))))]
               if isinstance(exc, errors.Throttled) else [])
    return exc.status, headers, orjson.dumps({"error": body})


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return 400, "malformed_json", f"the body is not valid JSON: {err.get('msg')}"
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        problems.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return 422, "invalid_spec", "; ".join(problems) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.FaasboxError)
    async def _faasbox(_: Request, exc: errors.FaasboxError) -> Response:
        return faasbox_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        status, code, message = validation_message(exc)
        return error_response(status, code, message)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")  # the details go to the log, not to the client
        return error_response(500, "internal", "internal error; the server log has the details")
