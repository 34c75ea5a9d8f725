"""The local node (NodeService): starts, sandboxes and stops instances on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from faasbox import errors
from faasbox.node import startmode
from faasbox.node.instance import Instance
from faasbox.node.sandbox import Cgroup, SandboxFeatures, rlimits
from faasbox.node.starter import Starter
from faasbox.node.zygote import SpawnedProcess, popen_in_thread

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
INIT_TIMEOUT_S = 30.0
RUNTIME_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


class NodeService:
    def __init__(self, data_dir: Path, features: SandboxFeatures, uid_base: int,
                 start_mode: str = "auto") -> None:
        self.features = features
        self.scratch_root = data_dir / "scratch"
        self.output_root = data_dir / "instances"
        self.uid_base = uid_base
        # instances of this server live under faasbox/<scope>/, one scope per data dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        self.cgroup_scope = f"srv-{digest}"
        self._uids_in_use: set[int] = set()
        self._next_uid = 0
        for d in (self.scratch_root, self.output_root):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
        self._clear_stale_cgroups()
        self.scratch_root.chmod(0o711)
        self.output_root.chmod(0o700)
        self.starter = Starter(self, startmode.check_mode(start_mode), RUNTIME_ENV)

    def _clear_stale_cgroups(self) -> None:
        """Kill and remove instance groups that a server on this data dir left behind when it
        died without stopping them. Only this data dir's scope is touched."""
        for parent in set(self.features.cgroup_dirs.values()):
            scope = parent / self.cgroup_scope
            if not scope.is_dir():
                continue
            for child in scope.iterdir():
                if child.is_dir():
                    stale = Cgroup(self.features, f"{self.cgroup_scope}/{child.name}")
                    stale.kill_all()
                    stale.remove()

    def release_uid(self, uid: int) -> None:
        self._uids_in_use.discard(uid)

    def allocate_uid(self) -> int | None:
        if not self.features.uid_drop:
            return None
        while True:
            uid = self.uid_base + self._next_uid
            self._next_uid = (self._next_uid + 1) % 60000
            if uid not in self._uids_in_use:
                self._uids_in_use.add(uid)
                return uid

    async def start(
        self, function: str, version: int, spec: dict[str, Any], paths: list[str],
    ) -> Instance:
        """Start an instance and load the function; raises InitError if it does not load."""
        inst = self.create(function, version, spec)
        await self.boot(inst, paths)
        return inst

    def create(self, function: str, version: int, spec: dict[str, Any]) -> Instance:
        """A new instance in state ``starting``, not yet running (``boot`` runs it)."""
        inst = Instance(function, version, spec, Path(), Path(), None, self.allocate_uid())
        inst.scratch = self.scratch_root / inst.id
        inst.output_path = self.output_root / f"{inst.id}.out"
        if self.features.cgroup_dirs:
            inst.cgroup = Cgroup(self.features, f"{self.cgroup_scope}/{inst.id}")
        return inst

    async def boot(self, inst: Instance, paths: list[str]) -> None:
        """Start, sandbox and load; on failure the instance is stopped and cleaned up."""
        try:
            await self._boot(inst, paths)
        except BaseException:
            await self.stop(inst)
            raise

    def instance_env(self, function: str, version: int, spec: dict[str, Any],
                     scratch: Path) -> dict[str, str]:
        return {
            **spec.get("env", {}),
            **RUNTIME_ENV,
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "FAASBOX_FUNCTION_NAME": function,
            "FAASBOX_FUNCTION_VERSION": str(version),
            "FAASBOX_FUNCTION_MEMORY_MB": str(spec["memory_mb"]),
        }

    def load_message(self, function: str, version: int, spec: dict[str, Any],
                     paths: list[str]) -> dict[str, Any]:
        limits = rlimits(self.features, spec["memory_mb"]) if self.features.enabled else {}
        return {
            "rlimits": limits,
            "t": "load", "handler": spec["handler"], "paths": paths,
            "function": function, "version": version,
            "memory_mb": spec["memory_mb"], "concurrency": spec["concurrency"],
        }

    async def _boot(self, inst: Instance, paths: list[str]) -> None:
        parent = await self.starter.start(inst, paths)
        await inst.connect(inst.proc, parent)  # type: ignore[arg-type]
        if inst.state != "starting":
            raise errors.InstanceCrashed("the instance was stopped while it started")
        await inst.expect("hello", HELLO_TIMEOUT_S)
        # The sandbox closes around the process before it loads any user code (a template's
        # child has the module imported already, but runs none of it before ``load``).
        if inst.cgroup is not None:
            inst.cgroup.add(inst.pid)  # type: ignore[arg-type]
        inst.send(self.load_message(inst.function, inst.version, inst.spec, paths))
        try:
            reply = await inst.expect("ready", INIT_TIMEOUT_S)
        except errors.InvocationError as exc:
            raise errors.InitError(f"the instance died while loading the function: {exc}",
                                   output=inst.output_tail() or None) from None
        if reply.get("t") == "load_error":
            raise errors.InitError(
                f"the function failed to load: {reply.get('type')}: {reply.get('message')}",
                type=reply.get("type"), traceback=reply.get("traceback"),
            )
        inst.init_ms = reply.get("init_ms")
        inst.state = "idle"

    def prepare(self, inst: Instance) -> None:
        """Make the instance's scratch dir (owned by its uid) and cgroup."""
        inst.scratch.mkdir(mode=0o700, exist_ok=True)
        if inst.uid is not None:
            os.chown(inst.scratch, inst.uid, inst.uid)
        if inst.cgroup is not None:
            inst.cgroup.create(inst.memory_mb)

    async def spawn(self, inst: Instance) -> socket.socket:
        """Start the instance as a new interpreter; returns the node's end of its socket."""
        self.prepare(inst)
        env = self.instance_env(inst.function, inst.version, inst.spec, inst.scratch)
        parent, child = socket.socketpair()
        try:
            with inst.output_path.open("wb") as out:
                proc = await popen_in_thread(lambda: (
                    subprocess.Popen(
                        [sys.executable, "-I", "-m", "faasbox.runtime", str(child.fileno())],
                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        pass_fds=(child.fileno(),), cwd=inst.scratch, env=env,
                        process_group=0, user=inst.uid, group=inst.uid,
                        extra_groups=[] if inst.uid is not None else None,
                    )))
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        inst.proc = SpawnedProcess(proc)
        inst.start_mode = startmode.SPAWN
        return parent

    async def close(self) -> None:
        """Retire the fork server and the templates (instances are stopped by their owner)."""
        await self.starter.close()

    def version_deployed(self, function: str, version: int) -> None:
        """``version`` is now the latest of ``function``: older versions lose their template."""
        self.starter.drop_templates(function, below=version)

    def function_deleted(self, function: str) -> None:
        self.starter.drop_templates(function)

    async def stop(self, inst: Instance, reason: errors.InvocationError | None = None) -> None:
        await inst.stop(reason)
        if inst.cgroup is not None:
            inst.cgroup.kill_all()
            inst.cgroup.remove()
        if inst.uid is not None and inst.start_mode != startmode.TEMPLATE:
            self.release_uid(inst.uid)  # a template's children share its uid: it releases
        with contextlib.suppress(OSError):
            inst.output_path.unlink()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(inst.scratch, ignore_errors=True))
