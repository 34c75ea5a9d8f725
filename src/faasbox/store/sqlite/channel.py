"""Messages between the servers of one SQLite file, on one machine: what PostgreSQL's
LISTEN/NOTIFY is to a shared PostgreSQL.

Each server binds a Unix datagram socket in a directory beside the database file (mode 0700,
like the file itself: only the servers' user reaches it). A message goes to every socket there
but the sender's own, the messages of one commit in as few datagrams as hold them (each at
most ``MAX_MESSAGE`` bytes, cut between messages); a socket nobody holds any
more (its server was killed) is removed by the first sender that finds it so. A server whose
queue is full gets the datagram again a little later; one stopped for longer than
``RETRY_FOR_S`` misses it, and its slow poll covers what can be polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from faasbox import errors

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024
RESCAN_S = 1.0  # how often a sender looks again for servers that started since
RETRY_S = 0.02  # a server whose queue is full is sent to again this much later
RETRY_FOR_S = 5.0  # and given up on after this long (a stopped server)


def directory_for(db: Path) -> Path:
    return db.with_name(db.name + "-servers")


def check_directory(db: Path) -> int:
    """Make the servers' socket directory of ``db``, or check the one there: a directory,
    not a link, of this user's alone (mode 0700). Returns it open (the caller closes it)."""
    path = directory_for(db)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise errors.Unavailable(f"{path} must be a directory: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise errors.Unavailable(f"{path} must belong to this user (uid {os.geteuid()}),"
                                     f" not uid {st.st_uid}")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def pack(messages: list[str]) -> list[bytes]:
    """``messages`` joined by newlines into datagrams of at most ``MAX_MESSAGE`` bytes, each
    cut between two messages. A message too long for one datagram (or holding a newline) is
    not sent: the receivers' slow poll covers it."""
    datagrams: list[bytes] = []
    parts: list[bytes] = []
    size = -1
    for message in messages:
        data = message.encode()
        if len(data) > MAX_MESSAGE or b"\n" in data:
            log.warning("a message to the other servers is not sent (%d bytes): %.80r",
                        len(data), message)
            continue
        if size + 1 + len(data) > MAX_MESSAGE:
            datagrams.append(b"\n".join(parts))
            parts, size = [], -1
        parts.append(data)
        size += 1 + len(data)
    if parts:
        datagrams.append(b"\n".join(parts))
    return datagrams


class Channel:
    """This server's socket among its peers'."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.name = uuid.uuid4().hex[:16]
        self.sock: socket.socket | None = None
        self._dir_fd = -1
        self._peers: list[str] = []
        self._scanned = 0.0
        self.sent = 0
        self.dropped = 0

    def _address(self, name: str) -> str:
        """The socket address of ``name``, through the directory this server checked and
        holds open (short whatever the real path; no link put there since is followed)."""
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def open(self) -> None:
        self._dir_fd = check_directory(self.db)  # the one checked, not what the path is now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self._address(self.name))
        except OSError:
            sock.close()
            self.close()
            raise
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self._dir_fd)
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- sending --------------------------------------------------------------------------
    def _scan(self) -> list[str]:
        now = time.monotonic()
        if now - self._scanned > RESCAN_S:
            try:
                self._peers = [n for n in os.listdir(self._dir_fd) if n != self.name]
            except OSError:
                self._peers = []
            self._scanned = now
        return self._peers

    def send(self, messages: list[str]) -> None:
        """Send ``messages`` to every other server, as few datagrams as hold them (never
        blocks). A server with no room yet gets them again a little later, for up to
        ``RETRY_FOR_S``."""
        if self.sock is None or not messages:
            return
        datagrams = pack(messages)
        for peer in list(self._scan()):
            give_up_at = time.monotonic() + RETRY_FOR_S
            for data in datagrams:
                self._send_to(peer, data, give_up_at)

    def _send_to(self, peer: str, data: bytes, give_up_at: float) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sock.sendto(data, self._address(peer))
            self.sent += 1
        except (ConnectionRefusedError, FileNotFoundError):
            if peer in self._peers:
                self._peers.remove(peer)  # its server is gone: so is its socket
            with contextlib.suppress(OSError):
                os.unlink(peer, dir_fd=self._dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.warning("could not tell server %s: %s", peer, exc)
            elif time.monotonic() < give_up_at:  # its queue is full: again, later
                asyncio.get_running_loop().call_later(
                    RETRY_S, self._send_to, peer, data, give_up_at)
                return
            self.dropped += 1  # its slow poll sees what it missed

    # -- receiving ------------------------------------------------------------------------
    def listen(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` on the running event loop with each message received."""
        sock = self.sock
        if sock is None:
            raise RuntimeError("the channel is not open")

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(MAX_MESSAGE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    log.warning("server channel: %s", exc)
                    return
                for message in data.decode(errors="replace").split("\n"):
                    callback(message)

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)

    def unlisten(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
