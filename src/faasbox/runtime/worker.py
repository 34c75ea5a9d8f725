"""The instance main loop: ``python -m faasbox.runtime FD``.

The node starts this process with one end of a socketpair as ``FD``. The worker says ``hello``,
waits for ``load`` (sent once the node has put it in its sandbox), imports the handler and
answers ``ready`` or ``load_error``; then it serves ``invoke`` frames until the socket closes.
Sync handlers run on the main thread (or on a pool of ``concurrency`` threads); ``async def``
handlers run on one event loop thread. The worker enforces no limits: the node does.
"""

from __future__ import annotations

import importlib
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from faasbox.runtime import protocol
from faasbox.runtime.context import Context, LogBuffer, current_log, install_routers

MAX_RESULT = protocol.MAX_RESULT
ERROR_TEXT_LIMIT = 64 * 1024
REHEARSAL_CALLS = 64  # enough for the interpreter to specialize the per-call code


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self.handler: Callable[..., Any] | None = None
        self.is_async = False
        self.spec: dict[str, Any] = {}
        self._pool: Any = None  # a ThreadPoolExecutor when concurrency > 1
        self._loop: Any = None

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        frame = protocol.pack(header, payload)
        with self._send_lock:
            self.sock.sendall(frame)

    # -- load -------------------------------------------------------------------------------
    def load(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        started = time.monotonic()
        try:
            handler = import_handler(spec)
        except BaseException as exc:
            self.send({"t": "load_error", **_describe(exc)})
            sys.stdout.flush()
            os._exit(1)
        self.handler = handler
        # imported here, not at the top: these cost ~30 ms of every cold start
        import inspect

        self.is_async = inspect.iscoroutinefunction(handler)
        concurrency = int(spec.get("concurrency", 1))
        if self.is_async:
            self._start_loop()
        elif concurrency > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="faasbox-handler")
        init_ms = (time.monotonic() - started) * 1000
        # a sync handler runs calls in the order they come: the node may send some ahead
        self.send({"t": "ready", "init_ms": init_ms, "ordered": not self.is_async})

    def _start_loop(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="faasbox-loop", daemon=True).start()

    # -- invoke -----------------------------------------------------------------------------
    def dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        if self.is_async:
            import asyncio

            asyncio.run_coroutine_threadsafe(self._run_async(header, payload), self._loop)
        elif self._pool is not None:
            self._pool.submit(self._run_sync, header, payload)
        else:
            self._run_sync(header, payload)

    def _begin(self, header: dict[str, Any]) -> tuple[Context, LogBuffer]:
        log = LogBuffer()
        current_log.set(log)
        deadline = time.monotonic() + header.get("timeout_ms", 3_600_000) / 1000
        ctx = Context(
            header["id"], self.spec["function"], self.spec["version"], self.spec["memory_mb"],
            deadline, header, log, self.spec.get("instance", ""),
        )
        return ctx, log

    def _run_sync(self, header: dict[str, Any], payload: bytes) -> None:
        ctx, log = self._begin(header)
        started = time.perf_counter()
        try:
            event = orjson.loads(payload) if payload else None
            assert self.handler is not None
            result = self.handler(event, ctx)
        except BaseException as exc:
            self._finish(header, started, log, error=exc)
        else:
            self._finish(header, started, log, result=result)
        finally:
            current_log.set(None)

    async def _run_async(self, header: dict[str, Any], payload: bytes) -> None:
        ctx, log = self._begin(header)
        started = time.perf_counter()
        try:
            event = orjson.loads(payload) if payload else None
            assert self.handler is not None
            result = await self.handler(event, ctx)
        except BaseException as exc:
            self._finish(header, started, log, error=exc)
        else:
            self._finish(header, started, log, result=result)

    def _finish(
        self, header: dict[str, Any], started: float, log: LogBuffer,
        result: Any = None, error: BaseException | None = None,
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        body = b""
        reply: dict[str, Any] = {"t": "result", "id": header["id"], "duration_ms": duration_ms}
        if error is None:
            try:
                body = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError as exc:
                error = TypeError(f"the handler's result is not JSON serializable: {exc}")
                error.__traceback__ = None
            else:
                if len(body) > MAX_RESULT:
                    reply["error"] = {
                        "type": "ResponseTooLarge",
                        "message": f"the result is {len(body)} bytes; the limit is {MAX_RESULT}",
                    }
                    body = b""
        if error is not None:
            reply["error"] = _describe(error)
        reply["ok"] = "error" not in reply
        reply["logs"] = log.getvalue()
        reply["peak_rss_kb"] = _peak_rss_kb()
        self.send(reply, body)

    # -- main loop --------------------------------------------------------------------------
    def serve(self) -> None:
        self.send({"t": "hello", "pid": os.getpid()})
        rfile = self.sock.makefile("rb")
        first = protocol.read_frame(rfile)
        if first is None or first[0].get("t") != "load":
            return
        self.load(first[0])
        while True:
            frame = protocol.read_frame(rfile)
            if frame is None:
                return
            header, payload = frame
            if header.get("t") == "invoke":
                self.dispatch(header, payload)


def rehearse(spec: dict[str, Any], calls: int = REHEARSAL_CALLS) -> None:
    """Run the per-call path (read a frame, a context, the result, the reply) ``calls`` times
    with a stand-in handler over a socketpair, in a snapshot template before it forks. The
    interpreter specializes that code, and its caches fill, once here; in every child they
    would be writes to pages shared with the template, each a private copy (idle PSS, and CPU
    in a burst of cold starts). The function's own handler is never called."""
    ours, theirs = socket.socketpair()
    try:
        worker = Worker(ours)
        worker.spec = {"function": spec.get("function", ""), "version": spec.get("version", 0),
                       "memory_mb": spec.get("memory_mb", 128)}
        worker.handler = _echo
        rfile, replies = ours.makefile("rb"), theirs.makefile("rb")
        for i in range(calls):
            theirs.sendall(protocol.pack({"t": "invoke", "id": f"rehearsal-{i}",
                                          "timeout_ms": 60_000}, b'{"rehearsal": true}'))
            frame = protocol.read_frame(rfile)
            assert frame is not None
            worker.dispatch(*frame)
            protocol.read_frame(replies)
        rfile.close()
        replies.close()
    finally:
        ours.close()
        theirs.close()
        current_log.set(None)
        fd = _status[0]
        if fd >= 0:  # the child opens its own
            os.close(fd)
        _status[:] = [-1, -1]


def _echo(event: Any, context: Context) -> Any:
    print("", end="")  # the log router's path too
    return event


def import_handler(spec: dict[str, Any]) -> Callable[..., Any]:
    """Set the rlimits and the function's environment variables of ``spec`` on this process,
    put its paths first on ``sys.path`` and import its handler. In an instance forked from a
    snapshot template the module is already imported (and the paths and limits already set),
    so this returns at once."""
    for name, value in spec.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    env: dict[str, str] = spec.get("env") or {}
    for key, value in env.items():  # a spawned instance starts without them
        if os.environ.get(key) != value:
            os.environ[key] = value
    if "TZ" in env:  # read when ``time`` was imported (in a zygote, before the fork)
        time.tzset()
    for path in reversed(spec.get("paths", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    module_name, _, attr = spec["handler"].partition(":")
    module = importlib.import_module(module_name)
    handler = getattr(module, attr or "handler", None)
    if handler is None:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(handler):
        raise TypeError(f"{spec['handler']} is not callable")
    return handler  # type: ignore[no-any-return]


_RUSAGE = -2  # in _status: getrusage gives this process's own peak
_status: list[int] = [-1, -1]  # an open /proc/self/status (or _RUSAGE) and its pid


def _peak_rss_kb() -> int:
    """This process's own peak RSS (VmHWM). ``ru_maxrss`` is the same figure for a forked
    instance and about ten times cheaper, but a spawned one inherits the server's peak
    across its exec there: the first call compares the two and reads ``/proc/self/status``
    (kept open) only where they differ."""
    try:
        fd, pid = _status
        if pid != os.getpid():
            fd = _peak_source(fd)
        if fd == _RUSAGE:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return _hwm(fd)
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_source(old: int) -> int:
    if old >= 0:
        os.close(old)
    _status[:] = [-1, -1]
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if inherited <= _hwm(fd):  # read first: the high-water mark only grows
        os.close(fd)
        fd = _RUSAGE
    _status[:] = [fd, os.getpid()]
    return fd


def _hwm(fd: int) -> int:
    data = os.pread(fd, 8192, 0)
    at = data.find(b"VmHWM:")
    if at < 0:
        raise ValueError("no VmHWM in /proc/self/status")
    return int(data[at + 6:data.index(b"kB", at)])


def _describe(exc: BaseException) -> dict[str, Any]:
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # bounded: the node refuses a frame much over the result cap
    return {"type": type(exc).__name__[:200], "message": _cut(str(exc)),
            "traceback": _cut(tb)}


def _cut(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more)"


def batch_scheduling() -> None:
    """Run as ``SCHED_BATCH``: the same CPU shares, but an instance woken by a frame does not
    preempt the node that wrote it, so the node finishes its turn of the event loop first
    (fewer context switches per call; its threads inherit it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):  # not Linux, or refused: the default policy then
        pass


def run(sock: socket.socket) -> None:
    """Serve one instance on ``sock`` until the node closes it; never returns."""
    install_routers()
    batch_scheduling()
    try:
        Worker(sock).serve()
    except (BrokenPipeError, ConnectionResetError, protocol.ProtocolError):
        pass
    finally:
        sys.stdout.flush()
        os._exit(0)


def main(argv: list[str]) -> None:
    """``python -I -m faasbox.runtime FD [PLAN]``: PLAN (JSON) is what the process does to
    itself before it says hello (runtime/confine.py); if that fails it exits at once."""
    sock = socket.socket(fileno=int(argv[1]))
    if len(argv) > 2:
        from faasbox.runtime.confine import become_pid_one, confine

        try:
            plan = orjson.loads(argv[2])
            if plan.get("pid") and os.geteuid() == 0:
                become_pid_one(plan.get("uid"))  # the process that stays behind never returns
            confine(plan)
        except OSError as exc:
            print(f"faasbox: cannot confine the instance: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
    run(sock)
