"""API keys: ``fbx_<key id>_<secret>``. The key id names the key (in listings, the audit log
and revocation); the secret is 32 random bytes, shown once and stored only as its SHA-256
(a high-entropy secret needs no slow hash), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os

PREFIX = "fbx"


def new_key() -> tuple[str, str, str]:
    """``(key_id, key, secret_hash)`` of a new key."""
    key_id = os.urandom(6).hex()
    secret = os.urandom(32).hex()
    return key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 12 or len(parts[2]) != 64:
        return None
    return parts[1], parts[2]


def matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
