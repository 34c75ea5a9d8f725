"""The error responses of the API as the OpenAPI spec declares them.

Every error leaves the API as ``{"error": {"code", "message", ...}}`` (api/errors.py); each route
declares the statuses it can return with :class:`ErrorBody` as their schema, by
:func:`error_responses`. Request validation errors (422) have this body too, so FastAPI's own
``HTTPValidationError`` schema never appears in the spec.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="a stable machine-readable code, e.g. function_not_found")
    message: str = Field(description="what went wrong, for people")
    type: str | None = Field(None, description="a function error: the exception type")
    traceback: str | None = Field(None, description="a function error: its traceback")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


DESCRIPTIONS = {
    400: "invalid_request, malformed_json or unsafe_archive: the request is wrong as sent",
    401: "no valid API token (when authentication is on)",
    403: "the API token may not do this (when authentication is on)",
    404: "not_found, function_not_found, version_not_found or invocation_not_found",
    409: "conflict: it exists already",
    413: "payload_too_large (or response_too_large): a body over its limit",
    422: "invalid_spec (deploy_failed, dependency_install_failed, load_error): the request"
         " does not validate",
    429: "throttled: no capacity within the acquire timeout; retry after Retry-After seconds",
    500: "internal, or the invocation failed: function_error, init_error, out_of_memory,"
         " instance_crashed",
    503: "unavailable: the server cannot serve this now",
    504: "timeout: the invocation ran past the function's timeout_s",
}

EXAMPLES = {
    400: ("malformed_json", "the event is not valid JSON: unexpected character: line 1 column 2"),
    404: ("function_not_found", "function 'hello' does not exist"),
    409: ("conflict", "function 'hello' already exists; PUT deploys a new version"),
    413: ("payload_too_large", "the event is 7340032 bytes or more; the limit is 6291456 bytes"
          " (6 MiB)"),
    422: ("invalid_spec", "memory_mb: Input should be greater than or equal to 128"),
    429: ("throttled", "function 'hello' is at capacity (10 instances busy) and no instance"
          " freed up within 10 s"),
    500: ("function_error", "division by zero"),
    503: ("unavailable", "function 'hello' is no longer served here"),
    504: ("timeout", "the invocation timed out after 30 s; its instance was stopped"),
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}

# every /v1 route: authentication comes to all of them; 500 and 503 can come from anywhere
V1 = (401, 403, 500, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route (or router) that can answer with these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorBody,
                                    "description": DESCRIPTIONS.get(status, "an error")}
        if status in EXAMPLES:
            code, message = EXAMPLES[status]
            response["content"] = {"application/json": {
                "example": {"error": {"code": code, "message": message}}}}
        if status == 429:
            response["headers"] = _RETRY_AFTER
        out[status] = response
    return out
