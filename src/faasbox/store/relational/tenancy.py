"""Tenants, API keys and the audit log on the embedded SQLite store (see
:mod:`faasbox.store.tenancy`)."""

from __future__ import annotations

import orjson

from faasbox.store.database import Conn, Row
from faasbox.store.relational.functions import SqlStore
from faasbox.store.tenancy import TenancyStore
from faasbox.tenancy.groups import ServiceGroupRow, ServiceGroupSpec
from faasbox.tenancy.model import AuditRow, KeyRow, Limits, TenantRow

_KEY_COLUMNS = "id, tenant, scope, functions, description, secret_hash, created_at, revoked_at"


def _tenant(r: Row) -> TenantRow:
    return TenantRow(r[0], r[1], Limits.model_validate_json(r[2]), r[3], r[4])


def _key(r: Row) -> KeyRow:
    return KeyRow(r[0], r[1], r[2], orjson.loads(r[3]) if r[3] is not None else None,
                  r[4], r[5], r[6], r[7])


class SqlTenancyStore(TenancyStore):
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    async def create_tenant(self, row: TenantRow) -> bool:
        args = (row.name, row.weight, row.limits.model_dump_json(exclude_none=True),
                row.created_at, row.updated_at)

        def tx(conn: Conn) -> bool:
            return conn.execute(
                "INSERT INTO tenants (name, weight, limits, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING", args).rowcount > 0

        return await self.store.write(tx)

    async def update_tenant(self, row: TenantRow) -> bool:
        args = (row.weight, row.limits.model_dump_json(exclude_none=True), row.updated_at,
                row.name)

        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE tenants SET weight = ?, limits = ?, updated_at = ? WHERE name = ?",
                args).rowcount > 0

        return await self.store.write(tx)

    async def delete_tenant(self, name: str, now: float) -> bool:
        def tx(conn: Conn) -> bool:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE tenant = ?"
                         " AND revoked_at IS NULL", (now, name))
            return conn.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount > 0

        return await self.store.write(tx)

    async def list_tenants(self) -> list[TenantRow]:
        def q(conn: Conn) -> list[TenantRow]:
            return [_tenant(r) for r in conn.execute(
                "SELECT name, weight, limits, created_at, updated_at FROM tenants"
                " ORDER BY name")]

        return await self.store.read(q)

    async def create_key(self, row: KeyRow) -> None:
        args = (row.id, row.tenant, row.scope,
                None if row.functions is None else orjson.dumps(row.functions).decode(),
                row.description, row.secret_hash, row.created_at, row.revoked_at)

        def tx(conn: Conn) -> None:
            conn.execute(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES"
                         " (?, ?, ?, ?, ?, ?, ?, ?)", args)

        await self.store.write(tx)

    async def revoke_key(self, tenant: str, key_id: str, now: float) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND tenant = ?"
                " AND revoked_at IS NULL", (now, key_id, tenant)).rowcount > 0

        return await self.store.write(tx)

    async def list_keys(self, tenant: str | None) -> list[KeyRow]:
        def q(conn: Conn) -> list[KeyRow]:
            sql = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
            args: tuple[str, ...] = ()
            if tenant is not None:
                sql += " AND tenant = ?"
                args = (tenant,)
            return [_key(r) for r in conn.execute(sql + " ORDER BY created_at", args)]

        return await self.store.read(q)

    async def create_group(self, row: ServiceGroupRow) -> bool:
        args = (row.tenant, row.name, row.spec.model_dump_json(), row.created_at,
                row.updated_at)

        def tx(conn: Conn) -> bool:
            return conn.execute(
                "INSERT INTO service_groups (tenant, name, spec, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, name) DO NOTHING",
                args).rowcount > 0

        return await self.store.write(tx)

    async def update_group(self, row: ServiceGroupRow) -> bool:
        args = (row.spec.model_dump_json(), row.updated_at, row.tenant, row.name)

        def tx(conn: Conn) -> bool:
            return conn.execute(
                "UPDATE service_groups SET spec = ?, updated_at = ? WHERE tenant = ?"
                " AND name = ?", args).rowcount > 0

        return await self.store.write(tx)

    async def delete_group(self, tenant: str, name: str) -> bool:
        def tx(conn: Conn) -> bool:
            return conn.execute("DELETE FROM service_groups WHERE tenant = ? AND name = ?",
                                (tenant, name)).rowcount > 0

        return await self.store.write(tx)

    async def list_groups(self) -> list[ServiceGroupRow]:
        def q(conn: Conn) -> list[ServiceGroupRow]:
            return [ServiceGroupRow(r[0], ServiceGroupSpec.model_validate_json(r[1]), r[2], r[3])
                    for r in conn.execute(
                        "SELECT tenant, spec, created_at, updated_at FROM service_groups"
                        " ORDER BY tenant, name")]

        return await self.store.read(q)

    def append_audit(self, row: AuditRow) -> None:
        args = (row.at, row.tenant, row.key_id, row.action, row.target,
                orjson.dumps(row.detail).decode())

        def tx(conn: Conn) -> None:
            conn.execute("INSERT INTO audit (at, tenant, key_id, action, target, detail)"
                         " VALUES (?, ?, ?, ?, ?, ?)", args)

        self.store.write_later(tx)

    async def list_audit(self, tenant: str | None, limit: int,
                         before: int | None) -> list[AuditRow]:
        def q(conn: Conn) -> list[AuditRow]:
            where: list[str] = []
            args: list[object] = []
            if tenant is not None:
                where.append("tenant = ?")
                args.append(tenant)
            if before is not None:
                where.append("id < ?")
                args.append(before)
            sql = "SELECT id, at, tenant, key_id, action, target, detail FROM audit"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
            return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]))
                    for r in rows]

        return await self.store.read(q)
