"""Destinations of a function's async results (part of its task policy).

Kept free of other faasbox imports: :mod:`faasbox.store.queue` uses these models in ``TaskPolicy``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_DESTINATIONS = 8


def _name(kind: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a {kind} name (1-63 lowercase letters, digits,"
                         " '-' or '_')")
    return value


class WebhookDestination(BaseModel):
    """POST the record as JSON to ``url``, signed with the tenant's webhook secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"]
    url: str = Field(max_length=2048)
    secret_ref: str | None = Field(
        None, description="the name of one of the tenant's webhook secrets; default: default")
    timeout_s: float | None = Field(None, gt=0, le=60, description="per attempt; default:"
                                    " the server's webhook_timeout_s")
    max_age_s: float | None = Field(None, gt=0, le=7 * 86400, description="retries stop"
                                    " this long after the first attempt; default: the"
                                    " server's webhook_max_age_s")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook url must be http(s)://host/...")
        if parts.username or parts.password:
            raise ValueError("a webhook url cannot carry credentials")
        return v

    @field_validator("secret_ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else _name("secret", v)


class FunctionDestination(BaseModel):
    """Submit the record (or, for an ``on_success`` chain, the bare result) as a task of
    another function of the same tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"]
    name: str
    payload: Literal["record", "result"] = Field(
        "record", description="record: the destination record; result: the result alone"
        " (as the on_success chain sends it)")

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        return _name("function", v)


class TopicDestination(BaseModel):
    """Publish the record to a topic of the same tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["topic"]
    name: str

    @field_validator("name")
    @classmethod
    def _n(cls, v: str) -> str:
        return _name("topic", v)


Destination = Annotated[WebhookDestination | FunctionDestination | TopicDestination,
                        Field(discriminator="type")]


class Destinations(BaseModel):
    """Where a task's outcome goes: ``on_success`` after it succeeded, ``on_failure`` after
    it ended ``dead`` or ``expired``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_success: list[Destination] = Field(default_factory=list, max_length=MAX_DESTINATIONS)
    on_failure: list[Destination] = Field(default_factory=list, max_length=MAX_DESTINATIONS)

    def of(self, condition: str) -> list[Destination]:
        return list(self.on_success if condition == "success" else self.on_failure)
