"""What an instance process is given on this node, whichever way it starts: a uid, its
scratch and output files, its cgroup, its environment variables and its load message."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from faasbox.node.instance import Instance
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


class InstanceEnvironment:
    def __init__(self, data_dir: Path, features: SandboxFeatures, uid_base: int) -> None:
        self.features = features
        self.scratch_root = data_dir / "scratch"
        self.output_root = data_dir / "instances"
        self.uid_base = uid_base
        # instances of this server live under faasbox/<scope>/, one scope per data dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        self.cgroup_scope = f"srv-{digest}"
        self._uids_in_use: set[int] = set()
        self._next_uid = 0

    def reset(self) -> None:
        """Clear what a server on this data dir left behind (scratch, output, cgroups)."""
        for d in (self.scratch_root, self.output_root):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
        self._clear_stale_cgroups()
        self.scratch_root.chmod(0o711)
        self.output_root.chmod(0o700)

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
        while True:
            uid = self.uid_base + self._next_uid
            self._next_uid = (self._next_uid + 1) % UID_RANGE
            if uid not in self._uids_in_use:
                self._uids_in_use.add(uid)
                return uid

    def release_uid(self, uid: int) -> None:
        self._uids_in_use.discard(uid)

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
