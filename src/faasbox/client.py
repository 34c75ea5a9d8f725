"""A small HTTP client for the faasbox API (used by the CLI and the benches)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

DEFAULT_URL = "http://127.0.0.1:8080"


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
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 960.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

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
            raise _api_error(resp)
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
