"""Spare children of snapshot templates: forked ahead of demand, so that a cold start only
sends ``load``.

A ready template keeps up to ``count`` (``FAASBOX_TEMPLATE_SPARES``) spares: forked from it,
checked to be its children under its uid, confined, in a cgroup of their own with the
version's memory limit, their ``hello`` received. A cold start of that version takes one
(:meth:`Spares.take`) and a new one is forked ``SPARE_DELAY_S`` after that cold start is ready.
A spare belongs to its template (one function version, so one tenant, under the template's
uid); one that died while waiting is dropped, never handed out. Spares go with their template.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faasbox import errors
from faasbox.node import startmode
from faasbox.node.cgroups import Cgroup
from faasbox.node.environment import InstanceEnvironment
from faasbox.node.instance import Instance
from faasbox.node.zygote import ForkedProcess, Zygote, in_thread, is_child_of
from faasbox.runtime import protocol

if TYPE_CHECKING:
    from faasbox.node.starter import Template

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
# a spare is forked this long after the cold start that took one is ready (or the template
# is), so that its fork and confinement do not compete for the CPU with that cold start
SPARE_DELAY_S = 0.05

# Zygote.fork for one child: (zygote, key, uid, scratch, output path, env, confinement plan)
ForkChild = Callable[[Zygote, str, "int | None", Path, Path, "dict[str, str]",
                      "dict[str, object]"], Awaitable["tuple[ForkedProcess, socket.socket]"]]


@dataclass(eq=False)
class Spare:
    """A child forked from a template before any cold start asked for it: confined, in its
    own cgroup, its hello received; it waits for its ``load``."""

    id: str
    scratch: Path
    output_path: Path
    cgroup: Cgroup | None
    proc: ForkedProcess | None = None
    sock: socket.socket | None = None


class Spares:
    def __init__(self, env: InstanceEnvironment, count: int, fork_child: ForkChild,
                 spawn_task: Callable[[Any], None]) -> None:
        self.env = env
        self.count = count  # spares per ready template
        self._fork_child = fork_child
        self._spawn_task = spawn_task

    def take(self, inst: Instance, template: Template) -> socket.socket | None:
        """Give ``inst`` a live spare of ``template`` (None: none is left); dead ones are
        dropped on the way."""
        while template.spares:
            spare = template.spares.pop(0)
            if spare.proc is None or spare.sock is None or not spare.proc.running():
                log.info("spare %s of template %s died while waiting; dropped", spare.id,
                         template.id)
                self.drop(spare)
                continue
            if inst.uid is not None:
                self.env.release_uid(inst.uid)
            inst.uid = template.uid
            inst.scratch, inst.output_path = spare.scratch, spare.output_path
            inst.cgroup = spare.cgroup
            self.env.rename_output(spare.id, inst.id)
            inst.proc = spare.proc
            inst.start_mode = startmode.TEMPLATE
            inst.spare = spare.id
            template.last_used = asyncio.get_running_loop().time()
            template.forks += 1
            return spare.sock
        return None

    def refill(self, template: Template) -> None:
        """Fork spares in the background until ``template`` has ``count``."""
        missing = self.count - len(template.spares) - template.filling
        for _ in range(missing if template.spec is not None and not template.retired else 0):
            template.filling += 1
            self._spawn_task(self._fill(template))

    async def _fill(self, template: Template) -> None:
        try:
            spare = await self._make(template)
        except (errors.Unavailable, OSError) as exc:
            log.warning("cannot fork a spare of template %s: %s", template.id, exc)
            return
        finally:
            template.filling -= 1
        if template.retired or template.zygote is None or not template.zygote.alive:
            self.drop(spare)
            return
        template.spares.append(spare)

    async def _make(self, template: Template) -> Spare:
        """Fork a child of ``template``, check it is the template's, take its hello and put
        it in a cgroup of its own: what a cold start would do before ``load``."""
        assert template.zygote is not None and template.spec is not None
        function, version = template.key
        sid = f"{template.id}-s{os.urandom(3).hex()}"
        spare = Spare(sid, self.env.scratch_root / sid, self.env.output_root / f"{sid}.out",
                      self.env.instance_cgroup(function, version, template.spec, sid))
        try:
            await in_thread(self.env.prepare_process, spare.scratch, template.uid,
                            spare.cgroup, template.spec.memory_mb,
                            self.env.scratch_on_disk(template_child=True))
            env = self.env.variables(function, version, template.spec, spare.scratch)
            spare.proc, spare.sock = await self._fork_child(
                template.zygote, sid, template.uid, spare.scratch, spare.output_path, env,
                {"uid": template.uid, "scratch": str(spare.scratch)})
            if not is_child_of(template.zygote, template.uid, spare.proc.pid):
                raise errors.Unavailable("the template named a process that is not its child")
            hello = await _read_frame(spare.sock, HELLO_TIMEOUT_S)
            if hello.get("t") != "hello":
                raise errors.Unavailable(f"a spare sent {str(hello.get('t'))[:40]!r}, not hello")
            if spare.cgroup is not None:
                if not spare.proc.running():  # reaped by its template: the pid may be reused
                    raise errors.Unavailable("a spare exited before its hello was answered")
                await in_thread(spare.cgroup.add, spare.proc.pid)
        except BaseException:
            self.drop(spare)
            raise
        return spare

    def drop(self, spare: Spare) -> None:
        """Kill a spare and remove what it had (its scratch goes when the template reaps it)."""
        if spare.sock is not None:
            spare.sock.close()
        if spare.proc is not None:
            spare.proc.kill()
            spare.proc.close()
        self.env.close_output(spare.id)
        with contextlib.suppress(OSError):
            spare.output_path.unlink()
        if spare.cgroup is not None:
            self._spawn_task(spare.cgroup.destroy())
        shutil.rmtree(spare.scratch, ignore_errors=True)

    def drop_all(self, template: Template) -> None:
        spares, template.spares = template.spares, []
        for spare in spares:
            self.drop(spare)


async def _read_frame(sock: socket.socket, timeout: float) -> dict[str, Any]:
    """One frame's header from a child's socket (the spare's hello); raises Unavailable."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            got = await loop.sock_recv(sock, n - len(data))
            if not got:
                raise errors.Unavailable("the spare closed its socket")
            data += got
        return data

    try:
        async with asyncio.timeout(timeout):
            body = await exactly(protocol.parse_length(await exactly(4), 2**16))
        header, _ = protocol.unpack(body)
    except TimeoutError:
        raise errors.Unavailable(f"a spare sent no hello within {timeout:g} s") from None
    except protocol.ProtocolError as exc:
        raise errors.Unavailable(f"a spare broke the protocol: {exc}") from None
    return header
