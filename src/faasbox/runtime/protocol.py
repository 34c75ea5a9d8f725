"""Frames between a node and an instance.

A frame is ``<u32 total length><u32 header length><header JSON><payload bytes>``. The header is
a small JSON object with a ``t`` (type) field; the payload carries an event or a result as raw
JSON bytes, so that neither side parses what it only passes on.

Node → instance: ``load`` (once), ``invoke``. Instance → node: ``hello``, ``ready`` |
``load_error`` (once), ``result`` (one per invoke).
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

import orjson

_HEAD = struct.Struct(">II")
MAX_FRAME = 64 * 2**20  # node -> instance (an event is at most 6 MiB; room for the header)
MAX_RESULT = 6 * 2**20  # a result's bytes
# instance -> node: a result and its header (output and error text are capped by the runtime);
# the node refuses a longer frame before reading it
MAX_FROM_INSTANCE = MAX_RESULT + 2**20


class ProtocolError(Exception):
    pass


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _HEAD.pack(4 + len(head) + len(payload), len(head)) + head + payload


def unpack(body: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a frame body (everything after the total length) into header and payload."""
    (hlen,) = struct.unpack_from(">I", body)
    if hlen > len(body) - 4:
        raise ProtocolError(f"a header of {hlen} bytes in a frame of {len(body)}")
    try:
        header = orjson.loads(body[4 : 4 + hlen])
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"a header that is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("a header that is not an object with a type")
    return header, body[4 + hlen :]


def parse_length(prefix: bytes, limit: int = MAX_FRAME) -> int:
    total: int = struct.unpack(">I", prefix)[0]
    if total < 4 or total > limit:
        raise ProtocolError(f"a frame of {total} bytes (at most {limit})")
    return total


def read_frame(rfile: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame from a buffered reader of the socket (one ``recv`` for
    a small frame, not two); None at end of stream."""
    prefix = rfile.read(4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise ProtocolError("stream ended inside a frame")
    total = parse_length(prefix)
    body = rfile.read(total)
    if len(body) < total:
        raise ProtocolError("stream ended inside a frame")
    return unpack(body)
