"""What a handler sees besides its event, and per-invocation output capture."""

from __future__ import annotations

import contextvars
import sys
import time
from typing import Any, TextIO

LOG_LIMIT = 64 * 1024
_TRUNCATED = "\n…[log truncated at 64 KiB]\n"


class LogBuffer:
    """Collects one invocation's output, keeping the first ``LOG_LIMIT`` characters."""

    __slots__ = ("_parts", "_size", "truncated")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def write(self, text: str) -> None:
        if self.truncated or not text:
            return
        room = LOG_LIMIT - self._size
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self._parts.append(text)
        self._size += len(text)

    def getvalue(self) -> str:
        return "".join(self._parts) + (_TRUNCATED if self.truncated else "")


current_log: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar(
    "faasbox_log", default=None
)


class OutputRouter:
    """Stands in for sys.stdout/sys.stderr: text written during an invocation goes to that
    invocation's log; anything else goes to the original stream."""

    def __init__(self, original: TextIO) -> None:
        self._original = original

    def write(self, text: str) -> int:
        buf = current_log.get()
        if buf is None:
            return self._original.write(text)
        buf.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current_log.get() is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def install_routers() -> None:
    if isinstance(sys.stdout, OutputRouter):  # inherited from a snapshot template
        return
    sys.stdout = OutputRouter(sys.__stdout__)  # type: ignore[arg-type]
    sys.stderr = OutputRouter(sys.__stderr__)  # type: ignore[arg-type]


class Context:
    """The handler's ``context`` argument (see docs/functions.md)."""

    def __init__(
        self, request_id: str, function_name: str, version: int, memory_limit_mb: int,
        deadline: float, extra: dict[str, Any], log: LogBuffer, instance_id: str = "",
    ) -> None:
        self.request_id = request_id
        self.instance_id = instance_id
        self.function_name = function_name
        self.version = version
        self.memory_limit_mb = memory_limit_mb
        self.trace_id: str | None = extra.get("trace_id")
        self.task_id: str | None = extra.get("task_id")
        self.attempt: int = extra.get("attempt", 1)
        self.shard: dict[str, int] | None = extra.get("shard")
        self._deadline = deadline
        self._log = log

    def remaining_time_ms(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def log(self, *parts: Any) -> None:
        self._log.write(" ".join(str(p) for p in parts) + "\n")

    def __repr__(self) -> str:
        return (f"Context(request_id={self.request_id!r}, function_name={self.function_name!r},"
                f" version={self.version})")
