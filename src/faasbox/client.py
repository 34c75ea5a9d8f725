"""A small HTTP client for the faasbox API (used by the CLI and the benches)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

DEFAULT_URL = "http://127.0.0.1:8080"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "faasbox" / "config.toml"


def read_profiles() -> dict[str, dict[str, str]]:
    try:
        with config_path().open("rb") as f:
            profiles = tomllib.load(f).get("profiles", {})
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}
    return {k: v for k, v in profiles.items() if isinstance(v, dict)}


def find_api_key(url: str, explicit: str | None = None) -> str | None:
    """The key to call ``url`` with: ``explicit`` (--api-key), ``FAASBOX_API_KEY``, the
    profile for that URL in ~/.config/faasbox/config.toml (``faasbox login``), or for a
    server on this machine its ``<data>/admin.key`` (``FAASBOX_DATA``, default
    ``.faasbox``)."""
    key = explicit or os.environ.get("FAASBOX_API_KEY")
    if key:
        return key.strip()
    wanted = url.rstrip("/")
    for profile in read_profiles().values():
        if str(profile.get("url", "")).rstrip("/") == wanted and profile.get("api_key"):
            return str(profile["api_key"]).strip()
    if (urlsplit(url).hostname or "") in LOOPBACK:
        path = Path(os.environ.get("FAASBOX_DATA") or ".faasbox") / "admin.key"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
    return None


class ApiError(Exception):
    """The server answered with an error object, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body or {}


class Client:
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 960.0,
                 api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        key = find_api_key(self.url, api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        tenant = os.environ.get("FAASBOX_TENANT")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                 params={"tenant": tenant} if tenant else None)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the faasbox server at {self.url}"
                           " (is `faasbox server` running? set --url or FAASBOX_URL)") from None
        except httpx.TimeoutException:
            raise ApiError(f"the server at {self.url} did not answer in time") from None
        if resp.status_code >= 400:
            error = _api_error(resp)
            if resp.status_code == 401:
                error.message += (" (give a key with --api-key or FAASBOX_API_KEY, or run"
                                  " `faasbox login --url URL --api-key KEY`)")
            raise error
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        return orjson.loads(resp.content) if resp.content else None


def _api_error(resp: httpx.Response) -> ApiError:
    try:
        body = orjson.loads(resp.content)
        err = body["error"]
        return ApiError(err.get("message", resp.reason_phrase), resp.status_code,
                        err.get("code"), err)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = resp.text.strip()[:500] or resp.reason_phrase
        return ApiError(f"HTTP {resp.status_code}: {text}", resp.status_code)
