"""The node's handle on a zygote: the fork server or a snapshot template.

The process side and the messages are in :mod:`faasbox.runtime.zygote`. A zygote forks on
request and hands back the child's pid with a pidfd of it (opened before the child could be
reaped, so it names that process and no other); the node watches the pidfd for the exit, and
the zygote, which is the parent and reaps the child, reports the exit code. A template runs
user code, so the node checks that a pidfd it is handed refers to the pid named and that this
is the zygote's child before it keeps or signals it.

:func:`spawn` is the other way an instance gets its process: a new interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from faasbox import errors
from faasbox.node.startmode import SPAWN
from faasbox.runtime.zygote import receive, send

if TYPE_CHECKING:
    from faasbox.node.environment import InstanceEnvironment
    from faasbox.node.instance import Instance
    from faasbox.node.output import OutputSink

log = logging.getLogger(__name__)

T = TypeVar("T")
FORK_TIMEOUT_S = 5.0
EXIT_REPORT_TIMEOUT_S = 5.0


class SpawnedProcess:
    """An instance or fork server the node started itself (its child)."""

    def __init__(self, popen: subprocess.Popen[bytes], pid_namespace: bool = False) -> None:
        self.popen = popen
        self.pid = popen.pid
        # the instance proper: in a pid namespace of its own, the process started forks it and
        # waits (runtime/confine.py: become_pid_one)
        self.worker_pid = popen.pid
        self.waits = pid_namespace  # the process started only waits for ``worker_pid``

    def find_worker(self) -> None:
        """Once the instance has said hello (before any user code): its worker's pid, the
        only child of the process started, when that forked it into a pid namespace; raises
        InitError if there is not exactly one (the cgroup and network must reach it)."""
        if not self.waits:
            return
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = f.read().split()
        except OSError as exc:
            raise errors.InitError(f"cannot find the instance's process: {exc}") from None
        if len(children) != 1:
            raise errors.InitError(
                f"the instance's first process has {len(children)} children, not 1")
        self.worker_pid = int(children[0])

    def open_pidfd(self) -> int:
        return os.pidfd_open(self.pid)

    def kill(self) -> None:
        if self.popen.returncode is None:  # not reaped: the pid is still this process
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        """The exit code (negative: killed by that signal), once the process has exited."""
        return self.popen.wait()


async def popen_in_thread(
    start: Callable[[], subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes]:
    """``start()`` (a Popen: fork and exec take a while) run in a thread. The thread cannot be
    stopped: if the caller is cancelled meanwhile, this waits for it, then kills and reaps
    the process it started before the cancellation goes on, so that nothing outlives the
    caller (and the caller's fds stay open for as long as Popen may use them)."""
    started = asyncio.get_running_loop().run_in_executor(None, start)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        await asyncio.shield(asyncio.ensure_future(_end_started(started)))
        raise


async def spawn(environment: InstanceEnvironment, inst: Instance,
                paths: list[str]) -> socket.socket:
    """Start the instance as a new interpreter; returns the node's end of its socket. It
    starts as the server's user and confines itself (runtime/confine.py) before it says
    hello: namespaces, mounts, its uid, no_new_privs, seccomp."""
    environment.prepare(inst)
    # not the function's own variables: the loader would honour LD_PRELOAD and the like in a
    # process that is root until it confines itself (the worker sets them at load)
    env = environment.variables(inst.function, inst.version, inst.spec, inst.scratch,
                                own=False)
    plan = environment.plan(inst.spec, inst.uid, inst.scratch, paths)
    sink = environment.output(inst.id, inst.output_path)
    proc, parent = await with_socket(sink, lambda child: popen_in_thread(lambda: (
        subprocess.Popen(
            [sys.executable, "-I", "-m", "faasbox.runtime", str(child.fileno()),
             orjson.dumps(plan).decode()],
            stdin=subprocess.DEVNULL, stdout=sink.write_fd, stderr=subprocess.STDOUT,
            pass_fds=(child.fileno(),), cwd=inst.scratch, env=env,
            process_group=0,
        ))))
    inst.proc = SpawnedProcess(proc, pid_namespace=bool(plan.get("pid")) and os.geteuid() == 0)
    inst.start_mode = SPAWN
    return parent


async def with_socket(sink: OutputSink, launch: Callable[[socket.socket], Awaitable[T]],
                      ) -> tuple[T, socket.socket]:
    """``launch`` a process that inherits the child's end of a new socketpair and ``sink``'s
    pipe: what ``launch`` returned and the node's end. The child's end is closed here either
    way (the node's end too if the launch failed), and the sink starts draining."""
    parent, child = socket.socketpair()
    try:
        value = await launch(child)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
        sink.start()
    return value, parent


async def _end_started(started: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    try:
        popen = await started
    except Exception:
        return  # it did not start
    popen.kill()
    await asyncio.get_running_loop().run_in_executor(None, popen.wait)


async def in_thread(fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` in a thread, off the event loop (cgroup directories and moves: the kernel
    takes its time). If the caller is cancelled meanwhile, this waits for the thread to finish
    before the cancellation goes on, so that cleanup never races with it."""
    done = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(done)
        raise


class ForkedProcess:
    """A process a zygote forked: not the node's child, so its exit code comes from the
    zygote (None when the zygote died before it could report it)."""

    def __init__(self, pid: int, pidfd: int, exit_code: asyncio.Future[int | None]) -> None:
        self.pid = self.worker_pid = pid
        self._pidfd = pidfd
        self._exit_code = exit_code

    def open_pidfd(self) -> int:
        return os.dup(self._pidfd)

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def kill(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def running(self) -> bool:
        """Not yet exited, by its pidfd: while true its pid (and so its process group id) is
        its own, whatever the zygote, which reaps it, reports."""
        if self._pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)

    async def wait(self) -> int | None:
        try:
            async with asyncio.timeout(EXIT_REPORT_TIMEOUT_S):  # not wait_for: see Instance.expect
                return await asyncio.shield(self._exit_code)
        except TimeoutError:
            return None
        finally:
            self.close()


class Zygote:
    """A fork server (``kind="forkserver"``) or a template, seen from the node."""

    def __init__(self, kind: str, ctl: socket.socket,
                 process: SpawnedProcess | ForkedProcess) -> None:
        self.kind = kind
        self.ctl = ctl
        self.process = process
        self.pid = process.pid
        self.modules: frozenset[str] = frozenset()  # top-level modules a fork server preloaded
        self.alive = True
        self.gone = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._control: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._forks: dict[str, asyncio.Future[ForkedProcess]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        ctl.setblocking(False)
        self.loop.add_reader(ctl.fileno(), self._on_readable)

    # -- requests ---------------------------------------------------------------------------
    async def expect(self, timeout: float) -> dict[str, Any]:
        """The next control message (hello; a template's ready / load_error / refused)."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see Instance.expect
                message = await asyncio.shield(self._control)
        except TimeoutError:
            raise errors.Unavailable(
                f"the {self.kind} did not answer within {timeout:g} s") from None
        self._control = self.loop.create_future()
        return message

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        if not self.alive:
            raise errors.Unavailable(f"the {self.kind} is gone")
        try:
            send(self.ctl, message, fds)
        except OSError as exc:
            raise errors.Unavailable(f"cannot talk to the {self.kind}: {exc}") from None

    async def fork(self, request_id: str, message: dict[str, Any],
                   fds: list[int]) -> ForkedProcess:
        """Fork a child that sandboxes itself as ``message`` says; raises Unavailable."""
        fut: asyncio.Future[ForkedProcess] = self.loop.create_future()
        self._forks[request_id] = fut
        try:
            self.send({**message, "id": request_id}, fds)
            # not wait_for, which on 3.11 drops a cancellation that comes with the reply
            async with asyncio.timeout(FORK_TIMEOUT_S):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise errors.Unavailable(
                f"the {self.kind} did not fork within {FORK_TIMEOUT_S:g} s") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                orphan = fut.result()  # forked as the caller went away: nobody will run it
                orphan.kill()
                orphan.close()
            raise
        finally:
            self._forks.pop(request_id, None)

    def retire(self) -> None:
        """Fork no more; the zygote exits once its last child has (then ``gone`` is set)."""
        with contextlib.suppress(errors.Unavailable):
            self.send({"t": "retire"})

    def kill(self) -> None:
        if isinstance(self.process, ForkedProcess):
            self.process.kill()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    # -- messages ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            got = receive(self.ctl)
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s %s: bad control message: %s", self.kind, self.pid, exc)
            got = None
        if got is None:
            self._closed()
            return
        message, fds = got
        kind = message.get("t")
        if kind == "forked":
            self._on_forked(message, fds)
            return
        for fd in fds:
            os.close(fd)
        if kind == "fork_error":
            fut = self._forks.get(str(message.get("id")))
            if fut is not None and not fut.done():
                fut.set_exception(errors.Unavailable(
                    f"the {self.kind} could not fork: {message.get('message')}"))
        elif kind == "exit":
            exit_fut = self._exits.pop(message.get("pid", -1), None)
            if exit_fut is not None and not exit_fut.done():
                exit_fut.set_result(exit_code(message.get("code")))
        elif not self._control.done():
            self._control.set_result(message)

    def _on_forked(self, message: dict[str, Any], fds: list[int]) -> None:
        fut = self._forks.get(str(message.get("id")))
        # The pid the zygote names is in its own pid namespace (a template is pid 1 of one):
        # it only keys the exit report. The node's pid of the child is the pidfd's.
        named = message.get("pid")
        pid = pidfd_pid(fds[0]) if len(fds) == 1 else None
        # A template runs user code, which can send any message with a pidfd of any process
        # (pidfd_open needs no permission): only a pidfd of a child of this zygote is
        # signalled or kept; anything else is closed untouched.
        ours = isinstance(named, int) and pid is not None and self._is_child(pid)
        if not ours or fut is None or fut.done():
            for fd in fds:
                if ours:  # nobody waits for this child (the request timed out): end it
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                os.close(fd)
            if not ours and fut is not None and not fut.done():
                fut.set_exception(errors.Unavailable(
                    f"the {self.kind} named a process that is not (or no longer) its child"))
            return
        assert isinstance(pid, int) and isinstance(named, int)  # checked in ``ours``
        exit_code: asyncio.Future[int | None] = self.loop.create_future()
        self._exits[named] = exit_code
        fut.set_result(ForkedProcess(pid, fds[0], exit_code))

    def _is_child(self, pid: int) -> bool:
        """Process ``pid`` is a child of this zygote."""
        found = parent_and_uid(pid)
        return found is not None and found[0] == self.pid

    def _closed(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.loop.remove_reader(self.ctl.fileno())
        self.ctl.close()
        gone = errors.Unavailable(f"the {self.kind} exited")
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(gone)
        for exit_fut in self._exits.values():
            if not exit_fut.done():
                exit_fut.set_result(None)
        self._exits.clear()
        if not self._control.done():
            self._control.set_exception(gone)
            self._control.exception()
        if isinstance(self.process, SpawnedProcess):
            reap = self.loop.run_in_executor(None, self.process.popen.wait)
            reap.add_done_callback(lambda _: self.gone.set())
        else:
            self.gone.set()

    def close(self) -> None:
        """Drop the control channel (the zygote retires when it sees that)."""
        self._closed()


async def start_fork_server(output_path: Path, env: dict[str, str]) -> Zygote:
    """Start the fork server and wait for its hello; raises Unavailable."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with output_path.open("ab") as out:
            popen = await popen_in_thread(lambda: (
                subprocess.Popen(
                    [sys.executable, "-I", "-m", "faasbox.runtime.zygote", str(child.fileno())],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(child.fileno(),), cwd="/", env=env, start_new_session=True,
                )))
    except OSError as exc:
        parent.close()
        raise errors.Unavailable(f"cannot start the fork server: {exc}") from None
    finally:
        child.close()
    zygote = Zygote("forkserver", parent, SpawnedProcess(popen))
    try:
        hello = await zygote.expect(10.0)
    except errors.Unavailable:
        zygote.kill()
        zygote.close()
        raise
    zygote.modules = frozenset(hello.get("modules", ()))
    return zygote


def exit_code(value: object) -> int | None:
    """An exit code a zygote reported (a template's is user code's word): an int from -64
    (killed by a signal) to 255, else None (unknown)."""
    if isinstance(value, int) and not isinstance(value, bool) and -64 <= value <= 255:
        return value
    return None


def reported_ms(value: object) -> float:
    """A duration a process reported (user code may send anything): a finite number of ms
    from 0 to a day, else 0."""
    if isinstance(value, int | float) and not isinstance(value, bool) and (
            0 <= value <= 86_400_000):
        return float(value)
    return 0.0


def is_child_of(zygote: Zygote | None, uid: int | None, pid: int | None) -> bool:
    """``pid`` is a child of ``zygote`` running under ``uid`` (None: the server's). A template
    runs user code: the node never acts on a pid it names without checking this."""
    assert zygote is not None
    expected = (zygote.pid, os.getuid() if uid is None else uid)
    return parent_and_uid(pid or -1) == expected


def pidfd_pid(pidfd: int) -> int | None:
    """The pid of the process a pidfd refers to (None: not a pidfd of a live process)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError, IndexError):
        return None
    return None


def parent_and_uid(pid: int) -> tuple[int, int] | None:
    """``(parent pid, real uid)`` of a live process, from /proc."""
    ppid = uid = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    ppid = int(line.split()[1])
                elif line.startswith("Uid:"):
                    uid = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None if ppid is None or uid is None else (ppid, uid)
