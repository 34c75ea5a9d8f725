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
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from faasbox import errors
from faasbox.config import lock_data_dir
from faasbox.store.url import redact

log = logging.getLogger("faasbox.workers")

STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 120.0  # a worker not serving by then is killed, and started again
DEPLOY_START_TIMEOUT_S = 900.0  # worker 0 with --deploy (pip installs)
QUICK_EXIT_S = 10.0  # a worker that dies sooner than this after its start backs off
MAX_BACKOFF_S = 30.0


@dataclass
class Worker:
    index: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1  # readable once the worker has exited
    ready_fd: int = -1  # its ready pipe, until it said it serves or exited
    started: float = 0.0
    ready: bool = False
    failures: int = 0  # quick exits in a row
    restart_at: float | None = None  # when a worker that exited starts again


class Supervisor:
    def __init__(self, count: int, host: str, port: int, data: Path, store_url: str,
                 log_level: str, insecure_no_auth: bool, deploy: Path | None,
                 node_memory_mb: int) -> None:
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
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.serving = False  # worker 0 has started: workers that exit are started again
        self._lock_fd: int | None = None
        self._wake_r = self._wake_w = -1

    # -- start ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o711)  # as a server's data dir: instances may traverse to code/
        self._lock_fd = lock_data_dir(self.data)  # no single server on it meanwhile
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
               "--log-level", self.log_level, "--listen-fd", str(self.sock.fileno()),
               "--ready-fd", str(ready_fd), "--shared-dir", str(self.data)]
        if self.insecure_no_auth:
            cmd.append("--insecure-no-auth")
        if first and self.deploy is not None:
            cmd += ["--deploy", str(self.deploy)]
        return cmd

    def _spawn(self, worker: Worker, first: bool = False) -> None:
        assert self.sock is not None
        worker.data.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        # the store URL in the environment, not on the command line (a password in it)
        env = {**os.environ, "FAASBOX_STORE_URL": self.store_url,
               "FAASBOX_NODE_MEMORY_MB": str(self.node_memory_mb),
               "FAASBOX_SUPERVISOR_PID": str(os.getpid())}
        env.pop("FAASBOX_WORKERS", None)
        try:
            worker.proc = subprocess.Popen(
                self._command(worker, w, first), env=env, stdin=subprocess.DEVNULL,
                pass_fds=(self.sock.fileno(), w), start_new_session=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        worker.started = time.monotonic()
        worker.ready = False
        worker.restart_at = None
        worker.ready_fd = r
        worker.pidfd = os.pidfd_open(worker.proc.pid)
        self.selector.register(r, selectors.EVENT_READ, ("ready", worker))
        self.selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))

    def run(self) -> int:
        """Serve until a signal; the exit code."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("signal", None))
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._prepare()
            log.info("%d workers on http://%s:%d (data %s, store %s)", self.count, self.host,
                     self.port, self.data, redact(self.store_url))
            first, *rest = self.workers
            self._spawn(first, first=True)
            # worker 0 alone first: it migrates the store, makes the default tenant and key
            while not self.stopping and not first.ready:
                self._step()
                if first.restart_at is not None:  # it exited before it served
                    log.error("worker 0 could not start (its log is above)")
                    return 1
            self.serving = True
            for worker in rest:
                if not self.stopping:
                    self._spawn(worker)
            while not self.stopping:
                self._step()
            return 0
        finally:
            self._stop_all()
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_wakeup)
            self.selector.close()
            for fd in (self._wake_r, self._wake_w, *(w.pidfd for w in self.workers),
                       *(w.ready_fd for w in self.workers)):
                if fd >= 0:
                    os.close(fd)
            if self.sock is not None:
                self.sock.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True  # the loop wakes through the wakeup fd

    # -- watch ------------------------------------------------------------------------------
    def _start_timeout(self, worker: Worker) -> float:
        # a first start with --deploy may install its functions' requirements
        return DEPLOY_START_TIMEOUT_S if worker.index == 0 and self.deploy else START_TIMEOUT_S

    def _step(self) -> None:
        """Wait for the next event (a worker ready or gone, a signal, a deadline) and act."""
        now = time.monotonic()
        deadlines = [w.restart_at for w in self.workers if w.restart_at is not None]
        deadlines += [w.started + self._start_timeout(w) for w in self.workers
                      if w.proc is not None and w.pidfd >= 0 and not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, _ in self.selector.select(timeout):
            kind, worker = key.data
            if kind == "signal":
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            elif kind == "ready":
                self._on_ready(worker)
            elif kind == "exit":
                self._on_exit(worker)
        now = time.monotonic()
        for worker in self.workers:
            if (worker.proc is not None and worker.pidfd >= 0 and not worker.ready
                    and now - worker.started > self._start_timeout(worker)):
                log.warning("worker %d (pid %d) did not start in %.0f s: killed", worker.index,
                            worker.proc.pid, self._start_timeout(worker))
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()  # its pidfd reports the exit
            if (worker.restart_at is not None and now >= worker.restart_at and self.serving
                    and not self.stopping):
                self._spawn(worker)

    def _on_ready(self, worker: Worker) -> None:
        try:
            got = os.read(worker.ready_fd, 1)
        except OSError:
            got = b""
        worker.ready = got == b"1"
        self._close_ready(worker)

    def _close_ready(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self.selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _on_exit(self, worker: Worker) -> None:
        assert worker.proc is not None
        self._close_ready(worker)
        self.selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        code = worker.proc.wait()
        quick = time.monotonic() - worker.started < QUICK_EXIT_S
        worker.failures = worker.failures + 1 if quick else 0
        pause = min(MAX_BACKOFF_S, 0.5 * 2 ** (worker.failures - 1)) if quick else 0.0
        worker.restart_at = time.monotonic() + pause
        if self.serving and not self.stopping:
            log.warning("worker %d (pid %d) exited with %s; starting it again%s",
                        worker.index, worker.proc.pid, _describe(code),
                        f" in {pause:.1f} s" if pause else "")

    def _stop_all(self) -> None:
        self.stopping = True  # a signal from here on changes nothing
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
