"""What an instance process is given on this node, whichever way it starts: a uid, its
scratch and output files, its cgroup, its environment variables and its load message; and the
parent cgroups of service groups, under which their instances' cgroups are made."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faasbox
from faasbox import errors
from faasbox.node import network
from faasbox.node.cgroups import Cgroup
from faasbox.node.cpusets import CpuSets
from faasbox.node.instance import Instance
from faasbox.node.output import OutputSink
from faasbox.node.sandbox import SandboxFeatures, rlimits
from faasbox.spec import FunctionSpec
from faasbox.tenancy.names import display, tenant_of

if TYPE_CHECKING:
    from faasbox.tenancy.groups import ServiceGroupSpec

log = logging.getLogger(__name__)

RUNTIME_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
UID_RANGE = 60000
GROUP_PREFIX = "grp-"


def function_env(spec: FunctionSpec) -> dict[str, str]:
    """The function's own variables that the runtime's do not override (set by the worker at
    ``load``, before the function is imported)."""
    return {k: v for k, v in spec.env.items() if k not in RUNTIME_ENV and k not in (
        "HOME", "TMPDIR")}


def group_cgroup_name(tenant: str, group: str) -> str:
    """The cgroup of a service group, below the server's scope: ``grp-<tenant>.<group>``."""
    return f"{GROUP_PREFIX}{tenant}.{group}"


class InstanceEnvironment:
    def __init__(self, data_dir: Path, features: SandboxFeatures, uid_base: int,
                 home: Path | None = None) -> None:
        self.features = features
        self.scratch_root = data_dir / "scratch"
        self.output_root = data_dir / "instances"
        self.uid_base = uid_base
        self.data_dir = data_dir.resolve()
        # what an instance's tmpfs covers: the data dir, or for a worker of `--workers` its
        # supervisor's (the code cache, admin key and store that the workers share)
        self.hidden_dir = (home or data_dir).resolve()
        # instances of this server live under faasbox/<scope>/, one scope per data dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        self.cgroup_scope = f"srv-{digest}"
        self.cpusets = CpuSets(features.cpuset_dir, self.cgroup_scope,
                               features.reasons.get("cpuset", ""))
        self._uids_in_use: set[int] = set()
        self._next_uid = 0
        self._uid_leases: dict[int, int] = {}  # uid -> fd of its host-wide lock file
        self._slot_leases: dict[int, int] = {}  # egress slot -> fd of its lock file (or -1)
        self.sinks: dict[str, OutputSink] = {}  # instance or template id -> its output
        self._warned_network = False

    def reset(self) -> None:
        """Clear what a server on this data dir left behind (scratch, output, cgroups)."""
        for d in (self.scratch_root, self.output_root):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
        self._clear_stale_cgroups()
        self.cpusets.open()
        self.scratch_root.chmod(0o711)
        self.output_root.chmod(0o700)

    async def close(self) -> None:
        """At a clean shutdown: remove this server's cgroup scope (instances are gone)."""
        for parent in set(self.features.cgroup_dirs.values()):
            scope = parent / self.cgroup_scope
            if scope.is_dir():
                for child in scope.iterdir():
                    if child.is_dir():
                        await self.cgroup(child.name).destroy()
                with contextlib.suppress(OSError):
                    scope.rmdir()
        self.cpusets.close()
        for uid in list(self._uid_leases):
            self.release_uid(uid)
        for slot in list(self._slot_leases):
            self.release_slot(slot)

    def _clear_stale_cgroups(self) -> None:
        """Kill and remove instance groups that a server on this data dir left behind when it
        died without stopping them. Only this data dir's scope is touched."""
        for parent in set(self.features.cgroup_dirs.values()):
            scope = parent / self.cgroup_scope
            if not scope.is_dir():
                continue
            for child in scope.iterdir():
                if not child.is_dir():
                    continue
                names = [f"{child.name}/{g.name}" for g in child.iterdir() if g.is_dir()]
                for name in [*names, child.name]:  # a service group's instances first
                    stale = self.cgroup(name)
                    stale.kill_all()
                    stale.remove()

    # -- uids -------------------------------------------------------------------------------
    def allocate_uid(self) -> int | None:
        """An unprivileged uid no other instance of this server holds (None: no uid drop)."""
        if not self.features.uid_drop:
            return None
        for _ in range(UID_RANGE):
            uid = self.uid_base + self._next_uid
            self._next_uid = (self._next_uid + 1) % UID_RANGE
            if uid not in self._uids_in_use and self._lease(uid):
                self._uids_in_use.add(uid)
                return uid
        raise RuntimeError(f"every uid from {self.uid_base} on is in use on this host")

    def _lease(self, uid: int) -> bool:
        """Hold ``uid`` host-wide (:meth:`_lock`)."""
        fd = self._lock(str(uid))
        if fd is None:
            return False
        if fd >= 0:
            self._uid_leases[uid] = fd
        return True

    def _lock(self, name: str) -> int | None:
        """An exclusive flock on lock file ``name``, which every server on this host takes
        before it uses what it names, and which the kernel drops when this server dies (its
        instances' cgroups are killed by the next server on this data dir): its fd, -1 where
        there are no host-wide locks, None when another holds it."""
        lock_dir = self.features.uid_lock_dir
        if lock_dir is None:
            return -1
        fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def lease_slot(self, uid: int) -> int:
        """An egress slot (a /30 and a link name: node/network.py) that no other instance on
        this host holds, host-wide like uids: the one of ``uid`` if free, else the next free
        one (uids wrap over more numbers than there are slots, and servers may have other
        uid bases)."""
        start = network.slot_of(uid, self.uid_base)
        for i in range(network.SLOTS):
            slot = (start + i) % network.SLOTS
            if slot in self._slot_leases:
                continue
            fd = self._lock(f"slot-{slot}")
            if fd is not None:
                self._slot_leases[slot] = fd
                return slot
        raise errors.Unavailable("every network egress slot is in use on this host")

    def release_slot(self, slot: int) -> None:
        fd = self._slot_leases.pop(slot, None)
        if fd is not None and fd >= 0:
            os.close(fd)

    def release_uid(self, uid: int) -> None:
        self._uids_in_use.discard(uid)
        fd = self._uid_leases.pop(uid, None)
        if fd is not None:
            os.close(fd)

    # -- per instance -----------------------------------------------------------------------
    def cgroup(self, name: str) -> Cgroup:
        return Cgroup(self.features, f"{self.cgroup_scope}/{name}")

    def new_instance(self, function: str, version: int, spec: FunctionSpec) -> Instance:
        """A new instance in state ``starting`` with its uid, folders and cgroup named: a
        child of its service group's cgroup when it is in one (not the deploy's load check,
        version 0, which reserves no memory of the group)."""
        inst = Instance(function, version, spec, Path(), Path(), None, self.allocate_uid())
        inst.scratch = self.scratch_root / inst.id
        inst.output_path = self.output_root / f"{inst.id}.out"
        inst.cgroup = self.instance_cgroup(function, version, spec, inst.id)
        return inst

    def instance_cgroup(self, function: str, version: int, spec: FunctionSpec,
                        name: str) -> Cgroup | None:
        """The cgroup of an instance (or a template's spare child) called ``name``."""
        if not self.features.cgroup_dirs:
            return None
        if spec.service_group is None or version == 0:
            return self.cgroup(name)
        group = group_cgroup_name(tenant_of(function), spec.service_group)
        cg = self.cgroup(f"{group}/{name}")
        cpuset = self.cpusets.dir_of(group)
        if cpuset is not None:
            cg.join = (cpuset,)
        return cg

    def network(self, spec: FunctionSpec) -> str:
        """The network an instance of ``spec`` gets here: none, egress or host."""
        if not self.features.net_ns:
            return "host"
        if spec.network == "egress" and not self.features.egress:
            if not self._warned_network:
                self._warned_network = True
                log.warning("network egress is unavailable (%s): egress instances use the "
                            "host network", self.features.reasons.get("egress"))
            return "host"
        return spec.network

    def runtime_paths(self) -> list[str]:
        """The interpreter's and faasbox's own folders where the instance's private mounts
        would hide them (a checkout or virtualenv under /tmp, say): bound back read-only."""
        hidden = [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm")] + [self.hidden_dir]
        found: list[str] = []
        for path in (sys.prefix, sys.base_prefix, str(Path(faasbox.__file__).parent.parent)):
            real = Path(path).resolve()
            if any(real == h or h in real.parents for h in hidden) and str(real) not in found:
                found.append(str(real))
        return found

    def plan(self, spec: FunctionSpec, uid: int | None, scratch: Path, paths: list[str],
             template: bool = False) -> dict[str, object]:
        """What the new process does to itself before user code (runtime/confine.py)."""
        if not self.features.enabled:
            return {"uid": uid, "scratch": str(scratch)}
        return self.features.plan(
            uid=uid, scratch=scratch, data_dir=self.hidden_dir,
            read_only=[*paths, *self.runtime_paths()],
            network=self.network(spec), tmpfs_mb=spec.ephemeral_storage_mb, template=template)

    def output(self, key: str, path: Path) -> OutputSink:
        """The pipe for a process's stdout and stderr, drained into ``path`` up to the cap."""
        sink = self.sinks[key] = OutputSink(path, self.features.output_cap)
        return sink

    def rename_output(self, key: str, new_key: str) -> None:
        """The sink of ``key`` is from now on ``new_key``'s (a spare handed to an instance)."""
        sink = self.sinks.pop(key, None)
        if sink is not None:
            self.sinks[new_key] = sink

    def close_output(self, key: str) -> None:
        sink = self.sinks.pop(key, None)
        if sink is not None:
            sink.drain()
            sink.close()

    # -- service groups ---------------------------------------------------------------------
    def group_cgroup(self, tenant: str, group: str) -> Cgroup | None:
        """A service group's parent cgroup (None: cgroups are not writable here)."""
        if not self.features.cgroup_dirs:
            return None
        return self.cgroup(group_cgroup_name(tenant, group))

    def ensure_group(self, tenant: str, spec: ServiceGroupSpec) -> str:
        """Make (or update) a service group's parent cgroup with its memory and CPU limits;
        what the node enforces, as one line (``GET /v1/service-groups/{group}``)."""
        cg = self.group_cgroup(tenant, spec.name)
        if cg is None:
            reason = self.features.reasons.get("memory", "unavailable")
            return f"none (cgroups not writable: {reason})"
        try:
            cg.create_parent(spec.memory_mb, spec.cpus)
        except OSError as exc:
            log.warning("cannot make the cgroup of service group %s/%s: %s", tenant,
                        spec.name, exc)
            return f"none (the group's cgroup cannot be made: {exc.strerror or exc})"
        name = group_cgroup_name(tenant, spec.name)
        cpus_part = self.cpusets.assign(name, spec.cpus)
        cpuset = self.cpusets.dir_of(name)
        if cpuset is not None:  # instances started before the group had CPUs of its own
            for child in cg.children():
                for pid in self.cgroup(f"{name}/{child}").pids():
                    with contextlib.suppress(OSError):
                        (cpuset / "cgroup.procs").write_text(str(pid))
        memory, cpus = cg.limits()
        v2 = self.features.cgroup_version == 2
        memory_file = "memory.max" if v2 else "memory.limit_in_bytes"
        cpu_file = "cpu.max" if v2 else "cpu.cfs_quota_us"
        parts = []
        if memory == spec.memory_mb:
            parts.append(f"{memory_file} {memory} MB")
        else:
            why = self.features.reasons.get("memory") or f"{memory_file} was not accepted"
            parts.append(f"memory not limited ({why})")
        if spec.cpus is None:
            parts.append("cpu not limited (no cpus set)")
        elif cpus is not None and abs(cpus - spec.cpus) < 0.01:
            parts.append(f"{cpu_file} {cpus:g} cpus")
        else:
            why = self.features.reasons.get("cpu") or f"{cpu_file} was not accepted"
            parts.append(f"cpu not limited ({why})")
        if spec.cpus is not None:
            parts.append(cpus_part)
        return f"cgroup v{self.features.cgroup_version}: " + ", ".join(parts)

    async def remove_group(self, tenant: str, group: str) -> None:
        """Remove a service group's cgroup, and what is left below it (killed)."""
        cg = self.group_cgroup(tenant, group)
        if cg is None:
            return
        name = group_cgroup_name(tenant, group)
        for child in cg.children():
            await self.cgroup(f"{name}/{child}").destroy()
        await cg.destroy()
        self.cpusets.release(name)

    def scratch_on_disk(self, template_child: bool) -> bool:
        """Whether the node makes a process's scratch dir on its disk: not for a template's
        child in a mount namespace, which makes its own in the template's tmpfs (a mkdir and
        later an rmtree on the node's disk: costly in a burst)."""
        return not (template_child and self.features.enabled and self.features.mount_ns)

    def prepare(self, inst: Instance, template_child: bool = False) -> None:
        """Make the instance's scratch dir (owned by its uid) and cgroup."""
        self.prepare_process(inst.scratch, inst.uid, inst.cgroup, inst.memory_mb,
                             self.scratch_on_disk(template_child))

    @staticmethod
    def prepare_process(scratch: Path, uid: int | None, cgroup: Cgroup | None,
                        memory_mb: int, on_disk: bool = True) -> None:
        """A process's scratch dir (owned by ``uid``; ``on_disk`` False: the process makes
        its own in a tmpfs) and its cgroup (``memory_mb``)."""
        if on_disk:
            scratch.mkdir(mode=0o700, exist_ok=True)
            if uid is not None:
                os.chown(scratch, uid, uid)
        if cgroup is not None:
            cgroup.create(memory_mb)

    def variables(self, function: str, version: int, spec: FunctionSpec,
                  scratch: Path, own: bool = True) -> dict[str, str]:
        """The environment variables of an instance process; without the function's ``own``
        (``env`` of its spec) for a process that execs as root: it gets them at ``load``."""
        return {
            **(spec.env if own else {}),
            **RUNTIME_ENV,
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "FAASBOX_FUNCTION_NAME": display(function),
            "FAASBOX_TENANT": tenant_of(function),
            "FAASBOX_FUNCTION_VERSION": str(version),
            "FAASBOX_FUNCTION_MEMORY_MB": str(spec.memory_mb),
        }

    def load_message(self, function: str, version: int, spec: FunctionSpec,
                     paths: list[str], instance: str) -> dict[str, Any]:
        limits = rlimits(self.features, spec.memory_mb) if self.features.enabled else {}
        return {
            "rlimits": limits, "env": function_env(spec),
            "t": "load", "handler": spec.handler, "paths": paths, "instance": instance,
            "function": display(function), "version": version,
            "memory_mb": spec.memory_mb, "concurrency": spec.concurrency,
        }
