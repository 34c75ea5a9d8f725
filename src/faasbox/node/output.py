"""An instance's stdout and stderr: a pipe the node drains into the instance's output file,
keeping the first ``cap`` bytes and then one marker line; the rest is read and dropped (so
that the instance never blocks on a full pipe). The file lives in the node's own directory,
so its size does not depend on anything the instance does. It is made at the first output:
an instance that prints nothing costs no file (a create and an unlink on the node's disk,
a third of the server's CPU in a burst of cold starts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MARKER = "\n[faasbox: output truncated at {cap} bytes]\n"


class OutputSink:
    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.truncated = False
        read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self.read_fd: int | None = read_fd
        os.set_blocking(read_fd, False)
        self._file: BinaryIO | None = None
        self._unwritable = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Drain from the event loop (after the write end was handed to the process)."""
        self.close_write_end()
        if self.read_fd is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.read_fd, self.drain)

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def drain(self) -> None:
        """Read what the pipe holds now (also called before the output is read back)."""
        while self.read_fd is not None:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer has gone
                self.close()
                return
            room = self.cap - self.written
            out = self._open()
            if room > 0:
                if out is not None:
                    out.write(chunk[:room])
                self.written += min(room, len(chunk))
            if len(chunk) > room and not self.truncated:
                self.truncated = True
                if out is not None:
                    out.write(MARKER.format(cap=self.cap).encode())
            if out is not None:
                out.flush()

    def _open(self) -> BinaryIO | None:
        """The file, made at the first output (None: it cannot be made; the output is
        read and dropped)."""
        if self._file is None and not self._unwritable:
            try:
                self._file = self.path.open("wb")
            except OSError as exc:
                self._unwritable = True
                log.warning("cannot keep the output of an instance in %s: %s", self.path, exc)
        return self._file

    def close(self) -> None:
        self.close_write_end()
        if self.read_fd is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.read_fd)
            os.close(self.read_fd)
            self.read_fd = None
        if self._file is not None:
            self._file.close()
