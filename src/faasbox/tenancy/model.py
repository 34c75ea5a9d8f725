"""Tenants, their limits and the identity a request acts as."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scope = Literal["admin", "developer", "invoke"]
SCOPE_RANK: dict[str, int] = {"invoke": 0, "developer": 1, "admin": 2}
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Limits(BaseModel):
    """A tenant's limits; a field left out takes the platform default (``None`` in a PATCH
    goes back to it). 0 means no limit for the rate and memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="executions running at once (sync and async)")
    rate_per_s: float | None = Field(
        None, ge=0, le=1_000_000, description="sync invokes and submitted tasks per second,"
        " refilled continuously (0: no rate limit)")
    burst: int | None = Field(None, ge=0, le=1_000_000,
                              description="requests allowed at once above the rate")
    max_queued_tasks: int | None = Field(
        None, ge=0, le=100_000_000, description="tasks not yet finished (held, queued, retrying,"
        " running)")
    max_functions: int | None = Field(None, ge=0, le=100_000)
    max_memory_mb: int | None = Field(
        None, ge=0, le=100_000_000, description="sum of the memory of running instances"
        " (0: the node's)")
    max_function_memory_mb: int | None = Field(
        None, ge=128, le=10240, description="largest memory_mb a function may ask for")
    max_function_timeout_s: float | None = Field(
        None, gt=0, le=900, description="largest timeout_s a function may ask for")


@dataclass(frozen=True)
class EffectiveLimits:
    max_concurrency: int
    rate_per_s: float
    burst: int
    max_queued_tasks: int
    max_functions: int
    max_memory_mb: int
    max_function_memory_mb: int
    max_function_timeout_s: float

    def merged(self, overrides: Limits) -> EffectiveLimits:
        values = {k: v for k, v in overrides.model_dump().items() if v is not None}
        return EffectiveLimits(**{**self.__dict__, **values})


class TenantSpec(BaseModel):
    """``POST /v1/tenants``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weight: float = Field(1.0, gt=0, le=1000, description="share of contended capacity")
    limits: Limits = Field(default_factory=Limits)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_tenant_name(v)


class TenantPatch(BaseModel):
    """``PATCH /v1/tenants/{name}``: the fields given change; limits merge field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float | None = Field(None, gt=0, le=1000)
    limits: dict[str, Any] | None = None


class KeySpec(BaseModel):
    """``POST /v1/tenants/{name}/keys``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Scope
    functions: list[str] | None = Field(
        None, max_length=1000, description="invoke scope only: the functions it may call")
    description: str = Field("", max_length=256)


@dataclass
class TenantRow:
    name: str
    weight: float
    limits: Limits
    created_at: float
    updated_at: float


@dataclass
class KeyRow:
    id: str
    tenant: str
    scope: str
    functions: list[str] | None
    description: str
    secret_hash: str
    created_at: float
    revoked_at: float | None = None


@dataclass
class AuditRow:
    id: int
    at: float
    tenant: str
    key_id: str | None
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key of a tenant with a scope."""

    key_id: str | None  # None only with --insecure-no-auth
    tenant: str
    scope: str
    functions: frozenset[str] | None = None

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]

    def may_call(self, function: str) -> bool:
        return self.functions is None or function in self.functions


def check_tenant_name(name: str) -> str:
    if not TENANT_RE.match(name):
        raise ValueError("a tenant name is 1-63 lowercase letters, digits, '-' or '_',"
                         " starting with a letter or digit")
    return name
