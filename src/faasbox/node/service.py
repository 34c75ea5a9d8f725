"""The local node (NodeService): starts, sandboxes and stops instances on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from faasbox import errors
from faasbox.events import FunctionDeployed
from faasbox.node import network, startmode
from faasbox.node.environment import InstanceEnvironment
from faasbox.node.instance import Instance
from faasbox.node.sandbox import SandboxFeatures
from faasbox.node.starter import Starter
from faasbox.node.zygote import ForkedProcess, SpawnedProcess, in_thread, reported_ms
from faasbox.spec import FunctionSpec

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
INIT_TIMEOUT_S = 30.0


class NodeService:
    def __init__(self, data_dir: Path, features: SandboxFeatures, uid_base: int,
                 start_mode: str = "auto", template_spares: int = 1,
                 home: Path | None = None) -> None:
        self.features = features
        self.env = InstanceEnvironment(data_dir, features, uid_base, home)
        self.env.reset()
        self.starter = Starter(self.env, startmode.check_mode(start_mode), template_spares)
        self._egress: dict[str, tuple[int, list[str]]] = {}  # instance id -> (slot, allow)

    async def start(
        self, function: str, version: int, spec: FunctionSpec, paths: list[str],
    ) -> Instance:
        """Start an instance and load the function; raises InitError if it does not load."""
        inst = self.create(function, version, spec)
        await self.boot(inst, paths)
        return inst

    def create(self, function: str, version: int, spec: FunctionSpec) -> Instance:
        """A new instance in state ``starting``, not yet running (``boot`` runs it)."""
        return self.env.new_instance(function, version, spec)

    async def boot(self, inst: Instance, paths: list[str]) -> None:
        """Start, sandbox and load; on failure the instance is stopped and cleaned up."""
        try:
            with self.starter.booting(inst):  # a burst makes a template at once (startmode)
                await self._boot(inst, paths)
        except BaseException:
            await self.stop(inst)
            raise

    async def _boot(self, inst: Instance, paths: list[str]) -> None:
        parent = await self.starter.start(inst, paths)
        await inst.connect(inst.proc, parent)  # type: ignore[arg-type]
        if inst.state != "starting":
            raise errors.InstanceCrashed("the instance was stopped while it started")
        # The sandbox closes around the process before it loads any user code (a template's
        # child has the module imported already, but runs none of it before ``load``). A
        # template's spare said hello and was put in its cgroup before it was handed out.
        if inst.spare is None:
            await inst.expect("hello", HELLO_TIMEOUT_S)
            if isinstance(inst.proc, SpawnedProcess):
                inst.proc.find_worker()
            elif isinstance(inst.proc, ForkedProcess) and not inst.proc.running():
                # its zygote reaps it: once exited, its pid may be another process's
                raise errors.InitError("the instance exited before it was put in its cgroup")
            if inst.cgroup is not None:
                # a cgroup v1 move waits for an RCU grace period (ms): not on the loop
                # (and a spawned instance's first process, which waits for it)
                cgroup = inst.cgroup
                pids = {p for p in (inst.pid, inst.proc and inst.proc.pid)
                        if isinstance(p, int)}

                def move() -> None:
                    for pid in pids:
                        cgroup.add(pid)

                await in_thread(move)
        if (inst.start_mode != startmode.TEMPLATE and inst.uid is not None
                and self.env.network(inst.spec) == "egress"):
            slot = self.env.lease_slot(inst.uid)
            self._egress[inst.id] = (slot, list(inst.spec.network_allow))
            await network.attach(inst.pid, slot, list(inst.spec.network_allow))  # type: ignore[arg-type]
        try:
            inst.send(self.env.load_message(inst.function, inst.version, inst.spec, paths,
                                              inst.id))
        except RuntimeError:  # the transport closed: the process died after its hello
            raise errors.InitError("the instance died before it could load the function",
                                   output=inst.output_tail() or None) from None
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
        inst.init_ms = reported_ms(reply.get("init_ms"))
        inst.ordered = reply.get("ordered") is True
        inst.state = "idle"
        self.starter.started(inst)

    def has_template(self, function: str, version: int) -> bool:
        """Whether new instances of the version are forked from a ready template."""
        return self.starter.has_template(function, version)

    async def close(self) -> None:
        """Retire the fork server and the templates (instances are stopped by their owner)."""
        await self.starter.close()
        await self.env.close()

    def on_function_deployed(self, event: FunctionDeployed) -> None:
        """A new latest version: older versions of the function lose their template."""
        self.starter.drop_templates(event.row.function, below=event.row.version)

    def function_deleted(self, function: str) -> None:
        self.starter.drop_templates(function)

    async def stop(self, inst: Instance, reason: errors.InvocationError | None = None) -> None:
        await inst.stop(reason)
        if inst.cgroup is not None:
            await inst.cgroup.destroy()
        self.env.close_output(inst.id)
        egress = self._egress.pop(inst.id, None)
        if egress is not None:
            await network.detach(*egress)
            self.env.release_slot(egress[0])
        if inst.uid is not None and inst.start_mode != startmode.TEMPLATE:
            self.env.release_uid(inst.uid)  # a template's children share its uid: it releases
        with contextlib.suppress(OSError):
            inst.output_path.unlink()
        if self.env.scratch_on_disk(template_child=inst.start_mode == startmode.TEMPLATE):
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: shutil.rmtree(inst.scratch, ignore_errors=True))
        # else its scratch was in its template's tmpfs, which removes it
