"""Dashboard sessions: an API key given once at sign-in, kept on the server; the browser
holds only a signed session id in an HttpOnly, SameSite=Strict cookie. Every POST form carries
the session's CSRF token.

The signing secret is made once per data dir (``<data>/ui.secret``, 0600). Each session is
a file, ``<data>/ui-sessions/<id>`` (0600, in a 0700 folder that instances never see), so
that every worker of ``faasbox server --workers`` (which share the supervisor's data dir) knows
every session, whichever worker a browser's connection reaches, and a restarted server keeps
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

COOKIE = "faasbox_session"
LOGIN_COOKIE = "faasbox_login"  # the CSRF token of the sign-in form (double submit)
LIFETIME_S = 12 * 3600
MAX_SESSIONS = 10_000
PER_KEY = 32  # sessions of one key at once: its own oldest goes first
TAG = 16  # a session id starts with this many characters naming its key (an HMAC, not a hash)
SWEEP_S = 3600.0  # at most this often, a sign-in removes expired sessions' files


def load_secret(data: Path) -> bytes:
    path = data / "ui.secret"
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        if len(text) >= 64:
            return bytes.fromhex(text)
    secret = os.urandom(32)
    # a missing file is made exclusively: servers that start together (--workers) keep the
    # first one's; a file that holds no secret is replaced
    flags = os.O_WRONLY | (os.O_TRUNC if path.exists() else os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return load_secret(data)
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


SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class Sessions:
    """The sessions, one file each in ``folder``: what every server on the folder sees."""

    def __init__(self, secret: bytes, folder: Path, max_sessions: int = MAX_SESSIONS,
                 per_key: int = PER_KEY) -> None:
        self.secret = secret
        self.folder = folder
        self.max_sessions = max_sessions
        self.per_key = per_key
        self._swept = 0.0
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)

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
        if now - self._swept > SWEEP_S:
            self._swept = now
            self._sweep(now)
        tag = hmac.new(self.secret, b"key:" + key.encode(), hashlib.sha256).hexdigest()[:TAG]
        files = [p for p in self.folder.iterdir() if SESSION_ID.fullmatch(p.name)]
        mine = [p for p in files if p.name.startswith(tag)]
        if len(mine) >= self.per_key:
            self._evict(mine)
        elif len(files) >= self.max_sessions:
            # the oldest of the key that holds the most: one key's sign-ins cannot sign
            # everyone else out
            by_key: dict[str, list[Path]] = {}
            for p in files:
                by_key.setdefault(p.name[:TAG], []).append(p)
            self._evict(max(by_key.values(), key=len))
        session = Session(tag + secrets.token_urlsafe(24), key, secrets.token_urlsafe(24), now)
        self.save(session)
        return session, self.sign(session.id)

    @staticmethod
    def _evict(files: list[Path]) -> None:
        with contextlib.suppress(OSError):
            min(files, key=lambda p: p.lstat().st_mtime).unlink()

    def get(self, cookie: str | None) -> Session | None:
        """The session the cookie names, as its file says now (a sign-out or tenant choice
        through another server included)."""
        sid = self.unsign(cookie)
        if not sid or not SESSION_ID.fullmatch(sid):
            return None
        try:
            fd = os.open(self.folder / sid, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                session = Session(**orjson.loads(f.read()))
        except (OSError, ValueError, TypeError):
            return None
        if time.time() - session.created > LIFETIME_S:
            self.drop(session)
            return None
        return session

    def save(self, session: Session) -> None:
        """Write ``session`` (after any change) where every server finds it."""
        tmp = self.folder / f".{session.id}.{os.getpid()}"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(dataclasses.asdict(session)))
        os.replace(tmp, self.folder / session.id)

    def _sweep(self, now: float) -> None:
        """Remove the files of expired sessions (a file is written at sign-in and on each
        change, so one untouched for a session's lifetime is expired)."""
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):
                if now - path.lstat().st_mtime > LIFETIME_S:
                    path.unlink()

    def drop(self, session: Session) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.folder / session.id)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
