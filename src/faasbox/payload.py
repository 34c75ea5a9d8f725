"""Events as JSON bytes, within the one cap every way an event enters shares (a call, a
task, a batch, a job shard, a cron fire, a chained result)."""

from __future__ import annotations

from typing import Any

import orjson

MAX_EVENT = 6 * 2**20  # like Lambda's synchronous payload limit


def encode_event(value: Any, what: str = "the event") -> bytes:
    """``value`` as JSON bytes; ValueError (with the reason) when it cannot be one: a number
    JSON cannot carry here (integers beyond 64 bits) or more than :data:`MAX_EVENT` bytes."""
    try:
        body = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as JSON: {exc}") from None
    check_size(body, what)
    return body


class EventTooLarge(ValueError):
    """An event over :data:`MAX_EVENT`."""


def check_size(body: bytes, what: str = "the event") -> bytes:
    if len(body) > MAX_EVENT:
        raise EventTooLarge(f"{what} is {len(body)} bytes; the limit is {MAX_EVENT} bytes"
                         f" ({MAX_EVENT // 2**20} MiB)")
    return body
