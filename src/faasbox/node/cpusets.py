"""Dedicated CPUs for service groups (the cgroup v1 cpuset controller).

A service group with ``cpus`` gets ``ceil(cpus)`` CPUs of its own (its CPU quota still caps
it at ``cpus``): its instances run only there, and nothing else of this server does. Below
``faasbox/srv-<scope>/`` in the cpuset hierarchy there is one directory per such group and
one called ``shared``, the CPUs left over. The server moves itself into ``shared`` when it
opens, so that its threads, its templates and every instance outside a dedicated group (all
forked from it) inherit the shared CPUs; an instance of a group joins its group's directory
when it starts. A process cannot leave its cpuset (``sched_setaffinity`` is clipped to it), so
a function cannot take back a dedicated CPU. At least one CPU always stays shared; a group
that would take the last one keeps its quota on the shared CPUs instead, and says so.

On cgroup v2, without root, or without the cpuset controller, groups keep their quota only
(``reason`` says why)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHARED = "shared"


def cpu_list(cpus: list[int]) -> str:
    """``[0, 2, 3]`` as the kernel writes it: ``0,2-3``."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class CpuSets:
    """The shared pool and the dedicated CPUs of service groups, for one server."""

    def __init__(self, parent: Path | None, scope: str, reason: str = "") -> None:
        self.base = None if parent is None else parent / scope
        self.reason = reason or "no cpuset controller"
        self.cpus: list[int] = []  # what this server may use (its affinity when it opened)
        self.mems = ""
        self.dedicated: dict[str, list[int]] = {}  # directory name -> its CPUs
        self.entered = False

    @property
    def available(self) -> bool:
        return self.base is not None

    def open(self) -> None:
        """Make ``shared`` (every CPU this process may use) and move this process into it.
        Left-over directories of a server that died on this data dir are reused or removed."""
        if self.base is None:
            return
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
            self.mems = (self.base.parent / "cpuset.mems").read_text().strip()
            self.base.mkdir(exist_ok=True)
            self._set(self.base, self.cpus)
            for stale in self.base.iterdir():
                if stale.is_dir() and stale.name != SHARED:
                    with contextlib.suppress(OSError):
                        stale.rmdir()
            (self.base / SHARED).mkdir(exist_ok=True)
            self._set(self.base / SHARED, self.cpus)
            (self.base / SHARED / "cgroup.procs").write_text(str(os.getpid()))
            self.entered = True
        except OSError as exc:
            log.warning("dedicated CPUs are unavailable: %s", exc)
            self.reason = f"the cpuset of this server cannot be made ({exc.strerror or exc})"
            self.base = None

    def close(self) -> None:
        """Leave ``shared`` (back to the cpuset this process came from) and remove the
        directories (instances are gone by now)."""
        if self.base is None:
            return
        if self.entered:
            with contextlib.suppress(OSError):
                (self.base.parent.parent / "cgroup.procs").write_text(str(os.getpid()))
            self.entered = False
        for name in [*self.dedicated, SHARED]:
            with contextlib.suppress(OSError):
                (self.base / name).rmdir()
        self.dedicated.clear()
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def assign(self, name: str, cpus: float | None) -> str:
        """Give the group directory ``name`` ``ceil(cpus)`` dedicated CPUs (none for None);
        it keeps the ones it has when the count is the same. What it got, as words."""
        if self.base is None:
            return f"cpus shared ({self.reason})"
        want = 0 if cpus is None else max(1, math.ceil(cpus - 1e-9))
        if want == 0:
            self.release(name)
            return "cpus shared (no cpus set)"
        if want == len(self.dedicated.get(name, [])):
            return self._describe(name)
        taken = {c for n, cs in self.dedicated.items() if n != name for c in cs}
        free = [c for c in self.cpus if c not in taken]
        if want > len(free) - 1:
            self.release(name)
            return (f"cpus shared ({want} dedicated CPU{'s' * (want > 1)} would leave no CPU"
                    f" shared: {len(free)} of {len(self.cpus)} are not dedicated)")
        chosen = free[len(free) - want:]  # the highest: CPU 0 often takes more interrupts
        try:
            self.dedicated[name] = chosen
            self._set(self.base / SHARED, self.shared_cpus())  # shrinks before the group takes
            (self.base / name).mkdir(exist_ok=True)
            self._set(self.base / name, chosen)
        except OSError as exc:
            log.warning("cannot dedicate CPUs to %s: %s", name, exc)
            self.release(name)
            return f"cpus shared (cpuset not accepted: {exc.strerror or exc})"
        return self._describe(name)

    def release(self, name: str) -> None:
        """The group ``name`` gives its CPUs back (its instances are gone or moved)."""
        if self.base is None or name not in self.dedicated:
            return
        del self.dedicated[name]
        d = self.base / name
        with contextlib.suppress(OSError):
            self._set(self.base / SHARED, self.shared_cpus())
            for pid in (d / "cgroup.procs").read_text().split():  # back to the shared CPUs
                with contextlib.suppress(OSError):
                    (self.base / SHARED / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            d.rmdir()

    def dir_of(self, name: str) -> Path | None:
        """The cpuset directory of the group ``name`` (None: it has no dedicated CPUs)."""
        if self.base is None or not self.dedicated.get(name):
            return None
        return self.base / name

    def shared_cpus(self) -> list[int]:
        """The CPUs no group has (the server's and every other instance's)."""
        taken = {c for cs in self.dedicated.values() for c in cs}
        return [c for c in self.cpus if c not in taken]

    def _describe(self, name: str) -> str:
        cpus = self.dedicated.get(name)
        if not cpus:
            return "cpus shared (no cpus set)"
        return f"cpuset.cpus {cpu_list(cpus)} dedicated"

    def _set(self, d: Path, cpus: list[int]) -> None:
        # mems first: a v1 cpuset takes no tasks until both are set
        if not (d / "cpuset.mems").read_text().strip():
            (d / "cpuset.mems").write_text(self.mems)
        (d / "cpuset.cpus").write_text(cpu_list(cpus))
