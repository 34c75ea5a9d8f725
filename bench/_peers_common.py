"""What the peers' tasks and producer share; runs in the peers' venv (``bench/.peers-venv``),
never in faasbox's: see ``peers.py``.

Completions are counted in Redis by the task itself: :func:`mark_done` is one ``EVALSHA`` round
trip that increments ``peers:done`` and, when that reaches ``peers:target``, stores Redis's
``TIME`` in ``peers:end``. So the end of a run is the moment its last task ran, to the
microsecond, without the producer polling a queue, and each task costs one small Redis command
more than a bare no-op (measured by the producer and reported as ``mark_cost_us``).

The Redis URL comes from ``FAASBOX_PEERS_REDIS_URL``, read at import: the Celery and Dramatiq
command lines import the task modules by name and give them nothing else.
"""

from __future__ import annotations

import os

import redis

REDIS_URL = os.environ["FAASBOX_PEERS_REDIS_URL"]
DONE, TARGET, END = "peers:done", "peers:target", "peers:end"

_MARK = """
local n = redis.call('INCR', KEYS[1])
if n == tonumber(redis.call('GET', KEYS[2])) then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[3], t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
end
return n
"""

# redis-py's pool notices a fork and opens new connections in the child (Celery's prefork pool
# and Dramatiq's worker processes fork after importing this module); it is thread-safe
client = redis.Redis.from_url(REDIS_URL)
_mark = client.register_script(_MARK)


def mark_done() -> None:
    """Count one finished task (the whole body of the peers' no-op tasks)."""
    _mark(keys=[DONE, TARGET, END])
