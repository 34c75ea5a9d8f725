"""Functions and their immutable versions.

A deploy stores the code (content-addressed), installs its requirements, checks that it loads
in a throwaway instance, and only then records a new version and moves ``latest`` to it. A deploy
whose code, requirements and spec equal the latest version's records nothing: it returns that
version (deploys are idempotent by content). A deploy may give only some spec fields (a patch):
they are merged onto the latest version's spec under the function's deploy lock.
Versions never change, so they are cached; ``latest`` is cached and moved by deploys.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from faasbox import errors
from faasbox.clock import Clock
from faasbox.codestore import CodeStore
from faasbox.events import Events, FunctionDeleted, FunctionDeployed
from faasbox.node import NodeService
from faasbox.spec import FunctionSpec, as_spec, check_name, merge_spec
from faasbox.store import FunctionRow, Store, VersionRow
from faasbox.tenancy.names import display, within

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployed:
    version: VersionRow
    created: bool  # the function is new
    check_ms: float | None
    unchanged: bool = False  # code, requirements and spec equal the latest: no new version


class Registry:
    def __init__(self, store: Store, code: CodeStore, node: NodeService, events: Events,
                 clock: Clock) -> None:
        self.store = store
        self.code = code
        self.node = node
        self.events = events
        self.clock = clock
        self._latest: dict[str, VersionRow] = {}
        self._versions: dict[tuple[str, int], VersionRow] = {}
        self._deploy_locks: dict[str, asyncio.Lock] = {}
        self._fetch_locks: dict[str, asyncio.Lock] = {}

    async def deploy(
        self, name: str, spec: FunctionSpec | dict[str, Any], code_zip: bytes | None,
        check: bool = True,
    ) -> Deployed:
        """Deploy ``spec`` (a whole spec, or a dict of the fields to change on the latest
        version's spec) with ``code_zip`` (None: the latest version's code)."""
        check_name(display(name))
        async with self._deploy_locks.setdefault(name, asyncio.Lock()):
            current = await self.store.get_function(name)
            latest = await self.resolve(name, None) if current is not None else None
            if not isinstance(spec, FunctionSpec):
                if latest is None:
                    raise errors.FunctionNotFound(f"function {display(name)!r} does not exist")
                spec = merge_spec(as_spec(latest.spec), spec)
            await self._check_chain(name, spec)
            cap = self.node.features.ephemeral_cap_mb
            if spec.ephemeral_storage_mb > cap:
                raise errors.InvalidSpec(
                    f"ephemeral_storage_mb {spec.ephemeral_storage_mb} is above this node's"
                    f" cap of {cap} MB (FAASBOX_MAX_EPHEMERAL_STORAGE_MB)")
            if code_zip is not None:
                sha = await self.code.put_zip(code_zip)
                if self.store.shared:  # the other servers fetch it from there
                    await self.store.put_code(sha, code_zip, self.clock.now())
            elif latest is not None:
                sha = latest.code_sha
            else:
                raise errors.InvalidSpec(
                    f"function {display(name)!r} is new: its code is required")
            if latest is not None and self._same(latest, spec, sha):
                return Deployed(latest, False, None, unchanged=True)
            packages = await self.code.install_requirements(sha, spec.source_builds)
            check_ms = await self._load_check(name, spec, sha, packages) if check else None
            row = await self.store.put_version(name, spec, sha, packages, self.clock.now())
            self._remember(row)
            self._latest[name] = row
            await self.events.publish(FunctionDeployed(row))
            log.info("deployed %s version %d (code %s)", name, row.version, sha[:12])
            return Deployed(row, current is None, check_ms)

    async def _check_chain(self, name: str, spec: FunctionSpec) -> None:
        """Refuse an ``on_success`` that leads back to the function (a chain that would run
        forever), naming the cycle."""
        path = [display(name)]
        nxt = spec.on_success
        while nxt:
            target = within(name, nxt)
            if target == name:
                raise errors.InvalidSpec(
                    "on_success makes a cycle: " + " -> ".join([*path, display(name)]))
            if display(target) in path:
                return  # a cycle further on, not through this function
            path.append(display(target))
            try:
                nxt = (await self.resolve(target, None)).spec.on_success
            except errors.NotFound:
                return

    def _same(self, latest: VersionRow, spec: FunctionSpec, sha: str) -> bool:
        """Whether a deploy of ``spec`` and code ``sha`` would repeat ``latest``."""
        return (latest.code_sha == sha
                and latest.packages_key == self.code.requirements_key(sha, spec.source_builds)
                and as_spec(latest.spec).model_dump() == spec.model_dump())

    async def _load_check(
        self, name: str, spec: FunctionSpec, sha: str, packages: str | None,
    ) -> float:
        started = self.clock.monotonic()
        paths = self._paths(sha, packages)
        try:
            inst = await self.node.start(name, 0, spec, paths)
        except errors.InitError as exc:
            # the node's message already says it is about loading, most of the time
            message = (exc.message if "load" in exc.message
                       else f"the function does not load: {exc.message}")
            raise errors.LoadFailed(
                message, type=exc.details.get("type"), traceback=exc.details.get("traceback"),
                output=exc.details.get("output"),
            ) from None
        await self.node.stop(inst)
        return (self.clock.monotonic() - started) * 1000

    def _remember(self, row: VersionRow) -> None:
        self._versions[(row.function, row.version)] = row

    async def resolve(self, name: str, version: str | int | None) -> VersionRow:
        """The version row for ``version`` (a number, ``latest`` or None for latest)."""
        if version is None or version == "latest":
            row = self._latest.get(name)
            if row is not None:
                return row
            fn = await self.store.get_function(name)
            if fn is None:
                raise errors.FunctionNotFound(f"function {display(name)!r} does not exist")
            row = await self._get_version(name, fn.latest_version)
            self._latest[name] = row
            return row
        try:
            number = int(version)
        except ValueError:
            number = 0
        if not 1 <= number < 2**31:
            raise errors.InvalidRequest(
                f"version must be a number from 1 or 'latest', not {str(version)[:40]!r}")
        cached = self._versions.get((name, number))
        if cached is not None and name in self._latest:
            return cached
        if await self.store.get_function(name) is None:
            raise errors.FunctionNotFound(f"function {display(name)!r} does not exist")
        return await self._get_version(name, number)

    async def _get_version(self, name: str, number: int) -> VersionRow:
        row = self._versions.get((name, number))
        if row is None:
            row = await self.store.get_version(name, number)
            if row is None:
                raise errors.VersionNotFound(f"function {display(name)!r} has no version {number}")
            self._remember(row)
        return row

    async def local_paths(self, row: VersionRow) -> list[str]:
        """The version's code and packages folders on this server: fetched from the store
        and built here first when another server took the deploy."""
        if not self.code.code_dir(row.code_sha).exists() or (
                row.packages_key and not self.code.packages_dir(row.packages_key).exists()):
            await self._fetch(row)
        return self.paths(row)

    async def _fetch(self, row: VersionRow) -> None:
        async with self._fetch_locks.setdefault(row.code_sha, asyncio.Lock()):
            if not self.code.code_dir(row.code_sha).exists():
                blob = await self.store.get_code(row.code_sha) if self.store.shared else None
                if blob is None:
                    raise errors.Unavailable(
                        f"the code of {display(row.function)!r} version {row.version} is"
                        " neither on this server nor in the store")
                sha = await self.code.put_zip(blob)
                if sha != row.code_sha:
                    raise errors.Unavailable(
                        f"the stored code of {display(row.function)!r} does not hash to its"
                        f" version's ({sha[:12]} != {row.code_sha[:12]})")
                log.info("fetched the code of %s version %d from the store", row.function,
                         row.version)
            if row.packages_key and not self.code.packages_dir(row.packages_key).exists():
                await self.code.install_requirements(row.code_sha, row.spec.source_builds)

    def paths(self, row: VersionRow) -> list[str]:
        return self._paths(row.code_sha, row.packages_key)

    def _paths(self, sha: str, packages: str | None) -> list[str]:
        paths = [str(self.code.code_dir(sha).resolve())]
        if packages:
            paths.append(str(self.code.packages_dir(packages).resolve()))
        return paths

    async def get(self, name: str) -> FunctionRow:
        fn = await self.store.get_function(name)
        if fn is None:
            raise errors.FunctionNotFound(f"function {display(name)!r} does not exist")
        return fn

    async def functions(self, tenant: str | None = None) -> list[FunctionRow]:
        """Every function, or one tenant's."""
        return await self.store.list_functions(tenant)

    async def versions(self, name: str) -> list[VersionRow]:
        await self.get(name)
        return await self.store.list_versions(name)

    def forget_all(self) -> None:
        self._latest.clear()

    def forget(self, name: str) -> None:
        """Drop what is cached of ``name``'s latest version (another server deployed it)."""
        self._latest.pop(name, None)

    async def delete(self, name: str) -> None:
        """Delete a function; what it owns (triggers, instances, templates) goes with it
        through the :class:`~faasbox.events.FunctionDeleted` event."""
        async with self._deploy_locks.setdefault(name, asyncio.Lock()):
            if not await self.store.delete_function(name):
                raise errors.FunctionNotFound(f"function {display(name)!r} does not exist")
            self._latest.pop(name, None)
            for key in [k for k in self._versions if k[0] == name]:
                del self._versions[key]
            await self.events.publish(FunctionDeleted(name))
