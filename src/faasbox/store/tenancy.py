"""Persistence of tenants, API keys and the audit log: the contract every backend keeps.

- Every method returns once what it wrote is committed.
- ``create_tenant`` and ``create_key`` fail with ``Conflict`` semantics (return False) on an
  existing name or id; ``delete_tenant`` also revokes its keys in the same transaction.
- ``create_group`` returns False on an existing ``(tenant, name)``.
- ``append_audit`` is queued for the next group commit like an invocation record.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from faasbox.tenancy.model import AuditRow, KeyRow, TenantRow

if TYPE_CHECKING:
    from faasbox.tenancy.groups import ServiceGroupRow


class TenancyStore(abc.ABC):
    @abc.abstractmethod
    async def create_tenant(self, row: TenantRow) -> bool: ...

    @abc.abstractmethod
    async def update_tenant(self, row: TenantRow) -> bool: ...

    @abc.abstractmethod
    async def delete_tenant(self, name: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def list_tenants(self) -> list[TenantRow]: ...

    @abc.abstractmethod
    async def create_key(self, row: KeyRow) -> None: ...

    @abc.abstractmethod
    async def revoke_key(self, tenant: str, key_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def list_keys(self, tenant: str | None) -> list[KeyRow]:
        """Keys not revoked (of one tenant, or all)."""

    @abc.abstractmethod
    async def create_group(self, row: ServiceGroupRow) -> bool: ...

    @abc.abstractmethod
    async def update_group(self, row: ServiceGroupRow) -> bool: ...

    @abc.abstractmethod
    async def delete_group(self, tenant: str, name: str) -> bool: ...

    @abc.abstractmethod
    async def list_groups(self) -> list[ServiceGroupRow]: ...

    @abc.abstractmethod
    def append_audit(self, row: AuditRow) -> None: ...

    @abc.abstractmethod
    async def list_audit(self, tenant: str | None, limit: int,
                         before: int | None) -> list[AuditRow]:
        """Newest first; ``before`` is an id cursor (exclusive)."""
