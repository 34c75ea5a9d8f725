"""The record a destination receives: the shape users know from Lambda destinations.

::

    {"version": "1.0", "timestamp": "2026-03-01T12:00:00.123Z",
     "requestContext": {"requestId": "<task id>", "function": "resize", "version": "latest",
                        "condition": "Success", "approximateInvokeCount": 1},
     "requestPayload": <the task's event>,
     "responseContext": {"statusCode": 200, "executedVersion": "3", "functionError": null},
     "responsePayload": <the result, or {"errorType", "errorMessage"}>}

``condition`` is ``Success``, ``RetriesExhausted`` (the task ended ``dead``) or
``EventAgeExceeded`` (``expired``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from faasbox.store.queue import TaskRow
from faasbox.tenancy.names import display

CONDITIONS = {"succeeded": "Success", "dead": "RetriesExhausted", "expired": "EventAgeExceeded"}
# the status a sync invoke would have answered with, by error code
STATUS_CODES = {"timeout": 504, "response_too_large": 413, "throttled": 429}


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def build(task: TaskRow, status: str, now: float, *, result: bytes | None,
          executed_version: int | None) -> bytes:
    """The record of ``task`` ending ``status`` (succeeded, dead or expired)."""
    ok = status == "succeeded"
    response: dict[str, Any] = {
        "statusCode": 200 if ok else (
            STATUS_CODES.get(task.error_code or "", 500) if executed_version else None),
        "executedVersion": None if executed_version is None else str(executed_version),
        "functionError": None if ok else (task.error_code or status),
    }
    payload: Any = orjson.Fragment(result or b"null") if ok else {
        "errorType": task.error_code or status, "errorMessage": task.error_message or ""}
    return orjson.dumps({
        "version": "1.0",
        "timestamp": timestamp(now),
        "requestContext": {
            "requestId": task.id, "function": display(task.function),
            "version": "latest" if task.version is None else str(task.version),
            "condition": CONDITIONS.get(status, status),
            "approximateInvokeCount": task.attempts,
        },
        "requestPayload": orjson.Fragment(task.event or b"null"),
        "responseContext": response,
        "responsePayload": payload,
    })
