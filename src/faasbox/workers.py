"""``faasbox server --workers N``: N servers on one machine behind one listening socket.

One server runs on about one core (Python's interpreter lock). The supervisor binds the port,
then starts N ordinary servers (*workers*) that accept from that one socket and share one store
(by default ``sqlite:///DATA/faasbox.db``, shared as in docs/cluster.md). Each worker has its
own data dir (``DATA/workers/K``: its lock, scratch and instances' cgroups) and shares the
supervisor's code cache and admin key (``DATA/code``, ``DATA/packages``, ``DATA/admin.key``).

The supervisor starts worker 0 alone first (it migrates the store and makes the default tenant
and admin key), then the rest. A worker that exits on its own is started again, after a pause
that grows while it keeps failing at once; its leased tasks go back to the queue as a killed
server's do. SIGTERM or SIGINT stops every worker (gracefully, then SIGKILL after
``STOP_TIMEOUT_S``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from faasbox import errors

log = logging.getLogger("faasbox.workers")

STOP_TIMEOUT_S = 15.0
QUICK_EXIT_S = 10.0  # a worker that dies sooner than this after its start backs off
MAX_BACKOFF_S = 30.0


class Stop(Exception):
    """A signal asked the supervisor to stop."""


@dataclass
class Worker:
    index: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # quick exits in a row
    ready: bool = False
    restarts: int = 0


class Supervisor:
    def __init__(self, count: int, host: str, port: int, data: Path, store_url: str,
                 log_level: str, insecure_no_auth: bool, deploy: Path | None,
                 node_memory_mb: int) -> None:
        if count < 1:
            raise errors.InvalidRequest("--workers must be at least 1")
        self.count = count
        self.host = host
        self.port = port
        self.data = data.resolve()
        self.store_url = store_url or f"sqlite:///{self.data / 'faasbox.db'}"
        self.log_level = log_level
        self.insecure_no_auth = insecure_no_auth
        self.deploy = deploy
        self.node_memory_mb = max(1, node_memory_mb // count)
        self.workers = [Worker(k, self.data / "workers" / str(k)) for k in range(count)]
        self.sock: socket.socket | None = None
        self._lock_fd: int | None = None

    # -- start ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o711)  # as a server's data dir: instances may traverse to code/
        fd = os.open(self.data / "server.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.Unavailable(f"another faasbox server is using {self.data}") from None
        self._lock_fd = fd
        (self.data / "workers").mkdir(exist_ok=True)
        (self.data / "workers").chmod(0o711)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise errors.Unavailable(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        self.sock = sock

    def _command(self, worker: Worker, ready_fd: int, first: bool) -> list[str]:
        assert self.sock is not None
        cmd = [sys.executable, "-m", "faasbox", "server", "--workers", "1",
               "--host", self.host, "--port", str(self.port), "--data", str(worker.data),
               "--store-url", self.store_url, "--log-level", self.log_level,
               "--listen-fd", str(self.sock.fileno()), "--ready-fd", str(ready_fd),
               "--shared-dir", str(self.data)]
        if self.insecure_no_auth:
            cmd.append("--insecure-no-auth")
        if first and self.deploy is not None:
            cmd += ["--deploy", str(self.deploy)]
        return cmd

    def _spawn(self, worker: Worker, first: bool = False) -> int:
        """Start ``worker``; returns the read end of its ready pipe."""
        assert self.sock is not None
        worker.data.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        env = {**os.environ, "FAASBOX_NODE_MEMORY_MB": str(self.node_memory_mb),
               "FAASBOX_SUPERVISOR_PID": str(os.getpid())}
        env.pop("FAASBOX_WORKERS", None)
        try:
            worker.proc = subprocess.Popen(
                self._command(worker, w, first), env=env, stdin=subprocess.DEVNULL,
                pass_fds=(self.sock.fileno(), w), start_new_session=True)
        finally:
            os.close(w)
        worker.started = time.monotonic()
        worker.ready = False
        return r

    def _await_ready(self, worker: Worker, r: int) -> bool:
        """Whether ``worker`` said it is serving (False: it exited first)."""
        try:
            while True:
                try:
                    got = os.read(r, 1)
                except InterruptedError:
                    continue
                worker.ready = got == b"1"
                return worker.ready
        finally:
            os.close(r)

    def run(self) -> int:
        """Serve until a signal; the exit code."""
        handler = self._on_signal
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._prepare()
            log.info("%d workers on http://%s:%d (data %s, store %s)", self.count,
                     self.host, self.port, self.data, self.store_url)
            first, *rest = self.workers
            if not self._await_ready(first, self._spawn(first, first=True)):
                log.error("worker 0 could not start (its log is above)")
                return 1
            pipes = [(w, self._spawn(w)) for w in rest]
            for w, r in pipes:
                if not self._await_ready(w, r):
                    log.warning("worker %d exited during its start; starting it again", w.index)
            self._watch()
        except Stop:
            pass
        finally:
            for s in old:  # a second Ctrl-C does not cut the stop short
                signal.signal(s, signal.SIG_IGN)
            self._stop_all()
            for s, h in old.items():
                signal.signal(s, h)
            if self.sock is not None:
                self.sock.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        raise Stop()

    # -- watch ------------------------------------------------------------------------------
    def _by_pid(self, pid: int) -> Worker | None:
        for w in self.workers:
            if w.proc is not None and w.proc.pid == pid:
                return w
        return None

    def _watch(self) -> None:
        while True:
            pid, status = os.wait()
            worker = self._by_pid(pid)
            if worker is None or worker.proc is None:
                continue
            worker.proc.returncode = os.waitstatus_to_exitcode(status)
            quick = time.monotonic() - worker.started < QUICK_EXIT_S
            worker.failures = worker.failures + 1 if quick else 0
            pause = min(MAX_BACKOFF_S, 0.5 * 2 ** (worker.failures - 1)) if quick else 0.0
            log.warning("worker %d (pid %d) exited with %s; starting it again%s",
                        worker.index, pid, _describe(worker.proc.returncode),
                        f" in {pause:.1f} s" if pause else "")
            if pause:
                time.sleep(pause)
            worker.restarts += 1
            self._await_ready(worker, self._spawn(worker))

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0f s: killed", proc.pid,
                            STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()


def _describe(code: int | None) -> str:
    if code is None:
        return "no code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def watch_supervisor(expected_ppid: int) -> None:
    """In a worker: be sent SIGTERM when the supervisor dies (even by SIGKILL), so that no
    worker outlives it."""
    from faasbox.runtime import confine

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        confine.libc().prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != expected_ppid:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
