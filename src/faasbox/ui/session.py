"""Dashboard sessions: an API key given once at sign-in, kept on the server; the browser
holds only a signed session id in an HttpOnly, SameSite=Strict cookie. Every POST form carries
the session's CSRF token.

The signing secret is made once per data dir (``<data>/ui.secret``, 0600). Sessions live in
memory: a restarted server asks to sign in again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "faasbox_session"
LOGIN_COOKIE = "faasbox_login"  # the CSRF token of the sign-in form (double submit)
LIFETIME_S = 12 * 3600
MAX_SESSIONS = 10_000


def load_secret(data: Path) -> bytes:
    path = data / "ui.secret"
    try:
        text = path.read_text().strip()
        if len(text) >= 64:
            return bytes.fromhex(text)
    except (OSError, ValueError):
        pass
    secret = os.urandom(32)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret


@dataclass
class Session:
    id: str
    key: str
    csrf: str
    created: float
    tenant: str | None = None  # an admin's chosen tenant (None: its own)


class Sessions:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.live: dict[str, Session] = {}

    def sign(self, value: str) -> str:
        mac = hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()
        return f"{value}.{mac}"

    def unsign(self, signed: str | None) -> str | None:
        if not signed or "." not in signed:
            return None
        value, _, mac = signed.rpartition(".")
        want = hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()
        return value if hmac.compare_digest(mac, want) else None

    def create(self, key: str) -> tuple[Session, str]:
        """A new session for ``key`` and the cookie value that names it."""
        now = time.time()
        if len(self.live) >= MAX_SESSIONS:
            for sid in [s.id for s in self.live.values() if now - s.created > LIFETIME_S]:
                del self.live[sid]
            if len(self.live) >= MAX_SESSIONS:
                oldest = min(self.live.values(), key=lambda s: s.created)
                del self.live[oldest.id]
        session = Session(secrets.token_urlsafe(24), key, secrets.token_urlsafe(24), now)
        self.live[session.id] = session
        return session, self.sign(session.id)

    def get(self, cookie: str | None) -> Session | None:
        sid = self.unsign(cookie)
        session = self.live.get(sid) if sid else None
        if session is not None and time.time() - session.created > LIFETIME_S:
            del self.live[session.id]
            return None
        return session

    def drop(self, session: Session) -> None:
        self.live.pop(session.id, None)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
