"""The store contract.

A store keeps functions, their immutable versions and invocation records. Every backend
(``sqlite`` now, ``postgres`` later) gives the same guarantees:

- A method that returns has committed what it wrote (durable per the backend's sync mode).
- ``put_version`` is atomic: the version number it returns is unique for the function and
  ``latest_version`` points at it once the call returns.
- ``record_invocation`` does not wait for its commit; any read issued after it sees it
  (read-your-writes within one store object). It returns an awaitable of the commit, for a
  caller that must not report a call before its record is kept. ``close`` flushes pending
  writes.
- A write the store cannot make (its disk is full, its database unreachable) raises
  :class:`~faasbox.errors.StoreUnavailable` (503 ``store_unavailable``).
- Writes issued concurrently are grouped into one transaction (group commit) where the
  backend can; each write still fails or succeeds on its own.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from faasbox.spec import FunctionSpec


@dataclass(frozen=True)
class FunctionRow:
    name: str
    created_at: float
    updated_at: float
    latest_version: int


@dataclass(frozen=True)
class VersionRow:
    function: str
    version: int
    created_at: float
    code_sha: str
    packages_key: str | None
    spec: FunctionSpec


@dataclass
class InvocationRecord:
    id: str
    function: str
    version: int
    trigger: str
    started_at: float
    duration_ms: float
    billed_ms: int
    memory_mb: int
    gb_s: float
    cold_start: bool
    init_ms: float | None
    status: str
    error_code: str | None = None
    error_message: str | None = None
    peak_rss_mb: float | None = None
    logs: str = ""
    instance_id: str | None = None
    task_id: str | None = None
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Store(abc.ABC):
    @property
    def shared(self) -> bool:
        """Whether several servers use this store (then code packages live in it too)."""
        return False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def put_code(self, sha: str, data: bytes, now: float) -> None:
        """Keep a code package (a zip whose tree hashes to ``sha``), once per ``sha``."""

    @abc.abstractmethod
    async def get_code(self, sha: str) -> bytes | None:
        """The code package kept for ``sha``, or None."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and disconnect."""

    # functions and versions
    @abc.abstractmethod
    async def put_version(
        self, function: str, spec: FunctionSpec, code_sha: str, packages_key: str | None,
        now: float,
    ) -> VersionRow:
        """Create the function if new, add the next version and point latest at it."""

    @abc.abstractmethod
    async def get_function(self, name: str) -> FunctionRow | None: ...

    @abc.abstractmethod
    async def list_functions(self, tenant: str | None = None) -> list[FunctionRow]:
        """Every function (qualified names), or those of one tenant, by name."""

    @abc.abstractmethod
    async def get_version(self, function: str, version: int) -> VersionRow | None: ...

    @abc.abstractmethod
    async def list_versions(self, function: str) -> list[VersionRow]: ...

    @abc.abstractmethod
    async def purge_tenant(self, tenant: str) -> None:
        """Delete everything left under a deleted tenant's names: invocation records, tasks,
        jobs, triggers, task policies, versions."""

    @abc.abstractmethod
    async def delete_function(self, name: str) -> bool:
        """Remove a function and its versions; invocation records stay. False if unknown."""

    # invocation records
    @abc.abstractmethod
    def record_invocation(self, record: InvocationRecord) -> Awaitable[None]:
        """Queue a record for the next group commit (does not wait)."""

    @abc.abstractmethod
    async def get_invocation(self, invocation_id: str) -> InvocationRecord | None: ...

    @abc.abstractmethod
    async def list_invocations(
        self, function: str | None = None, limit: int = 50, before: float | None = None,
        tenant: str | None = None,
    ) -> list[InvocationRecord]:
        """Newest first; ``before`` is a started_at cursor (exclusive); ``tenant`` keeps
        one tenant's records."""

    @abc.abstractmethod
    async def list_invocations_since(
        self, function: str | None, since: float, limit: int = 100, tenant: str | None = None,
    ) -> list[InvocationRecord]:
        """Records started after ``since``, oldest first (for following logs)."""

    @abc.abstractmethod
    async def list_invocations_by_trace(
        self, trace_id: str, limit: int = 1000,
    ) -> list[InvocationRecord]:
        """Records of one trace, oldest first."""
