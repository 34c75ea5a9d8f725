"""Webhook deliveries: durable rows worked by a small background loop with its own
concurrency, so that a slow or dead receiver never holds up the dispatcher, other tasks or
other receivers.

- A delivery is a row (``deliveries``) with a due time. The loop starts every due row it has
  room for (``webhook_concurrency`` at once, at most ``webhook_per_host`` per receiver, that
  is scheme, host and port), each attempt in its own asyncio task, and sleeps until the next
  due time or a new row.
- An attempt POSTs the record as JSON, signed (:func:`sign`), with a timeout. 2xx: delivered.
  5xx, 429, a timeout or a connection error: retried with exponential backoff ("equal
  jitter") until ``max_age_s`` after the delivery was made. Anything else (a 4xx, a redirect,
  a private address): failed at once. Every attempt is recorded.
- Durable: a server that dies with deliveries due (or in flight) delivers them after its
  restart; a receiver may see an attempt twice and should dedupe by ``Faasbox-Delivery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from faasbox import __version__, background
from faasbox.clock import Clock
from faasbox.store.relational.delivery import AttemptRow, DeliveryRow, SqlDeliveryStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Faasbox-Signature"
IDLE_CHECK_S = 5.0
INTERNAL_NAMES = ("localhost", ".localhost", ".internal", ".local")


class WebhookRefused(ValueError):
    """A webhook target the server does not send to (a private address)."""


class WebhookUnreachable(OSError):
    """A webhook host that does not resolve now (retried)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _private(address: str) -> bool:
    """Not a public unicast address: private, loopback, link-local, shared (100.64/10: carrier
    NAT, some clouds' metadata), reserved, multicast, or an IPv6 address that carries such an
    IPv4 one (mapped, 6to4, Teredo)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(v4 is not None and _private(str(v4)) for v4 in inner):
            return True
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_private: bool) -> None:
    """Refuse an obviously internal target at configuration time (an IP literal in a private
    range, localhost and the like) unless the server allows them."""
    host = (urlsplit(url).hostname or "").lower()
    if allow_private:
        return
    if host == "localhost" or host.endswith(INTERNAL_NAMES):
        raise WebhookRefused(f"webhook host {host!r} is internal (FAASBOX_WEBHOOK_ALLOW_PRIVATE"
                             " allows it)")
    try:
        private = _private(host)
    except ValueError:  # a name, not an address
        return
    if private:
        raise WebhookRefused(f"webhook address {host} is private"
                             " (FAASBOX_WEBHOOK_ALLOW_PRIVATE allows it)")


async def resolve_check(url: str, allow_private: bool) -> str | None:
    """At delivery time: every address the host resolves to must be public (unless allowed).
    Returns the address to connect to (None: let the client resolve): the request goes to
    the address checked, not to what a second lookup of the name says (DNS rebinding)."""
    check_url(url, allow_private)
    if allow_private:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookUnreachable(f"cannot resolve the webhook host {host}") from exc
    if not infos:
        raise WebhookUnreachable(f"the webhook host {host} has no address")
    for info in infos:
        if _private(str(info[4][0])):
            # not which address: that would map the operator's internal names for a tenant
            raise WebhookRefused(f"webhook host {host} resolves to a private address")
    return str(infos[0][4][0])


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` with its host replaced by ``address``, and the Host header and TLS server name
    (certificate check included) of the original host: ``(url, headers, extensions)``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    shown = f"[{host}]" if ":" in host else host
    headers = {"Host": shown if parts.port is None else f"{shown}:{parts.port}"}
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return target, headers, extensions


class Webhooks:
    def __init__(
        self, store: SqlDeliveryStore, clock: Clock, *, timeout_s: float = 10.0,
        max_age_s: float = 86400.0, backoff_base_s: float = 2.0, backoff_cap_s: float = 300.0,
        concurrency: int = 32, per_host: int = 4, allow_private: bool = False,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.concurrency = concurrency
        self.per_host = per_host
        self.allow_private = allow_private
        self.on_outcome = on_outcome or (lambda outcome: None)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._hosts: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=8),
            headers={"User-Agent": f"faasbox-webhooks/{__version__}"})
        self._loop = asyncio.create_task(self._run(), name="webhooks")

    async def close(self) -> None:
        await background.stop(self._loop)
        running = list(self._inflight.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def kick(self) -> None:
        self._wake.set()

    def expires_at(self, created_at: float, max_age_s: float | None) -> float:
        return created_at + (max_age_s or self.max_age_s)

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._round()
            except Exception:
                log.exception("webhook round failed")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # asyncio.timeout keeps a cancel (3.11)
                    await self._wake.wait()

    async def _round(self) -> float:
        """Start what is due and has room; how long to sleep at most."""
        room = self.concurrency - len(self._inflight)
        now = self.clock.now()
        blocked: set[str] = set()  # due, but no room: an attempt ending wakes the loop
        if room > 0:
            full = frozenset(h for h, n in self._hosts.items() if n >= self.per_host)
            for row in await self.store.due(now, room * 2, set(self._inflight), full):
                parts = urlsplit(row.target)
                host = f"{parts.scheme}://{parts.netloc}"  # one receiver
                if len(self._inflight) >= self.concurrency or self._hosts[host] >= self.per_host:
                    blocked.add(row.id)
                    continue
                self._hosts[host] += 1
                self._inflight[row.id] = asyncio.create_task(self._attempt(row, host),
                                                             name=f"webhook-{row.id}")
        if len(self._inflight) >= self.concurrency:
            return IDLE_CHECK_S  # an attempt ending wakes the loop
        due = await self.store.next_due(set(self._inflight) | blocked)
        if due is None:
            return IDLE_CHECK_S
        return min(IDLE_CHECK_S, max(0.05, due - self.clock.now()))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        return float(ceiling / 2 + ceiling / 2 * random.random())

    async def _attempt(self, row: DeliveryRow, host: str) -> None:
        try:
            await self._deliver(row)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", row.id)
        finally:
            self._hosts[host] -= 1
            self._inflight.pop(row.id, None)
            self._wake.set()

    async def _deliver(self, row: DeliveryRow) -> None:
        assert self._client is not None
        attempt = row.attempts + 1
        dest = row.destination
        secret = await self.store.secret(row.tenant, dest.get("secret_ref") or "default",
                                         self.clock.now())
        now = self.clock.now()
        event = "task.succeeded" if row.condition == "success" else "task.failed"
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(secret, int(now), row.body),
                   "Faasbox-Delivery": row.id, "Faasbox-Attempt": str(attempt),
                   "Faasbox-Event": event}
        timeout = float(dest.get("timeout_s") or self.timeout_s)
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        retry = False
        try:
            target, extensions = row.target, dict[str, Any]()
            address = await resolve_check(row.target, self.allow_private)
            if address is not None:
                target, host_header, extensions = pinned(row.target, address)
                headers.update(host_header)
            async with self._client.stream("POST", target, content=row.body, headers=headers,
                                           timeout=timeout, extensions=extensions) as resp:
                code = resp.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
                retry = code >= 500 or code == 429
        except WebhookRefused as exc:
            error = str(exc)
        except WebhookUnreachable as exc:
            error, retry = str(exc), True
        except httpx.TimeoutException:
            error, retry = f"no response within {timeout:g} s", True
        except (httpx.TransportError, OSError) as exc:
            error, retry = f"connection error: {type(exc).__name__}: {exc}", True
        duration_ms = (time.monotonic() - started) * 1000
        now = self.clock.now()
        status, due = "delivered", now
        if error is not None:
            due = now + self._backoff(attempt)
            if retry and due < row.expires_at:
                status = "pending"
            else:
                status = "failed"
                if retry:
                    error += " (no retry left before the delivery's max age)"
        await self.store.record_attempt(
            row.id, AttemptRow(row.id, attempt, now, code, round(duration_ms, 3), error),
            status, due, now)
        self.on_outcome("retry" if status == "pending" else status)

