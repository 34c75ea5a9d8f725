"""This server among the servers that share one store.

- **Membership**: every server writes a heartbeat (``servers`` table) every
  ``HEARTBEAT_S``, on a fixed beat and aside from its queued writes (``write_aside``: a
  busy server is not taken for dead); a server silent for ``dead_after_s`` is dead, and only
  its leases (and leases past their deadline) are taken back by the others, once their own
  heartbeats have gone through steadily for ``dead_after_s``. On a store that is not shared
  (SQLite in the data dir: one server) every other owner is a previous run of this server.
- **Store health**: a heartbeat that cannot be written, or has not gone through in a third
  of ``dead_after_s`` (a hung connection), marks the store lost: this server stops leasing
  tasks and ``/healthz`` says so, until a heartbeat is written again.
- **Messages**: what one server changes, the others hear through the store (PostgreSQL
  LISTEN/NOTIFY; a shared SQLite file: Unix sockets beside it): new tasks, cancels, deploys,
  tenancy and trigger changes. A slow poll (``POLL_S``) covers messages lost meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.store.database import Database
from faasbox.store.relational.cluster import ServerRow, SqlClusterStore

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
STALL_S = 3 * HEARTBEAT_S  # heartbeats further apart: the store's writes stalled
POLL_S = 5.0
FORGET_AFTER_S = 86400.0

Handler = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True)
class Member:
    row: ServerRow
    alive: bool
    me: bool

    def view(self) -> dict[str, Any]:
        return {"id": self.row.id, "url": self.row.url, "started_at": self.row.started_at,
                "heartbeat_at": self.row.heartbeat_at, "alive": self.alive, "self": self.me,
                **self.row.info}


class Cluster:
    def __init__(self, db: Database, store: SqlClusterStore, clock: Clock, url: str,
                 dead_after_s: float, info: Callable[[], dict[str, Any]]) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self.url = url
        self.dead_after_s = dead_after_s
        self.info = info
        self.id = uuid.uuid4().hex  # this server's lease identity
        self.started_at = clock.now()
        self.store_error: str | None = None
        self._handlers: dict[str, list[Handler]] = {}
        self._pollers: list[Handler] = []
        self._loops: list[asyncio.Task[None]] = []
        self.heard = 0  # messages from other servers
        self._last_beat: float | None = None  # when this server's last heartbeat committed
        self._steady_since: float | None = None  # since when they have, without a stall

    @property
    def beat_timeout_s(self) -> float:
        """A heartbeat slower than this marks the store lost, well before the others count
        this server dead (``dead_after_s``)."""
        return max(HEARTBEAT_S, self.dead_after_s / 3)

    @property
    def shared(self) -> bool:
        return self.db.shared

    @property
    def store_ok(self) -> bool:
        return self.store_error is None

    def live_since(self, now: float) -> float | None:
        """Heartbeats older than this are dead servers (None: one server per store). Until
        this server's own heartbeats have gone through steadily for ``dead_after_s`` (after
        its start, or after a stall of the store's writes that held everyone's back), no
        server counts as dead: the others' may still be on their way."""
        if not self.shared:
            return None
        steady = self._steady_since
        if steady is None or self.clock.monotonic() - steady < self.dead_after_s:
            return 0.0
        return now - self.dead_after_s

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._beat()
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        if self.shared:
            self.db.listen(self._heard)
            self._loops.append(asyncio.create_task(self._poll_loop(), name="cluster-poll"))

    async def close(self) -> None:
        await background.stop(*self._loops)
        self._loops = []
        try:
            await self.store.leave(self.id)
        except errors.StoreUnavailable as exc:
            log.warning("could not remove this server's heartbeat: %s", exc)

    async def _beat(self) -> None:
        now = self.clock.now()
        info = {"host": socket.gethostname(), "pid": os.getpid(), **self.info()}
        await self.store.heartbeat(self.id, self.started_at, now, self.url, info)
        done = self.clock.monotonic()
        if self._last_beat is None or done - self._last_beat > STALL_S:
            self._steady_since = done
        self._last_beat = done

    async def _heartbeat_loop(self) -> None:
        last_forget = 0.0
        due = self.clock.monotonic()
        while True:
            # on a fixed beat: a slow write does not push the next one later
            due = max(due + HEARTBEAT_S, self.clock.monotonic())
            await self.clock.sleep(due - self.clock.monotonic())
            try:
                beat = asyncio.ensure_future(self._beat())
                if not (await asyncio.wait({beat}, timeout=self.beat_timeout_s))[0]:
                    # a hung connection or a stalled disk: the others will soon count this
                    # server dead and take its leases back, so it takes no more meanwhile
                    if self.store_error is None:
                        log.error("a heartbeat has not gone through in %g s; not leasing"
                                  " tasks until one does", self.beat_timeout_s)
                    self.store_error = (f"a heartbeat has not gone through in"
                                        f" {self.beat_timeout_s:g} s")
                await beat  # the next one waits for it: none pile up behind a hung one
                if self.store_error is not None:
                    log.warning("the store is back; leasing tasks again")
                self.store_error = None
                now = self.clock.now()
                if now - last_forget > 3600:
                    last_forget = now
                    await self.store.forget(now - FORGET_AFTER_S)
            except errors.StoreUnavailable as exc:
                if self.store_error is None:
                    log.error("lost the store (%s); not leasing tasks until it is back", exc)
                self.store_error = str(exc)
            except Exception:
                log.exception("heartbeat failed")

    async def servers(self) -> list[Member]:
        now = self.clock.now()
        since = now - self.dead_after_s
        return [Member(r, r.heartbeat_at >= since, r.id == self.id)
                for r in await self.store.servers()]

    # -- messages ---------------------------------------------------------------------------
    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(key)`` when another server publishes ``kind``."""
        self._handlers.setdefault(kind, []).append(handler)

    def every_poll(self, handler: Handler) -> None:
        """Call ``handler("")`` every ``POLL_S`` on a shared store (missed messages)."""
        self._pollers.append(handler)

    def publish(self, kind: str, key: str = "") -> None:
        if self.shared:
            self.db.publish(orjson.dumps({"from": self.id, "kind": kind, "key": key}).decode())

    def _heard(self, payload: str) -> None:
        try:
            msg = orjson.loads(payload)
            if msg.get("from") == self.id:
                return
            kind, key = str(msg["kind"]), str(msg.get("key", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed cluster message: %.200r", payload)
            return
        self.heard += 1
        for handler in self._handlers.get(kind, []):
            self._call(handler, key)

    def _call(self, handler: Handler, key: str) -> None:
        try:
            result = handler(key)
        except Exception:
            log.exception("cluster message handler failed")
            return
        if result is not None:
            task = asyncio.ensure_future(result)
            task.add_done_callback(_log_failure)

    async def _poll_loop(self) -> None:
        while True:
            await self.clock.sleep(POLL_S)
            for handler in self._pollers:
                try:
                    result = handler("")
                    if result is not None:
                        await result
                except errors.StoreUnavailable:
                    pass
                except Exception:
                    log.exception("cluster poll failed")


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, errors.StoreUnavailable):
            log.error("cluster message handler failed: %r", exc)
