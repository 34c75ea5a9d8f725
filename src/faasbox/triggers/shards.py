"""How a job's ``shards`` field becomes one event per shard."""

from __future__ import annotations

from typing import Any

from faasbox.payload import encode_event

MAX_SHARDS = 100_000


def shard_events(shards: list[Any] | dict[str, Any]) -> list[bytes]:
    """A list gives one shard per item; ``{count: N, params: P}`` gives N shards of event P.
    Raises ValueError with the reason for anything else."""
    if isinstance(shards, list):
        if not shards:
            raise ValueError("shards must not be empty")
        if len(shards) > MAX_SHARDS:
            raise ValueError(f"a job has at most {MAX_SHARDS} shards")
        return [encode_event(e, f"shard {i}'s event") for i, e in enumerate(shards)]
    extra = set(shards) - {"count", "params"}
    if extra:
        raise ValueError(f"shards takes count and params, not {', '.join(sorted(extra))}")
    count = shards.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shards.count must be an integer from 1 to {MAX_SHARDS}")
    return [encode_event(shards.get("params"), "shards.params")] * count


def shard_count(shards: list[Any] | dict[str, Any]) -> int:
    """How many shards ``shards`` (checked when its job or trigger was made) gives."""
    return len(shards) if isinstance(shards, list) else int(shards.get("count", 1))
