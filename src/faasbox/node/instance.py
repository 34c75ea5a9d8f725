"""One instance: a sandboxed worker process that has loaded one function version.

The node talks to it over a socketpair with :mod:`faasbox.runtime.protocol` frames. One reader
task per instance resolves the futures of in-flight calls; when the stream ends the instance is
dead and every in-flight call fails with the reason (out of memory, crash, timeout kill).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Protocol

from faasbox import errors
from faasbox.node.calls import Call, Deadlines, InvokeResult, Stopping, TimedOut
from faasbox.node.cgroups import Cgroup
from faasbox.node.zygote import ForkedProcess, SpawnedProcess, in_thread
from faasbox.runtime import protocol
from faasbox.spec import FunctionSpec

log = logging.getLogger(__name__)

_ids = itertools.count(1)
OUTPUT_TAIL = 4096
TEXT_LIMIT = 70_000  # characters of logs or of an error text kept from a reply


class Process(Protocol):
    """An instance's process: spawned by the node, or forked by a zygote (node/zygote.py)."""

    pid: int
    worker_pid: int  # the instance proper (a spawned one may wait for it in a pid namespace)

    def open_pidfd(self) -> int: ...

    def kill(self) -> None:
        """SIGKILL this process (only it, and never another that reused its pid)."""

    async def wait(self) -> int | None: ...


class Instance:
    """States: starting → idle ⇄ busy → stopping → stopped.

    An instance runs ``concurrency`` calls at once. One whose worker runs calls in the order
    they come (``ordered``: a sync handler) may also take ``pipeline`` more, sent ahead: each
    starts, and is timed from, when a running one ends, without a round trip through the node.
    """

    def __init__(
        self, function: str, version: int, spec: FunctionSpec, scratch: Path,
        output_path: Path, cgroup: Cgroup | None, uid: int | None,
    ) -> None:
        # used in paths and cgroup names: the tenant separator becomes a dot
        self.id = f"{function.replace('/', '.')}-{version}-{next(_ids)}-{os.urandom(2).hex()}"
        self.function = function
        self.version = version
        self.spec = spec
        self.concurrency: int = spec.concurrency
        self.memory_mb: int = spec.memory_mb
        self.scratch = scratch
        self.output_path = output_path
        self.cgroup = cgroup
        self.uid = uid
        self.state = "starting"
        self.loop = asyncio.get_running_loop()
        self.created = self.loop.time()
        self.last_used = self.created
        self.calls_served = 0
        self.leases = 0  # slots handed out by the scheduler
        self.retired = False  # taken out of service; being or been stopped
        self.init_ms: float | None = None
        self.start_mode = "spawn"  # spawn, fork or template (node/startmode.py)
        self.start_fallback: str | None = None  # why a faster way was not used
        self.ahead = False  # started ahead of demand (no caller waits for it)
        # a template's child forked ahead of demand (node/starter.py): its id, which names its
        # scratch dir and cgroup (None: forked or spawned for this instance)
        self.spare: str | None = None
        self.peak_rss_mb: float = 0.0
        self.in_flight: dict[str, Call] = {}
        self.pending: collections.deque[str] = collections.deque()  # sent ahead, in order
        self.running = 0  # calls started and not ended
        self.ordered = False  # its worker runs calls in the order sent (its ``ready`` says)
        self.sent_ahead = 0  # calls sent behind running ones, so far
        self.proc: Process | None = None
        self._transport: Any = None
        self._reader_task: asyncio.Task[None] | None = None  # runs ``_died`` once the stream ends
        self._gone: asyncio.Future[None] = self.loop.create_future()  # ``_died`` has run
        self._control: asyncio.Future[dict[str, Any]] | None = None
        self._stop_reason: errors.InvocationError | None = None
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        self._exit_task: asyncio.Task[None] | None = None
        self._watching = False
        self._deadlines = Deadlines(self.loop, self.in_flight.values())

    # -- life -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.worker_pid if self.proc else None

    @property
    def free_slots(self) -> int:
        if self.state not in ("idle", "busy"):
            return 0
        return self.concurrency - self.leases

    def queue_room(self, pipeline: int) -> int:
        """Calls that may be sent ahead now, behind the running ones."""
        if not self.ordered or self.state not in ("idle", "busy"):
            return 0
        return self.concurrency + pipeline - self.leases

    async def connect(self, proc: Process, sock: Any) -> None:
        """Talk to ``proc`` over ``sock`` (closed here if this fails or is cancelled)."""
        self.proc = proc
        try:
            self._watch_exit()  # first: ``stop`` relies on seeing the exit
            self._control = self.loop.create_future()
            transport, _ = await self.loop.create_unix_connection(lambda: _Frames(self),
                                                                  sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport

    def _watch_exit(self) -> None:
        """Set ``exited`` once the process has exited (at most one watch)."""
        if self._watching or self.proc is None:
            return
        self._watching = True
        pidfd = self.proc.open_pidfd()
        self.loop.add_reader(pidfd, self._on_exit, pidfd)

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """Wait for the next control frame (hello, ready/load_error)."""
        assert self._control is not None
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that comes
            # as the awaited frame arrives, and the caller (a cancelled task) carries on
            async with asyncio.timeout(timeout):
                header = await asyncio.shield(self._control)
        except TimeoutError:
            raise errors.InitError(
                f"the instance did not send {kind} within {timeout:g} s") from None
        self._control = self.loop.create_future()
        return header

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        assert self._transport is not None
        self._transport.write(protocol.pack(header, payload))

    def _frame(self, body: bytes) -> None:
        """One frame from the instance, which is not trusted: anything off the protocol
        raises :class:`~faasbox.runtime.protocol.ProtocolError` (and kills it)."""
        header, payload = protocol.unpack(body)
        if header["t"] == "result":
            call = self.in_flight.get(str(header.get("id")))
            if call is None or call.started is None:
                raise protocol.ProtocolError("a result for no call running")
            if len(payload) > protocol.MAX_RESULT:
                raise protocol.ProtocolError(
                    f"a result of {len(payload)} bytes (at most {protocol.MAX_RESULT})")
            del self.in_flight[str(header["id"])]
            self.running -= 1
            if not call.fut.done():
                call.fut.set_result((header, payload))
            error = header.get("error")
            if isinstance(error, dict) and error.get("type") == "MemoryError":
                self.state = "stopping"  # not reused (see _result): what waits does not start
            elif self.pending:
                self._start_pending()
        elif self._control is not None and not self._control.done():
            self._control.set_result(header)
        else:
            raise protocol.ProtocolError(f"an unexpected {header['t'][:40]!r} frame")

    def _broke(self, exc: protocol.ProtocolError) -> None:
        log.warning("instance %s broke the protocol (%s): killing it", self.id, exc)
        if self._stop_reason is None:
            self._stop_reason = errors.ProtocolViolation(
                f"the instance broke the node protocol ({exc}) and was killed")

    def _lost(self) -> None:
        """The stream ended (or was aborted on a protocol break)."""
        if self._reader_task is None:
            self._reader_task = self.loop.create_task(self._died(), name=f"died-{self.id}")

    def _on_exit(self, pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        self._exit_task = self.loop.create_task(self._collect_exit())

    async def _collect_exit(self) -> None:
        assert self.proc is not None
        self.returncode = await self.proc.wait()
        self.exited.set()

    async def _died(self) -> None:
        """The stream ended: find out why and fail everything still waiting."""
        try:
            await self._fail_all()
        finally:
            if not self._gone.done():
                self._gone.set_result(None)

    async def _fail_all(self) -> None:
        if self.proc is not None:
            await self.kill_all()
            await self.exited.wait()
        reason = self._stop_reason or self._death_reason()
        self.state = "stopped"
        self._deadlines.stop()
        for call in self.in_flight.values():
            if call.fut.done():
                continue
            if call.started is None:
                call.fut.set_exception(errors.NotStarted(
                    "the instance was stopped before the call started"))
            else:
                call.fut.set_exception(reason)
        self.in_flight.clear()
        self.pending.clear()
        if self._control is not None and not self._control.done():
            self._control.set_exception(reason)
            self._control.exception()  # mark retrieved: nobody may be waiting for it
        if self._transport is not None:
            self._transport.close()

    def _death_reason(self) -> errors.InvocationError:
        if self.cgroup is not None and self.cgroup.oom_killed():
            return errors.OutOfMemory(
                f"the instance ran out of memory (limit {self.memory_mb} MB) and was killed"
            )
        code = self.returncode
        if code is None:
            how = "exited (its exit code was lost with the process that forked it)"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = self.output_tail()
        return errors.InstanceCrashed(
            f"the instance {how} during the invocation", output=tail or None
        )

    def output_tail(self) -> str:
        try:
            with self.output_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - OUTPUT_TAIL))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is None or self.exited.is_set():
            return
        # The process itself, by its handle: a forked child has a process group of its own
        # only once it has run setsid(), and is in its cgroup only after its hello; until
        # then killpg(pid) finds no group and the cgroup kill does not reach it.
        self.proc.kill()
        # then whatever it started in its group. A spawned process is not reaped before
        # ``exited``; a forked one is reaped by its zygote (user code, for a template), so its
        # pid is used only while its pidfd says it still runs
        if not isinstance(self.proc, ForkedProcess) or self.proc.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def kill_all(self) -> None:
        """:meth:`kill`, then every process in its cgroup, off the event loop (a cgroup v1
        kill freezes the group and waits for it to freeze)."""
        if self.proc is None:
            return
        if self.exited.is_set():
            # a spawned instance's worker may outlive the process that waited for it
            if not (isinstance(self.proc, SpawnedProcess) and self.proc.waits):
                return
        else:
            self.kill()
        if self.cgroup is not None:
            await in_thread(self.cgroup.kill_all)

    async def stop(self, reason: errors.InvocationError | None = None) -> None:
        """Kill the process and wait until it is gone and every caller has been told."""
        if self._stop_reason is None:
            self._stop_reason = reason or errors.InstanceCrashed("the instance was stopped")
        if self.state != "stopped":
            self.state = "stopping"
        await self.kill_all()
        if self._transport is not None:  # connected: the stream ends with the process
            await asyncio.shield(self._gone)
        elif self.proc is not None:
            self._watch_exit()  # it never got connected
            await self.exited.wait()
        self.state = "stopped"

    # -- calls ------------------------------------------------------------------------------
    async def invoke(
        self, request_id: str, payload: bytes, timeout_s: float, extra: dict[str, Any],
    ) -> InvokeResult:
        """Run one call. Over ``concurrency`` running (a pipelined call), its frame is sent
        now and it starts when a running call ends."""
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = self.loop.create_future()
        call = Call(fut, timeout_s)
        self.in_flight[request_id] = call
        self.state = "busy"
        header = {"t": "invoke", "id": request_id, "timeout_ms": int(timeout_s * 1000), **extra}
        if self.running < self.concurrency:
            self._begin(call)  # timed from before its frame goes out
        else:
            self.pending.append(request_id)
            self.sent_ahead += 1
        self.send(header, payload)
        try:
            reply, body = await fut
        except TimedOut:
            self.in_flight.pop(request_id, None)
            reason = errors.InvocationTimeout(
                f"the invocation timed out after {timeout_s:g} s; its instance was stopped"
            )
            others = errors.InstanceCrashed(
                "the instance was stopped because a concurrent invocation timed out"
            )
            await self.stop(others)
            raise reason from None
        except Stopping:
            self.in_flight.pop(request_id, None)
            stopped = call.stop_reason or errors.InstanceCrashed("the instance was stopped")
            await self.stop(stopped)
            raise stopped from None
        finally:
            self.calls_served += 1
            self.last_used = self.loop.time()
            if self.state == "busy" and not self.in_flight:
                self.state = "idle"
        # durations are the node's, never what the instance says: from when the call started
        assert call.started is not None
        return self._result(reply, body, (time.perf_counter() - call.started) * 1000)

    def _begin(self, call: Call) -> None:
        """``call`` starts now on the instance: time it (node/calls.py)."""
        call.started = time.perf_counter()
        self.running += 1
        if call.stop_reason is not None:  # stopped while it waited: stop it as it starts
            call.fut.set_exception(Stopping())
            return
        self._deadlines.start(call)

    def _start_pending(self) -> None:
        while self.pending and self.running < self.concurrency:
            call = self.in_flight.get(self.pending.popleft())
            if call is not None and not call.fut.done():
                self._begin(call)

    async def interrupt(self, request_id: str, reason: errors.InvocationError) -> None:
        """Stop one call: the instance is stopped with it, once it has started (a call
        sent ahead is stopped as it starts, so the call before it ends untouched)."""
        call = self.in_flight.get(request_id)
        if call is not None and call.started is None:
            call.stop_reason = reason
            return
        await self.stop(reason)

    def _result(self, reply: dict[str, Any], body: bytes, duration_ms: float) -> InvokeResult:
        rss = reply.get("peak_rss_kb")
        rss_kb = float(rss) if isinstance(rss, int | float) else 0.0
        self.peak_rss_mb = min(max(0.0, rss_kb / 1024), float(self.memory_mb))
        logs = _text(reply.get("logs")) or ""
        if reply.get("ok") is True:
            return InvokeResult(body, duration_ms, logs, self.peak_rss_mb)
        err = reply.get("error")
        err = err if isinstance(err, dict) else {}
        kind = _text(err.get("type"), 200)
        if kind == "MemoryError":
            exc: errors.InvocationError = errors.OutOfMemory(
                f"the handler ran out of memory (limit {self.memory_mb} MB)"
            )
            self.state = "stopping"  # not reused: its heap may be in any state
        elif kind == "ResponseTooLarge":
            exc = errors.ResponseTooLarge(_text(err.get("message")) or "", type=kind)
        else:
            exc = errors.FunctionError(
                _text(err.get("message")) or "", type=kind,
                traceback=_text(err.get("traceback")),
            )
        exc.duration_ms = duration_ms
        exc.logs = logs
        raise exc

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.function,
            "version": self.version,
            "state": self.state,
            "pid": self.pid,
            "age_s": round(self.loop.time() - self.created, 3),
            "idle_s": round(self.loop.time() - self.last_used, 3) if not self.in_flight else 0.0,
            "calls_served": self.calls_served,
            "in_flight": len(self.in_flight),
            "sent_ahead": self.sent_ahead,
            "rss_mb": round(current_rss_mb(self.pid), 1) if self.pid else None,
            "init_ms": None if self.init_ms is None else round(self.init_ms, 2),
            "start_mode": self.start_mode,
            "start_fallback": self.start_fallback,
            "spare": self.spare,
            "started_ahead": self.ahead,
            "memory_mb": self.memory_mb,
        }


class _Frames(asyncio.Protocol):
    """Cuts the instance's stream into frames as it arrives; a frame's length is checked
    against the cap before any of its body is kept."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.buf = bytearray()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            while len(buf) >= 4:
                total = protocol.parse_length(bytes(buf[:4]), protocol.MAX_FROM_INSTANCE)
                if len(buf) < 4 + total:
                    return
                body = bytes(buf[4:4 + total])
                del buf[:4 + total]
                self.instance._frame(body)
        except protocol.ProtocolError as exc:
            buf.clear()
            self.instance._broke(exc)
            self.transport.abort()  # connection_lost follows

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.instance._lost()


def current_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _text(value: object, limit: int = TEXT_LIMIT) -> str | None:
    """A text field of a reply (the worker's word, so anything): a string cut to ``limit``
    characters (the worker keeps logs and error texts under 64 KiB itself), else None."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[:limit] + " [cut by the node]"
