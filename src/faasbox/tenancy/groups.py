"""Service groups: named pools of dedicated capacity owned by a tenant.

A group has ``memory_mb`` carved out of the node when it is created (nothing outside the group
may use it), an optional CPU limit (``cpus``), ``max_instances`` over all its functions and a
warm floor (``min_instances``, raised during ``schedule`` windows and before the known fires of
its functions' cron triggers). A function joins one with ``service_group`` in its spec and then
runs only inside it. On a node whose cgroups are writable the group is a parent cgroup holding
the memory and CPU limits, with the instances' cgroups as its children.

This module holds the group's spec and the :class:`ServiceGroups` service (create, change,
delete, with the audit log); the capacity itself lives in the instance pools
(:mod:`faasbox.scheduler.instances`), the warm floor in :mod:`faasbox.scheduler.groups`, the
cgroup in :mod:`faasbox.node.environment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faasbox import errors
from faasbox.clock import Clock
from faasbox.node.environment import group_cgroup_name
from faasbox.spec import NAME_RE, FunctionSpec, as_spec, validation_text
from faasbox.store.tenancy import TenancyStore
from faasbox.tenancy.model import Principal
from faasbox.tenancy.names import display, qualify, tenant_of
from faasbox.tenancy.service import Tenancy
from faasbox.triggers.cron import Schedule

if TYPE_CHECKING:
    from faasbox.node import NodeService
    from faasbox.registry import Registry
    from faasbox.scheduler.instances import InstancePools

log = logging.getLogger(__name__)

STOP_WAIT_S = 10.0  # a deleted group's cgroup goes once its instances are stopped


@lru_cache(maxsize=256)
def _schedule(cron: str, timezone: str) -> Schedule:
    return Schedule(cron, timezone)


class GroupWindow(BaseModel):
    """Extra warm instances for ``duration_s`` from each time ``cron`` fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(description="when each window opens: 5 fields, or 6 with seconds first")
    duration_s: float = Field(gt=0, le=7 * 86400, description="how long each window lasts")
    instances: int = Field(ge=1, le=1000, description="warm instances added to min_instances")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression")

    @model_validator(mode="after")
    def _cron(self) -> GroupWindow:
        _schedule(self.cron, self.timezone)  # ValueError names the problem
        return self

    def open_at(self, now: float) -> bool:
        """Whether a window is open at ``now`` (epoch seconds): it opened within the last
        ``duration_s``."""
        return _schedule(self.cron, self.timezone).after(now - self.duration_s) <= now

    def next_open(self, now: float) -> float:
        return _schedule(self.cron, self.timezone).after(now)


class ServiceGroupSpec(BaseModel):
    """``POST /v1/service-groups``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="1-63 lowercase letters, digits, '-' or '_'")
    memory_mb: int = Field(ge=128, le=100_000_000, description="memory carved out of the node"
                           " for the group's instances, and the group cgroup's memory limit")
    cpus: float | None = Field(None, gt=0, le=4096, description="CPU limit of the group's"
                               " cgroup in cores (none: no limit)")
    min_instances: int = Field(0, ge=0, le=1000, description="instances kept warm, spread"
                               " over the group's functions (most recently used first)")
    max_instances: int = Field(10, ge=1, le=1000, description="instances of all the group's"
                               " functions together")
    schedule: list[GroupWindow] = Field(
        default_factory=list, max_length=32,
        description="cron windows of extra warm capacity")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("a service group name is 1-63 lowercase letters, digits, '-' or"
                             " '_', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _counts(self) -> ServiceGroupSpec:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances cannot exceed max_instances")
        return self


class ServiceGroupPatch(BaseModel):
    """``PATCH /v1/service-groups/{group}``: the fields given change (``cpus: null`` removes
    the CPU limit; ``schedule`` is replaced whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int | None = None
    cpus: float | None = None
    min_instances: int | None = None
    max_instances: int | None = None
    schedule: list[dict[str, Any]] | None = None


@dataclass
class ServiceGroupRow:
    tenant: str
    spec: ServiceGroupSpec
    created_at: float
    updated_at: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        return qualify(self.tenant, self.spec.name)


def group_key(function: str, spec: FunctionSpec) -> str | None:
    """The qualified name of the group a function version runs in (None: none)."""
    return None if spec.service_group is None else qualify(tenant_of(function),
                                                           spec.service_group)


class ServiceGroups:
    """The tenants' service groups: kept in memory, persisted in the tenancy store, placed on
    the node (memory carved out, cgroup made) when created or loaded."""

    def __init__(self, store: TenancyStore, tenancy: Tenancy, registry: Registry,
                 instances: InstancePools, node: NodeService, clock: Clock) -> None:
        self.store = store
        self.tenancy = tenancy
        self.registry = registry
        self.instances = instances
        self.node = node
        self.clock = clock
        self.groups: dict[str, ServiceGroupRow] = {}
        self.isolation: dict[str, str] = {}  # key -> what the node enforces
        self.problems: dict[str, str] = {}  # key -> why it could not be placed at start

    async def load(self) -> None:
        """Place every stored group (at start). One that no longer fits (the node's memory
        setting shrank) is kept and reported; its functions cannot start until it fits."""
        for row in await self.store.list_groups():
            self.groups[row.key] = row
            try:
                self.instances.add_group(row.key, row.spec)
            except errors.FaasboxError as exc:
                self.problems[row.key] = exc.message
                log.error("service group %s cannot be placed: %s", row.key, exc.message)
            self.isolation[row.key] = self.node.env.ensure_group(row.tenant, row.spec)

    # -- reading ----------------------------------------------------------------------------
    def get(self, tenant: str, name: str) -> ServiceGroupRow:
        row = self.groups.get(qualify(tenant, name))
        if row is None:
            raise errors.ServiceGroupNotFound(f"no service group {name!r}")
        return row

    def of_tenant(self, tenant: str) -> list[ServiceGroupRow]:
        return sorted((r for r in self.groups.values() if r.tenant == tenant),
                      key=lambda r: r.name)

    async def functions_in(self, key: str) -> list[tuple[str, FunctionSpec]]:
        """``(function, latest spec)`` of every function whose latest version is in the
        group ``key``."""
        found = []
        for fn in await self.registry.functions(tenant_of(key)):
            try:
                spec = as_spec((await self.registry.resolve(fn.name, None)).spec)
            except errors.NotFound:
                continue  # deleted meanwhile
            if group_key(fn.name, spec) == key:
                found.append((fn.name, spec))
        return found

    def view(self, row: ServiceGroupRow) -> dict[str, Any]:
        """A group as listed: its spec, usage now and what the node enforces."""
        view: dict[str, Any] = {
            **row.spec.model_dump(), "tenant": row.tenant,
            "usage": self.instances.group_usage(row.key),
            "isolation": self.isolation.get(row.key, "none"),
            "created_at": row.created_at, "updated_at": row.updated_at}
        if row.key in self.problems:
            view["problem"] = self.problems[row.key]
        return view

    async def describe(self, row: ServiceGroupRow, admin: bool) -> dict[str, Any]:
        """A group in full: also its functions, its warm floor now, the upcoming fires of its
        functions' cron triggers and its schedule windows (and its cgroup, for an admin)."""
        now = self.clock.now()
        view = self.view(row)
        functions = sorted(f for f, _ in await self.functions_in(row.key))
        fires: list[dict[str, Any]] = []
        for function in functions:
            pool = self.instances.pools.get(function)
            if pool is not None:
                fires += [{"function": display(function), "at": f.at, "instances": f.instances}
                          for f in pool.planner.fires if f.at > now]
        group = self.instances.groups.get(row.key)
        view.update({
            "functions": [display(f) for f in functions],
            "warm_floor": {"now": group.floor if group else 0,
                           "base": group.base_floor if group else 0},
            "next_fires": sorted(fires, key=lambda f: f["at"])[:10],
            "windows": [{"cron": w.cron, "open": w.open_at(now), "next_open": w.next_open(now)}
                        for w in row.spec.schedule],
        })
        if admin:
            cg = self.node.env.group_cgroup(row.tenant, row.name)
            view["cgroup"] = None if cg is None else {c: str(d) for c, d in cg.dirs.items()}
            cpuset = self.node.env.cpusets.dir_of(group_cgroup_name(row.tenant, row.name))
            if view["cgroup"] is not None and cpuset is not None:
                view["cgroup"]["cpuset"] = str(cpuset)
        return view

    def check_function(self, function: str, spec: FunctionSpec) -> None:
        """A deploy into a group: 422 when the group does not exist in the function's tenant
        or is smaller than one instance."""
        key = group_key(function, spec)
        if key is None:
            return
        row = self.groups.get(key)
        if row is None:
            raise errors.LimitExceeded(
                "service_group_not_found", f"service_group {spec.service_group!r}: the tenant"
                " has no such service group")
        if spec.memory_mb > row.spec.memory_mb:
            raise errors.LimitExceeded(
                "service_group_memory_exceeded", f"memory_mb {spec.memory_mb} is more than"
                f" service group {row.name!r} has ({row.spec.memory_mb} MB)")

    # -- changing ---------------------------------------------------------------------------
    async def create(self, tenant: str, spec: ServiceGroupSpec, by: Principal) -> ServiceGroupRow:
        self.tenancy.get(tenant)
        now = self.clock.now()
        row = ServiceGroupRow(tenant, spec, now, now)
        if row.key in self.groups:
            raise errors.Conflict(f"service group {spec.name!r} already exists")
        self.instances.add_group(row.key, spec)  # 409/422 when the node cannot hold it
        try:
            created = await self.store.create_group(row)
        except BaseException:
            self.instances.remove_group(row.key)
            raise
        if not created:
            self.instances.remove_group(row.key)
            raise errors.Conflict(f"service group {spec.name!r} already exists")
        self.groups[row.key] = row
        self.isolation[row.key] = self.node.env.ensure_group(tenant, spec)
        self.tenancy.record(by, tenant, "service_group.create", spec.name,
                            spec.model_dump(exclude_defaults=True))
        return row

    async def update(self, tenant: str, name: str, patch: ServiceGroupPatch,
                     by: Principal) -> ServiceGroupRow:
        row = self.get(tenant, name)
        changes = patch.model_dump(exclude_unset=True)
        try:
            spec = ServiceGroupSpec.model_validate({**row.spec.model_dump(), **changes})
        except ValidationError as exc:
            raise errors.InvalidSpec(validation_text(exc)) from None
        for function, fspec in await self.functions_in(row.key):
            if fspec.memory_mb > spec.memory_mb:
                raise errors.LimitExceeded(
                    "service_group_memory_exceeded", f"function {display(function)!r} asks"
                    f" {fspec.memory_mb} MB, more than memory_mb {spec.memory_mb}")
        self.instances.update_group(row.key, spec)  # 409 when the memory cannot change now
        new = ServiceGroupRow(tenant, spec, row.created_at, self.clock.now())
        await self.store.update_group(new)
        self.groups[row.key] = new
        self.problems.pop(row.key, None)
        self.isolation[row.key] = self.node.env.ensure_group(tenant, spec)
        self.tenancy.record(by, tenant, "service_group.update", name, changes)
        return new

    async def delete(self, tenant: str, name: str, by: Principal | None) -> None:
        row = self.get(tenant, name)
        users = await self.functions_in(row.key)
        if users:
            names = ", ".join(sorted(display(f) for f, _ in users))
            raise errors.Conflict(f"service group {name!r} is used by functions: {names}"
                                  " (move or delete them first)")
        await self.store.delete_group(tenant, name)
        self.groups.pop(row.key, None)
        self.isolation.pop(row.key, None)
        self.problems.pop(row.key, None)
        stopping = self.instances.remove_group(row.key)  # older versions' instances
        with contextlib.suppress(TimeoutError):  # they are killed: this is quick
            async with asyncio.timeout(STOP_WAIT_S):
                while any(inst.state != "stopped" for inst in stopping):
                    await asyncio.sleep(0.05)
        await self.node.env.remove_group(tenant, name)
        self.tenancy.audit(tenant, by.key_id if by else None, "service_group.delete", name, {})

    async def close(self) -> None:
        """Remove the groups' cgroups (at server stop, once every instance is stopped; the
        next start makes them again)."""
        for row in list(self.groups.values()):
            await self.node.env.remove_group(row.tenant, row.name)

    async def delete_tenant(self, tenant: str, by: Principal | None) -> None:
        """Delete every group of a tenant that is being deleted (it has no functions)."""
        for row in self.of_tenant(tenant):
            await self.delete(tenant, row.name, by)
