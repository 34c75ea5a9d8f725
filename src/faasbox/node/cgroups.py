"""Cgroups of instances, templates, builds and service groups: made, limited, killed and
removed (one directory per v1 controller, or one v2 directory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from faasbox.node.sandbox import CGROUP_REMOVE_WAIT_S, CPU_PERIOD_US, PIDS_MAX, SandboxFeatures
from faasbox.node.zygote import in_thread

log = logging.getLogger(__name__)


class Cgroup:
    """One instance's cgroup (one directory per v1 controller, or one v2 directory)."""

    def __init__(self, feats: SandboxFeatures, name: str) -> None:
        self.version = feats.cgroup_version
        self.dirs: dict[str, Path] = {c: p / name for c, p in feats.cgroup_dirs.items()}
        self.join: tuple[Path, ...] = ()  # more cgroups its processes enter (a group's cpuset)

    def create(self, memory_mb: int) -> None:
        for d in set(self.dirs.values()):
            if self.version == 2 and not d.parent.is_dir():
                d.parent.mkdir(parents=True)
                for c in self.dirs:  # a v2 scope must pass its controllers down
                    with contextlib.suppress(OSError):
                        (d.parent / "cgroup.subtree_control").write_text(f"+{c}")
            d.mkdir(parents=True, exist_ok=True)
        limit = memory_mb * 2**20
        if self.version == 2:
            self._write("memory", "memory.max", str(limit))
            self._write("memory", "memory.swap.max", "0")
            self._write("cpu", "cpu.weight", str(max(1, min(10000, memory_mb * 100 // 1024))))
            self._write("pids", "pids.max", str(PIDS_MAX))
        else:
            self._write("memory", "memory.limit_in_bytes", str(limit))
            self._write("memory", "memory.memsw.limit_in_bytes", str(limit))
            self._write("memory", "memory.swappiness", "0")
            self._write("cpu", "cpu.shares", str(max(2, memory_mb)))
            self._write("pids", "pids.max", str(PIDS_MAX))

    def create_parent(self, memory_mb: int, cpus: float | None) -> None:
        """Make this cgroup a parent of instance cgroups (a service group's) with the limits
        its children share: ``memory_mb`` without swap and, with ``cpus``, a CPU quota of that
        many cores (no quota without). Idempotent: a second call sets the new limits."""
        for d in set(self.dirs.values()):
            d.mkdir(parents=True, exist_ok=True)
            if self.version == 2:  # the scope and the group pass their controllers down
                for level in (d.parent, d):
                    for c in self.dirs:
                        with contextlib.suppress(OSError):
                            (level / "cgroup.subtree_control").write_text(f"+{c}")
        limit = memory_mb * 2**20
        quota = None if cpus is None else max(1000, round(cpus * CPU_PERIOD_US))
        if self.version == 2:
            self._write("memory", "memory.max", str(limit))
            self._write("memory", "memory.swap.max", "0")
            self._write("cpu", "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
        else:
            # memsw must stay >= the limit: growing needs memsw first, shrinking the limit
            self._write("memory", "memory.limit_in_bytes", str(limit))
            self._write("memory", "memory.memsw.limit_in_bytes", str(limit))
            self._write("memory", "memory.limit_in_bytes", str(limit))
            self._write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
            self._write("cpu", "cpu.cfs_quota_us", str(quota or -1))

    def raise_memory(self, memory_mb: int) -> None:
        """Raise the memory limit to ``memory_mb`` (v1: the memory+swap limit first, which
        must stay at or above the memory limit)."""
        limit = str(memory_mb * 2**20)
        if self.version == 2:
            self._write("memory", "memory.max", limit)
        else:
            self._write("memory", "memory.memsw.limit_in_bytes", limit)
            self._write("memory", "memory.limit_in_bytes", limit)

    def limits(self) -> tuple[int | None, float | None]:
        """``(memory MB, cpus)`` the kernel holds for this cgroup (None: no limit, or it
        cannot be read)."""
        memory: int | None = None
        cpus: float | None = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            raw = (self.dirs["memory"] / name).read_text().strip()
            if raw != "max" and int(raw) < 2**60:
                memory = int(raw) // 2**20
        with contextlib.suppress(OSError, ValueError, KeyError):
            d = self.dirs["cpu"]
            if self.version == 2:
                quota, period = (d / "cpu.max").read_text().split()
            else:
                quota = (d / "cpu.cfs_quota_us").read_text().strip()
                period = (d / "cpu.cfs_period_us").read_text().strip()
            if quota not in ("max", "-1"):
                cpus = int(quota) / int(period)
        return memory, cpus

    def children(self) -> list[str]:
        """Names of the cgroups below this one."""
        names: set[str] = set()
        for d in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                names.update(c.name for c in d.iterdir() if c.is_dir())
        return sorted(names)

    def _write(self, controller: str, name: str, value: str) -> None:
        d = self.dirs.get(controller)
        if d is None:
            return
        try:
            (d / name).write_text(value)
        except OSError as exc:  # optional knobs (memsw, swap) may be missing
            log.debug("cgroup %s: cannot set %s: %s", d, name, exc)

    def add(self, pid: int) -> None:
        for d in (*set(self.dirs.values()), *self.join):
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """The processes in this cgroup (none if it cannot be read)."""
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                return [int(p) for p in (d / "cgroup.procs").read_text().split()]
        return []

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            return False
        return False

    def kill_all(self) -> None:
        """SIGKILL every process in the group, including any it forked meanwhile: v2 writes
        ``cgroup.kill``; v1 freezes the group first (when the freezer is mounted), so that
        nothing can fork while the pids are read and killed, then thaws it to let them die."""
        if self.version == 2:
            for d in set(self.dirs.values()):
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
                    return
        freezer = self.dirs.get("freezer")
        frozen = False
        if freezer is not None:
            with contextlib.suppress(OSError):
                (freezer / "freezer.state").write_text("FROZEN")
                frozen = True
                deadline = time.monotonic() + 0.1
                while ((freezer / "freezer.state").read_text().strip() != "FROZEN"
                       and time.monotonic() < deadline):
                    time.sleep(0.001)
        try:
            for d in set(self.dirs.values()):
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        finally:
            if frozen and freezer is not None:
                with contextlib.suppress(OSError):
                    (freezer / "freezer.state").write_text("THAWED")

    def empty(self) -> bool:
        for d in set(self.dirs.values()):
            try:
                if (d / "cgroup.procs").read_text().strip():
                    return False
            except OSError:
                continue
        return True

    def remove(self) -> bool:
        """Remove the group's directories; False if some could not be (still has tasks)."""
        done = True
        for d in set(self.dirs.values()):
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                done = False
        return done

    async def destroy(self) -> None:
        """Kill everything in the group and remove it once the last task has exited (killed
        tasks take a moment to leave); what still cannot be removed is logged. The kills run
        off the event loop (a v1 kill waits for the group to freeze)."""
        await in_thread(self.kill_all)
        deadline = time.monotonic() + CGROUP_REMOVE_WAIT_S
        while not self.remove():
            if time.monotonic() > deadline:
                log.warning("cgroup %s still has tasks; left behind",
                            next(iter(self.dirs.values()), None))
                return
            await asyncio.sleep(0.01)
            await in_thread(self.kill_all)
