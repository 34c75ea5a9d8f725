"""The platform's wiring on a real in-process platform with real instances: a deleted
function's pool is gone for good, and the events reach their listeners."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from faasbox import errors
from faasbox.codestore import zip_folder
from faasbox.config import Settings
from faasbox.events import FunctionDeleted, InvocationFinished
from faasbox.platform import Platform
from faasbox.spec import FunctionSpec
from faasbox.tenancy.model import KeySpec, Limits, TenantSpec
from faasbox.triggers.cron import TriggerSpec
from tests.conftest import NO_BURST_AHEAD, open_tempdir, write_function

SLOW = {"main.py": """
    import time
    def handler(event, context):
        time.sleep(event.get("sleep", 0))
        return {"ok": True}
"""}


def on_platform(body: Callable[[Platform, Path], Awaitable[None]], **settings: Any) -> None:
    """Run ``body(platform, root)`` on a started in-process platform with its data in a fresh
    ``root``; the platform is closed and ``root`` removed after."""
    root = open_tempdir()

    async def main() -> None:
        p = Platform(Settings(data=root / "data", reap_interval_s=0.1, **settings))
        await p.start()
        try:
            await body(p, root)
        finally:
            await p.close()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_deleted_function_leaves_no_pool_behind() -> None:
    async def main(p: Platform, root: Path) -> None:
        finished: list[str] = []
        deleted: list[str] = []
        p.events.subscribe(InvocationFinished, lambda e: finished.append(e.record.status))
        p.events.subscribe(FunctionDeleted, lambda e: deleted.append(e.function))
        folder = write_function(root / "slow", SLOW)
        await p.registry.deploy("slow", FunctionSpec(handler="main:handler"),
                                zip_folder(folder))
        row = await p.registry.resolve("slow", None)
        running = asyncio.create_task(p.invoker.invoke(row, b'{"sleep": 1.0}'))
        while [i["state"] for i in p.instances.describe("slow")] != ["busy"]:
            await asyncio.sleep(0.02)  # running the call, not starting
        await p.registry.delete("slow")  # while the call runs
        assert deleted == ["slow"]
        assert "slow" not in p.instances.pools
        with pytest.raises(errors.InvocationError):
            await running  # its instance was stopped with the pool
        await p.scaling.tick()
        assert "slow" not in p.instances.pools  # the release did not make a ghost pool
        assert finished == ["failed"]

    on_platform(main, acquire_timeout_s=5, keepalive_args=NO_BURST_AHEAD)


def test_trigger_and_pool_go_with_their_function() -> None:
    async def main(p: Platform, root: Path) -> None:
        folder = write_function(root / "f", SLOW)
        await p.registry.deploy("f", FunctionSpec(handler="main:handler", min_instances=1),
                                zip_folder(folder))
        await p.triggers.put("f", "nightly", TriggerSpec(cron="0 2 * * *"),
                             create_only=True)
        await p.scaling.tick()
        assert "f" in p.instances.pools
        await p.registry.delete("f")
        assert p.triggers.list("f") == []
        assert await p.trigger_store.list_triggers("f") == []
        assert "f" not in p.instances.pools

    on_platform(main)


def test_a_reserved_start_counts_against_the_tenants_memory_before_it_begins() -> None:
    """A waiter's cold start runs in a task of its own, after its room was reserved: two
    reservations made before either start begins must not both fit a tenant with room for
    one (else pumping several functions' waiters at once overran max_memory_mb)."""

    async def main(p: Platform, root: Path) -> None:
        await p.tenancy.create_tenant(
            TenantSpec(name="team", limits=Limits(max_memory_mb=256)), None)
        folder = write_function(root / "f", SLOW)
        rows = []
        for name in ("team/a", "team/b"):
            await p.registry.deploy(name, FunctionSpec(handler="main:handler",
                                                       memory_mb=192), zip_folder(folder))
            rows.append(await p.registry.resolve(name, None))
        pools = [p.instances.pool(r.function) for r in rows]
        first = p.instances.make_room(pools[0], rows[0])
        assert first is not None and p.instances.tenant_mb("team") == 192
        assert p.instances.make_room(pools[1], rows[1]) is None  # 384 > 256
        assert p.instances.reserve_free(pools[1], rows[1]) is None
        inst = await p.instances.start(pools[0], rows[0], first)  # the reservation's own
        assert (p.instances.memory["team"], p.instances.reserved["team"]) == (192, 0)
        p.instances.retire(pools[0], inst)
        assert p.instances.tenant_mb("team") == 0
        second = p.instances.make_room(pools[1], rows[1])
        assert second is not None
        p.instances.retire(pools[1], await p.instances.start(pools[1], rows[1], second))

    on_platform(main, keepalive_args=NO_BURST_AHEAD)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_reload_racing_a_revocation_does_not_bring_the_key_back(
        backend: str, request: pytest.FixtureRequest) -> None:
    """The server reloads tenants and keys from the store (every few seconds, and when
    another server changes them). A reload that read the store before a revocation was written
    must not put the revoked key back."""
    store = {} if backend == "sqlite" else {"store_url": request.getfixturevalue("pg_url")}

    async def main(p: Platform, root: Path) -> None:
        tenancy = p.tenancy
        await tenancy.create_tenant(TenantSpec(name="team"), None)
        for _ in range(20):
            row, key = await tenancy.create_key("team", KeySpec(scope="developer"), None)
            assert tenancy.authenticate(key) is not None
            await asyncio.gather(tenancy.revoke_key("team", row.id, None), tenancy.load())
            assert tenancy.authenticate(key) is None
            await tenancy.load()
            assert tenancy.authenticate(key) is None

    on_platform(main, **store)
