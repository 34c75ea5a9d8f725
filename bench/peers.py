"""The peers of faasbox's async tasks: Celery and Dramatiq on a local Redis, the same no-op load.

For each peer (``--systems``, default ``celery dramatiq``): a throwaway ``redis-server`` (Debian's,
installed by ``scripts/redis-setup`` when missing) on a free loopback port with a temporary dir
and no persistence (``--redis-persistence`` turns the append-only file on), the peer's workers
with ``--processes`` worker processes (default: the machine's cores), and a producer that enqueues
``--tasks`` no-op tasks one per call (``.delay()`` / ``.send()``) from one thread and waits for
the last. No results are kept. Throughput runs from the first enqueue to the moment the last task
ran: each task counts itself in Redis (one ``EVALSHA``; see ``_peers_common.py``).

- Celery: ``celery worker --pool prefork --concurrency P``, ``task_ignore_result``, no result
  backend; everything else Celery's default (prefetch multiplier 4, acks before the task runs).
- Dramatiq: ``dramatiq --processes P --threads T`` with T = 8, Dramatiq's default (``--threads``);
  its default middleware, prefetch 2 x T, acks after the task ran.

The peers run in a venv of their own, ``bench/.peers-venv`` (made once; remade when
``REQUIREMENTS`` changes), so they never share packages with faasbox. ``bench/tasks.py --peers``
runs this after faasbox's own end-to-end figure and prints the ratio; run alone it prints the
peers' figures only::

    python bench/peers.py --tasks 5000 --systems dramatiq
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    cpu_seconds,
    emit,
    free_port,
    host_busy_seconds,
    say,
    stop_process,
    tail,
    tree_cpu_seconds,
)

PEERS_VENV = BENCH_DIR / ".peers-venv"
REQUIREMENTS = ("celery[redis]==5.7.*", "dramatiq[redis]==2.2.*")
SYSTEMS = ("celery", "dramatiq")
DRAMATIQ_THREADS = 8  # dramatiq's own default for --threads
PERSISTENCE = {
    "none": ["--appendonly", "no"],
    "aof-everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "aof-always": ["--appendonly", "yes", "--appendfsync", "always"],
}
REDIS_READY_S = 10.0


# -- what the peers need --------------------------------------------------------------------
def ensure_redis() -> str:
    """The path of ``redis-server``, running ``scripts/redis-setup`` first when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        setup = BENCH_DIR.parent / "scripts" / "redis-setup"
        subprocess.run([str(setup)], stdout=sys.stderr, check=False)  # stdout is for figures
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server, and scripts/redis-setup could not install it")
    return found


def redis_version(server: str) -> str:
    out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "unknown")


def ensure_venv(venv: Path = PEERS_VENV) -> Path:
    """The peers' venv's python: made and filled with ``REQUIREMENTS`` unless it already was."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        say(f"peers: making a venv at {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    say(f"peers: pip install {' '.join(REQUIREMENTS)}")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                   stdout=sys.stderr, check=True)
    stamp.write_text(wanted)
    return python


def prepare() -> tuple[str, Path]:
    """Redis and the peers' venv, installed when missing: ``(redis-server, venv python)``."""
    return ensure_redis(), ensure_venv()


# -- processes --------------------------------------------------------------------------------
class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, its dir a temporary one."""

    def __init__(self, server: str, persistence: str = "none") -> None:
        self.server = server
        self.root = Path(tempfile.mkdtemp(prefix="faasbox-bench-redis-"))
        self.log = self.root / "redis.log"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RedisServer:
        cmd = [self.server, "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.root), "--logfile", str(self.log), "--daemonize", "no",
               "--save", "", *PERSISTENCE[self.persistence]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + REDIS_READY_S
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{tail(self.log)}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_command(system: str, python: Path, processes: int, threads: int) -> list[str]:
    bindir = python.parent
    if system == "celery":
        return [str(bindir / "celery"), "-A", "_peers_celery", "worker", "--pool", "prefork",
                "--concurrency", str(processes), "--loglevel", "WARNING"]
    return [str(bindir / "dramatiq"), "_peers_dramatiq", "--processes", str(processes),
            "--threads", str(threads)]


# -- one peer ---------------------------------------------------------------------------------
@dataclass
class PeerRun:
    system: str
    version: str
    tasks: int
    enqueue_s: float  # the first enqueue to the last
    wall_s: float  # the first enqueue to the moment the last task ran
    count_cost_us: float  # what a task's counting itself costs (see _peers_common.py)
    cpu_s: dict[str, float]  # CPU seconds of worker, redis, producer, other over the window
    window_s: float  # from the producer's "start" to its "done", as seen here

    @property
    def throughput(self) -> float:
        return self.tasks / self.wall_s

    @property
    def cores(self) -> dict[str, float]:
        return {part: seconds / self.window_s for part, seconds in self.cpu_s.items()}

    @property
    def system_cpu_per_task_us(self) -> float:
        """Workers + Redis CPU per task (the producer is the client, as for faasbox)."""
        return (self.cpu_s["worker"] + self.cpu_s["redis"]) / self.tasks * 1e6


def _event(producer: subprocess.Popen[bytes], worker: subprocess.Popen[bytes], log: Path,
           deadline: float) -> dict[str, Any]:
    """The producer's next JSON line, watching that the workers stay up meanwhile."""
    assert producer.stdout is not None
    while True:
        ready, _, _ = select.select([producer.stdout], [], [], 1.0)
        if ready:  # unbuffered: a line never waits in a Python buffer that select cannot see
            line = producer.stdout.readline()
            if not line:
                raise RuntimeError(f"the producer exited with {producer.wait()}:\n{tail(log)}")
            event: dict[str, Any] = json.loads(line)
            return event
        if worker.poll() is not None:
            raise RuntimeError(f"the workers exited with {worker.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the peer run did not finish in time:\n{tail(log)}")


def _cpu(worker: int, redis: int, producer: int) -> dict[str, float]:
    return {"worker": tree_cpu_seconds(worker), "redis": cpu_seconds(redis),
            "producer": cpu_seconds(producer), "host": host_busy_seconds(),
            "wall": time.monotonic()}


def run_peer(system: str, server: str, python: Path, tasks: int, processes: int,
             threads: int, persistence: str = "none", warmup: int = 200,
             timeout: float = 600.0) -> PeerRun:
    """Start Redis and the workers, run the producer, stop them all."""
    with RedisServer(server, persistence) as redis:
        env = {**os.environ, "FAASBOX_PEERS_REDIS_URL": redis.url,
               "PYTHONPATH": str(BENCH_DIR)}
        log = redis.root / f"{system}.log"
        deadline = time.monotonic() + timeout + 30
        with log.open("ab") as out:
            worker = subprocess.Popen(
                worker_command(system, python, processes, threads), cwd=BENCH_DIR, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
            producer = subprocess.Popen(
                [str(python), str(BENCH_DIR / "_peers_produce.py"), system, "--tasks",
                 str(tasks), "--warmup", str(warmup), "--timeout", str(timeout)],
                cwd=BENCH_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=out, bufsize=0, start_new_session=True)
        try:
            say(f"{system}: workers pid {worker.pid}, redis on {redis.url}; warming up")
            _event(producer, worker, log, deadline)  # {"event": "start"}
            before = _cpu(worker.pid, redis.pid, producer.pid)
            say(f"{system}: warmed up; enqueueing {tasks} tasks one per call")
            done = _event(producer, worker, log, deadline)
            after = _cpu(worker.pid, redis.pid, producer.pid)
        finally:
            stop_process(producer)
            stop_process(worker)
    if done["done"] != tasks:
        raise RuntimeError(f"{system}: {done['done']} tasks ran, {tasks} were enqueued")
    used = {k: after[k] - before[k] for k in after}
    cpu_s = {k: used[k] for k in ("worker", "redis", "producer")}
    cpu_s["other"] = used["host"] - sum(cpu_s.values())
    return PeerRun(system, done["version"], tasks, done["enqueue_s"], done["wall_s"],
                   done["mark_cost_us"], cpu_s, used["wall"])


def run_peers(tasks: int, systems: tuple[str, ...] = SYSTEMS, processes: int | None = None,
              threads: int = DRAMATIQ_THREADS, persistence: str = "none",
              warmup: int = 200) -> dict[str, PeerRun]:
    """Each peer in turn, its figures printed as it ends."""
    server, python = prepare()
    processes = processes or os.cpu_count() or 1
    broker = f"redis {redis_version(server)}"
    runs = {}
    for system in systems:
        run = run_peer(system, server, python, tasks, processes, threads, persistence, warmup)
        params: dict[str, Any] = {
            "system": system, "version": run.version, "tasks": tasks, "processes": processes,
            "threads": threads if system == "dramatiq" else 1, "broker": broker,
            "persistence": persistence}
        emit("tasks.e2e.throughput", run.throughput, "tasks/s", **params)
        emit("tasks.submit.rate", tasks / run.enqueue_s, "tasks/s", **params)
        for part, value in run.cores.items():
            emit(f"tasks.e2e.{part}_cpu", value, "cores", **params)
        emit("tasks.e2e.system_cpu_per_task", run.system_cpu_per_task_us, "us", **params)
        emit("tasks.e2e.count_cost", run.count_cost_us, "us", **params)
        say(f"{system} {run.version}: {tasks} tasks enqueued in {run.enqueue_s:.1f} s, all ran"
            f" in {run.wall_s:.1f} s ({run.throughput:.0f} tasks/s); cores: "
            + ", ".join(f"{k} {v:.2f}" for k, v in run.cores.items()))
        runs[system] = run
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per peer (20000)")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                    help="the peers to run (celery dramatiq)")
    ap.add_argument("--processes", type=int, default=None,
                    help="worker processes per peer (the machine's cores)")
    ap.add_argument("--threads", type=int, default=DRAMATIQ_THREADS,
                    help=f"Dramatiq's threads per process ({DRAMATIQ_THREADS}, its default)")
    ap.add_argument("--redis-persistence", choices=sorted(PERSISTENCE), default="none",
                    help="Redis's persistence (none: no RDB, no AOF)")
    ap.add_argument("--warmup", type=int, default=200, help="tasks before the timed run (200)")
    args = ap.parse_args(argv)
    run_peers(args.tasks, tuple(args.systems), args.processes, args.threads,
              args.redis_persistence, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
