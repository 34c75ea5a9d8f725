"""What an instance process is given on this node, whichever way it starts: a uid, its
scratch and output files, its cgroup, its environment variables and its load message."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from faasbox.node.instance import Instance
from faasbox.node.output import OutputSink
from faasbox.node.sandbox import Cgroup, SandboxFeatures, rlimits
from faasbox.spec import FunctionSpec
from faasbox.tenancy.names import display, tenant_of

RUNTIME_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
UID_RANGE = 60000

log = logging.getLogger(__name__)


class InstanceEnvironment:
    def __init__(self, data_dir: Path, features: SandboxFeatures, uid_base: int) -> None:
        self.features = features
        self.scratch_root = data_dir / "scratch"
        self.output_root = data_dir / "instances"
        self.uid_base = uid_base
        self.data_dir = data_dir.resolve()
        # instances of this server live under faasbox/<scope>/, one scope per data dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        self.cgroup_scope = f"srv-{digest}"
        self._uids_in_use: set[int] = set()
        self._next_uid = 0
        self._uid_leases: dict[int, int] = {}  # uid -> fd of its host-wide lock file
        self.sinks: dict[str, OutputSink] = {}  # instance or template id -> its output
        self._warned_network = False

    def reset(self) -> None:
        """Clear what a server on this data dir left behind (scratch, output, cgroups)."""
        for d in (self.scratch_root, self.output_root):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
        self._clear_stale_cgroups()
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
        for uid in list(self._uid_leases):
            self.release_uid(uid)

    def _clear_stale_cgroups(self) -> None:
        """Kill and remove instance groups that a server on this data dir left behind when it
        died without stopping them. Only this data dir's scope is touched."""
        for parent in set(self.features.cgroup_dirs.values()):
            scope = parent / self.cgroup_scope
            if not scope.is_dir():
                continue
            for child in scope.iterdir():
                if child.is_dir():
                    stale = self.cgroup(child.name)
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
        """Hold ``uid`` host-wide: an exclusive flock on its lock file, which every server on
        this host takes before it uses the uid, and which the kernel drops when this server
        dies (its instances' cgroups are killed by the next server on this data dir)."""
        lock_dir = self.features.uid_lock_dir
        if lock_dir is None:
            return True
        fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._uid_leases[uid] = fd
        return True

    def release_uid(self, uid: int) -> None:
        self._uids_in_use.discard(uid)
        fd = self._uid_leases.pop(uid, None)
        if fd is not None:
            os.close(fd)

    # -- per instance -----------------------------------------------------------------------
    def cgroup(self, name: str) -> Cgroup:
        return Cgroup(self.features, f"{self.cgroup_scope}/{name}")

    def new_instance(self, function: str, version: int, spec: FunctionSpec) -> Instance:
        """A new instance in state ``starting`` with its uid, folders and cgroup named."""
        inst = Instance(function, version, spec, Path(), Path(), None, self.allocate_uid())
        inst.scratch = self.scratch_root / inst.id
        inst.output_path = self.output_root / f"{inst.id}.out"
        if self.features.cgroup_dirs:
            inst.cgroup = self.cgroup(inst.id)
        return inst

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

    def plan(self, spec: FunctionSpec, uid: int | None, scratch: Path, paths: list[str],
             template: bool = False) -> dict[str, object]:
        """What the new process does to itself before user code (runtime/confine.py)."""
        if not self.features.enabled:
            return {"uid": uid, "scratch": str(scratch)}
        return self.features.plan(
            uid=uid, scratch=scratch, data_dir=self.data_dir, read_only=paths,
            network=self.network(spec), tmpfs_mb=spec.ephemeral_storage_mb, template=template)

    def output(self, key: str, path: Path) -> OutputSink:
        """The pipe for a process's stdout and stderr, drained into ``path`` up to the cap."""
        sink = self.sinks[key] = OutputSink(path, self.features.output_cap)
        return sink

    def close_output(self, key: str) -> None:
        sink = self.sinks.pop(key, None)
        if sink is not None:
            sink.drain()
            sink.close()

    def prepare(self, inst: Instance) -> None:
        """Make the instance's scratch dir (owned by its uid) and cgroup."""
        inst.scratch.mkdir(mode=0o700, exist_ok=True)
        if inst.uid is not None:
            os.chown(inst.scratch, inst.uid, inst.uid)
        if inst.cgroup is not None:
            inst.cgroup.create(inst.memory_mb)

    def variables(self, function: str, version: int, spec: FunctionSpec,
                  scratch: Path) -> dict[str, str]:
        """The environment variables of an instance process."""
        return {
            **spec.env,
            **RUNTIME_ENV,
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "FAASBOX_FUNCTION_NAME": display(function),
            "FAASBOX_TENANT": tenant_of(function),
            "FAASBOX_FUNCTION_VERSION": str(version),
            "FAASBOX_FUNCTION_MEMORY_MB": str(spec.memory_mb),
        }

    def load_message(self, function: str, version: int, spec: FunctionSpec,
                     paths: list[str]) -> dict[str, Any]:
        limits = rlimits(self.features, spec.memory_mb) if self.features.enabled else {}
        return {
            "rlimits": limits,
            "t": "load", "handler": spec.handler, "paths": paths,
            "function": display(function), "version": version,
            "memory_mb": spec.memory_mb, "concurrency": spec.concurrency,
        }
