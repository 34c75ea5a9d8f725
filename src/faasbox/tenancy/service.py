"""Tenants, API keys and the audit log (the Tenancy service).

Tenants and live keys are held in memory (loaded at start, changed through this service), so
authenticating a request is a dictionary lookup and a constant-time hash compare. A revoked
key is gone from memory when the revocation commits: the next request with it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from faasbox import errors
from faasbox.clock import Clock
from faasbox.events import ControlChanged, Events
from faasbox.store.tenancy import TenancyStore
from faasbox.tenancy import keys
from faasbox.tenancy.model import (
    AuditRow,
    EffectiveLimits,
    KeyRow,
    KeySpec,
    Limits,
    Principal,
    TenantPatch,
    TenantRow,
    TenantSpec,
)
from faasbox.tenancy.names import DEFAULT_TENANT

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin.key"


class Tenancy:
    def __init__(self, store: TenancyStore, defaults: EffectiveLimits, clock: Clock,
                 events: Events | None = None) -> None:
        self.store = store
        self.events = events
        self.defaults = defaults
        self.clock = clock
        self.tenants: dict[str, TenantRow] = {}
        self._keys: dict[str, KeyRow] = {}
        self._limits: dict[str, EffectiveLimits] = {}
        # a reload and a change made here take turns: a reload that read the store before a
        # revocation was written would otherwise bring the revoked key back until the next
        self._turn = asyncio.Lock()

    async def load(self) -> None:
        async with self._turn:
            tenants = {t.name: t for t in await self.store.list_tenants()}
            self._keys = {k.id: k for k in await self.store.list_keys(None)}
            self.tenants = tenants
            self._limits.clear()

    async def bootstrap(self, data: Path) -> Path:
        """Make sure ``<data>/admin.key`` holds a live admin key of the default tenant
        (a new one on first start, or when the file is gone or its key was revoked)."""
        path = data / ADMIN_KEY_FILE
        if DEFAULT_TENANT not in self.tenants:
            try:
                await self.create_tenant(TenantSpec(name=DEFAULT_TENANT), None)
            except errors.Conflict:  # another server on the store made it meanwhile
                await self.load()
        try:
            current = path.read_text().strip()
        except FileNotFoundError:
            current = ""
        if current and self.authenticate(current) is not None:
            return path
        key_id, key, _ = await self._new_key(DEFAULT_TENANT, KeySpec(
            scope="admin", description="created at first start"))
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        path.chmod(0o600)
        self.audit(DEFAULT_TENANT, None, "key.create", key_id, {"scope": "admin"})
        return path

    # -- authentication ---------------------------------------------------------------------
    def authenticate(self, token: str) -> Principal | None:
        parsed = keys.parse(token)
        if parsed is None:
            return None
        row = self._keys.get(parsed[0])
        if row is None or row.revoked_at is not None or not keys.matches(parsed[1],
                                                                          row.secret_hash):
            return None
        return Principal(row.id, row.tenant, row.scope,
                         None if row.functions is None else frozenset(row.functions))

    # -- tenants ----------------------------------------------------------------------------
    def get(self, name: str) -> TenantRow:
        row = self.tenants.get(name)
        if row is None:
            raise errors.NotFound(f"no tenant {name!r}")
        return row

    def limits(self, tenant: str) -> EffectiveLimits:
        cached = self._limits.get(tenant)
        if cached is None:
            row = self.tenants.get(tenant)
            cached = self.defaults if row is None else self.defaults.merged(row.limits)
            self._limits[tenant] = cached
        return cached

    def weight(self, tenant: str) -> float:
        row = self.tenants.get(tenant)
        return row.weight if row is not None else 1.0

    async def create_tenant(self, spec: TenantSpec, by: Principal | None) -> TenantRow:
        now = self.clock.now()
        row = TenantRow(spec.name, spec.weight, spec.limits, now, now)
        async with self._turn:
            if not await self.store.create_tenant(row):
                raise errors.Conflict(f"tenant {spec.name!r} already exists")
            self.tenants[row.name] = row
            self._limits.pop(row.name, None)
        self._audit_by(by, row.name, "tenant.create", row.name,
                       {"weight": row.weight, "limits": spec.limits.model_dump(
                           exclude_none=True)})
        return row

    async def update_tenant(self, name: str, patch: TenantPatch,
                            by: Principal | None) -> TenantRow:
        row = self.get(name)
        limits = row.limits
        if patch.limits is not None:
            try:
                limits = Limits.model_validate({**row.limits.model_dump(exclude_none=True),
                                                **patch.limits})
            except ValueError as exc:
                raise errors.InvalidSpec(f"limits: {exc}") from None
        new = TenantRow(name, patch.weight if patch.weight is not None else row.weight,
                        limits, row.created_at, self.clock.now())
        async with self._turn:
            await self.store.update_tenant(new)
            self.tenants[name] = new
            self._limits.pop(name, None)
        self._audit_by(by, name, "tenant.update", name,
                       patch.model_dump(exclude_none=True))
        return new

    async def delete_tenant(self, name: str, by: Principal | None) -> None:
        if name == DEFAULT_TENANT:
            raise errors.Conflict("the default tenant cannot be deleted")
        self.get(name)
        async with self._turn:
            if not await self.store.delete_tenant(name, self.clock.now()):
                raise errors.NotFound(f"no tenant {name!r}")
            self.tenants.pop(name, None)
            self._limits.pop(name, None)
            for key_id in [k for k, row in self._keys.items() if row.tenant == name]:
                del self._keys[key_id]
        self._audit_by(by, name, "tenant.delete", name, {})

    # -- keys -------------------------------------------------------------------------------
    async def create_key(self, tenant: str, spec: KeySpec,
                         by: Principal | None) -> tuple[KeyRow, str]:
        self.get(tenant)
        if spec.functions is not None and spec.scope != "invoke":
            raise errors.InvalidSpec("functions can only be given for an invoke key")
        key_id, key, _ = await self._new_key(tenant, spec)
        self._audit_by(by, tenant, "key.create", key_id, {"scope": spec.scope,
                                                          "functions": spec.functions})
        return self._keys[key_id], key

    async def _new_key(self, tenant: str, spec: KeySpec) -> tuple[str, str, KeyRow]:
        key_id, key, secret_hash = keys.new_key()
        row = KeyRow(key_id, tenant, spec.scope, spec.functions, spec.description,
                     secret_hash, self.clock.now())
        async with self._turn:
            await self.store.create_key(row)
            self._keys[key_id] = row
        return key_id, key, row

    def list_keys(self, tenant: str) -> list[KeyRow]:
        self.get(tenant)
        return sorted((k for k in self._keys.values() if k.tenant == tenant),
                      key=lambda k: k.created_at)

    async def revoke_key(self, tenant: str, key_id: str, by: Principal | None) -> None:
        row = self._keys.get(key_id)
        if row is None or row.tenant != tenant:
            raise errors.NotFound(f"tenant {tenant!r} has no key {key_id!r}")
        self._keys.pop(key_id, None)  # refused from the next request on
        async with self._turn:
            self._keys.pop(key_id, None)  # a reload that read the store before may be back
            await self.store.revoke_key(tenant, key_id, self.clock.now())
        self._audit_by(by, tenant, "key.revoke", key_id, {})

    # -- audit ------------------------------------------------------------------------------
    def audit(self, tenant: str, key_id: str | None, action: str, target: str,
              detail: dict[str, Any]) -> None:
        self.store.append_audit(AuditRow(0, self.clock.now(), tenant, key_id, action, target,
                                         detail))
        if self.events is not None:
            self.events.emit(ControlChanged(tenant, action, target))

    def _audit_by(self, by: Principal | None, tenant: str, action: str, target: str,
                  detail: dict[str, Any]) -> None:
        self.audit(tenant, by.key_id if by else None, action, target, detail)

    def record(self, by: Principal, tenant: str, action: str, target: str,
               detail: dict[str, Any] | None = None) -> None:
        """A control-plane change made through the API."""
        self.audit(tenant, by.key_id, action, target, detail or {})
