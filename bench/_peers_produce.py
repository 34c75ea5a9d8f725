"""The peers' producer; runs in the peers' venv (``bench/.peers-venv``), started by
``peers.py`` once the workers are started::

    python _peers_produce.py celery|dramatiq --tasks N [--warmup W] [--timeout S]

It warms the workers up (``--warmup`` tasks, waited for), prints ``{"event": "start"}``, then
enqueues ``--tasks`` tasks one per call from this one thread, waits until the last one ran
(``_peers_common``: each task counts itself in Redis) and prints one JSON line: the start time,
how long the enqueueing took, when the last task ran, and the versions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from importlib.metadata import version

from _peers_common import DONE, END, TARGET, client, mark_done

POLL_S = 0.01  # how often the end key is looked for (the end time itself is Redis's)


def reset(target: int) -> None:
    client.delete(DONE, END)
    client.set(TARGET, target)


def wait_end(deadline: float) -> float:
    while (end := client.get(END)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"tasks not done in time: {int(client.get(DONE) or 0)}"
                             f" of {int(client.get(TARGET) or 0)} ran")
        time.sleep(POLL_S)
    return float(end)


def mark_cost_us(samples: int = 2000) -> float:
    """What counting one task costs the task, in µs (run here, outside the workers)."""
    reset(samples + 1)
    t0 = time.perf_counter()
    for _ in range(samples):
        mark_done()
    return (time.perf_counter() - t0) / samples * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("system", choices=["celery", "dramatiq"])
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    app = importlib.import_module(f"_peers_{args.system}")
    deadline = time.monotonic() + args.timeout

    cost = mark_cost_us()
    reset(args.warmup)
    for i in range(args.warmup):
        app.enqueue(i)
    wait_end(deadline)
    print(json.dumps({"event": "start"}), flush=True)

    reset(args.tasks)
    t0 = time.time()
    for i in range(args.tasks):
        app.enqueue(i)
    enqueued = time.time()
    end = wait_end(deadline)
    done = int(client.get(DONE) or 0)
    print(json.dumps({
        "event": "done", "t0": t0, "enqueue_s": enqueued - t0, "wall_s": end - t0,
        "done": done, "mark_cost_us": cost, "version": version(args.system),
        "redis_py": version("redis"),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
