"""Starting instance processes fast: the fork server and per-version snapshot templates.

:meth:`Starter.start` gives an instance its process, trying the ways that
:func:`faasbox.node.startmode.ways` lists, fastest first, and falling back to the next when one
is not possible (the reasons land in ``Instance.start_fallback``). Whatever the way, the node
then says the same things to the instance (hello, cgroup, load, ready) as to a spawned one.

- The **fork server** is started on first use and restarted on the next cold start after it
  died (at most every ``FORKSERVER_RETRY_S`` after a failed start; meanwhile instances spawn).
- A **template** of a version is made when ``startmode.template_due`` says so, forked from the
  fork server under a uid of its own and kept in a cgroup of its own with the version's memory
  limit. Its children share its uid. It is retired when a newer version is deployed, when the
  function is deleted, after ``TEMPLATE_IDLE_S`` without a fork, or when the node closes; a
  retired template exits once its last instance has. A version whose template is refused
  (module-level code started threads or left sockets open, the function failed to load, it
  provides a module the fork server preloaded) is not tried again.
- A ready template keeps **spare children** forked ahead of demand (node/spares.py): a cold
  start of that version takes one, which only needs its ``load``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faasbox import errors
from faasbox.node import network, startmode
from faasbox.node.cgroups import Cgroup
from faasbox.node.environment import RUNTIME_ENV, InstanceEnvironment
from faasbox.node.instance import Instance
from faasbox.node.spares import HELLO_TIMEOUT_S, SPARE_DELAY_S, Spare, Spares
from faasbox.node.zygote import (
    ForkedProcess,
    Zygote,
    is_child_of,
    reported_ms,
    spawn,
    start_fork_server,
    with_socket,
)
from faasbox.spec import FunctionSpec

log = logging.getLogger(__name__)

TEMPLATE_IDLE_S = 600.0
FORKSERVER_RETRY_S = 30.0
INIT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
# What a template's child copies between its fork and its move into its own cgroup (the
# at-fork hooks, confinement, hello: faasbox's code, no user code) stays charged to the
# template's cgroup, as neither cgroup version moves charges: the template's limit allows
# this much per child it may have at once.
CHILD_CHARGE_MB = 4

Key = tuple[str, int]  # (function, version)


class Refused(Exception):
    """A version cannot have a template (the message says why); not retried."""


@dataclass(eq=False)
class Template:
    key: Key
    id: str
    uid: int | None
    scratch: Path
    output_path: Path
    cgroup: Cgroup | None
    spec: FunctionSpec | None = None
    spares: list[Spare] = field(default_factory=list)  # node/spares.py
    filling: int = 0  # spares being forked
    retired: bool = False
    zygote: Zygote | None = None
    init_ms: float = 0.0
    last_used: float = 0.0
    forks: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    egress: tuple[int, list[str]] | None = None  # (slot, network_allow) when attached


class Starter:
    def __init__(self, env: InstanceEnvironment, mode: str, spares: int = 1) -> None:
        self.env = env
        self.mode = mode
        self.spares = Spares(env, max(0, spares), self._fork_child, self._spawn_task)
        self._forkserver: Zygote | None = None
        self._forkserver_task: asyncio.Task[Zygote] | None = None
        self._forkserver_failed_at: float | None = None
        self._templates: dict[Key, asyncio.Task[Template | None]] = {}
        self._refused: dict[Key, str] = {}
        self._cold_starts: collections.Counter[Key] = collections.Counter()
        # instances of each version starting now, from their start to their load's end
        self._under_way: collections.Counter[Key] = collections.Counter()
        self._provided: dict[tuple[str, ...], set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # -- one instance -----------------------------------------------------------------------
    @contextlib.contextmanager
    def booting(self, inst: Instance) -> Iterator[None]:
        """``inst`` is under way, from its start to its load's end (a burst of a version's
        cold starts under way at once makes its template at once: startmode)."""
        key = (inst.function, inst.version)
        self._under_way[key] += 1
        try:
            yield
        finally:
            self._under_way[key] -= 1
            if not self._under_way[key]:
                del self._under_way[key]

    async def start(self, inst: Instance, paths: list[str]) -> socket.socket:
        """Give ``inst`` a running process; returns the node's end of its socket."""
        notes: list[str] = []
        for way in startmode.ways(self.mode, inst.version):
            try:
                sock = await self._try(way, inst, paths, notes)
            except errors.Unavailable as exc:
                log.warning("cannot start %s by %s; falling back: %s", inst.id, way, exc.message)
                notes.append(f"{way}: {exc.message}")
                continue
            if sock is not None:
                inst.start_fallback = "; ".join(notes) or None
                return sock
        raise errors.Unavailable(f"no way to start {inst.id}: {'; '.join(notes)}")

    async def _try(self, way: str, inst: Instance, paths: list[str],
                   notes: list[str]) -> socket.socket | None:
        if way == startmode.SPAWN:
            return await spawn(self.env, inst, paths)
        if way == startmode.FORK:
            forkserver = await self._fork_server()
            clash = self._shadowed(paths, forkserver)
            if clash:
                notes.append(f"fork: {clash}")
                return None
            return await self._fork(inst, forkserver, paths)
        template = await self._template(inst, paths, notes)
        if template is None:
            return None
        try:
            sock = self.spares.take(inst, template)
            if sock is None:
                sock = await self._fork_template(inst, template)
        except errors.Unavailable:
            self._retire(template)
            raise
        return sock

    def started(self, inst: Instance) -> None:
        """``inst`` is ready: replace the spare it may have taken (not before, so that the
        spare's fork does not compete with the cold start it follows)."""
        if inst.start_mode == startmode.TEMPLATE:
            template = _made(self._templates.get((inst.function, inst.version)))
            if template is not None:
                asyncio.get_running_loop().call_later(SPARE_DELAY_S, self.spares.refill, template)

    async def _fork(self, inst: Instance, zygote: Zygote, paths: list[str],
                    template: bool = False) -> socket.socket:
        self.env.prepare(inst, template_child=template)
        # a fork-server child is root until it confines itself: the function's own variables
        # are set by its worker at load (a template's child is not root, and has them)
        env = self.env.variables(inst.function, inst.version, inst.spec, inst.scratch,
                                 own=template)
        # a template's child inherits the template's confinement; it only makes its scratch
        plan: dict[str, object] = (
            {"uid": inst.uid, "scratch": str(inst.scratch)} if template
            else self.env.plan(inst.spec, inst.uid, inst.scratch, paths))
        inst.proc, parent = await self._fork_child(
            zygote, inst.id, inst.uid, inst.scratch, inst.output_path, env, plan)
        inst.start_mode = startmode.FORK
        return parent

    async def _fork_child(self, zygote: Zygote, key: str, uid: int | None, scratch: Path,
                          output_path: Path, env: dict[str, str],
                          plan: dict[str, object]) -> tuple[ForkedProcess, socket.socket]:
        """Have ``zygote`` fork a child; its process and the node's end of its socket."""
        sink = self.env.output(key, output_path)
        return await with_socket(sink, lambda child: zygote.fork(
            key, {"t": "fork", "uid": uid, "cwd": str(scratch), "env": env, "confine": plan},
            [child.fileno(), sink.write_fd]))

    async def _fork_template(self, inst: Instance, template: Template) -> socket.socket:
        assert template.zygote is not None
        own_uid = inst.uid
        inst.uid = template.uid
        try:
            sock = await self._fork(inst, template.zygote, [], template=True)
            if not is_child_of(template.zygote, template.uid, inst.pid):
                # a template runs user code: never act on a pid it names without checking
                sock.close()
                if isinstance(inst.proc, ForkedProcess):
                    inst.proc.kill()
                    inst.proc.close()
                inst.proc = None
                raise errors.Unavailable("the template named a process that is not its child")
        except BaseException:
            inst.uid = own_uid
            inst.start_mode = startmode.SPAWN
            if own_uid is not None and inst.scratch.exists():
                os.chown(inst.scratch, own_uid, own_uid)
            raise
        if own_uid is not None:
            self.env.release_uid(own_uid)
        inst.start_mode = startmode.TEMPLATE
        template.last_used = asyncio.get_running_loop().time()
        template.forks += 1
        return sock

    def _shadowed(self, paths: list[str], forkserver: Zygote) -> str | None:
        key = tuple(paths)
        provided = self._provided.get(key)
        if provided is None:
            provided = self._provided[key] = startmode.top_level_names(paths)
        clash = startmode.shadowed(provided, forkserver.modules)
        if not clash:
            return None
        return ("the function provides module(s) the fork server has preloaded: "
                + ", ".join(clash[:5]))

    # -- the fork server --------------------------------------------------------------------
    async def _fork_server(self) -> Zygote:
        current = self._forkserver
        if current is not None and current.alive:
            return current
        loop = asyncio.get_running_loop()
        if self._forkserver_task is None:
            failed = self._forkserver_failed_at
            if failed is not None and loop.time() - failed < FORKSERVER_RETRY_S:
                raise errors.Unavailable(
                    f"the fork server failed to start {loop.time() - failed:.0f} s ago")
            if current is not None:
                log.warning("the fork server (pid %s) exited; starting a new one", current.pid)
            env = dict(RUNTIME_ENV)
            if os.environ.get("FAASBOX_FORK_BARE") == "0":  # runtime/zygote.py
                env["FAASBOX_FORK_BARE"] = "0"
            self._forkserver_task = asyncio.create_task(start_fork_server(
                self.env.output_root / "forkserver.out", env))
        task = self._forkserver_task
        try:
            self._forkserver = await asyncio.shield(task)
            self._forkserver_failed_at = None
        except errors.Unavailable:
            self._forkserver_failed_at = loop.time()
            raise
        finally:
            if task.done() and self._forkserver_task is task:
                self._forkserver_task = None
        return self._forkserver

    # -- templates --------------------------------------------------------------------------
    async def _template(self, inst: Instance, paths: list[str],
                        notes: list[str]) -> Template | None:
        key = (inst.function, inst.version)
        self._cold_starts[key] += 1
        refused = self._refused.get(key)
        if refused is not None:
            notes.append(f"template: {refused}")
            return None
        task = self._templates.get(key)
        under_way = self._under_way[key]
        if task is None:
            if not startmode.template_due(self.mode, self._cold_starts[key], inst.ahead,
                                          under_way):
                return None
            task = asyncio.create_task(self._make_template(inst.function, inst.version,
                                                           inst.spec, paths))
            self._templates[key] = task
        if not task.done() and not startmode.template_awaited(self.mode, inst.ahead,
                                                              under_way):
            return None
        template = await asyncio.shield(task)
        if template is None:
            refused = self._refused.get(key)
            if refused is not None:
                notes.append(f"template: {refused}")
            return None
        if template.zygote is None or not template.zygote.alive:
            return None
        return template

    async def _make_template(self, function: str, version: int, spec: FunctionSpec,
                             paths: list[str]) -> Template | None:
        """A ready template, or None (the reason is logged, and kept when it is final)."""
        key = (function, version)
        try:
            forkserver = await self._fork_server()
            clash = self._shadowed(paths, forkserver)
            if clash:
                raise Refused(clash)
            template = await self._new_template(forkserver, function, version, spec, paths)
        except Refused as exc:
            log.info("no template for %s version %d: %s", function, version, exc)
            if self._templates.get(key) is asyncio.current_task():
                self._refused[key] = str(exc)
                del self._templates[key]
            return None
        except (errors.Unavailable, OSError) as exc:
            log.warning("cannot make a template of %s version %d: %s", function, version, exc)
            if self._templates.get(key) is asyncio.current_task():
                del self._templates[key]  # try again at a later cold start
            return None
        except Exception:
            log.exception("cannot make a template of %s version %d", function, version)
            if self._templates.get(key) is asyncio.current_task():
                del self._templates[key]  # try again at a later cold start
            return None
        if self._templates.get(key) is not asyncio.current_task():
            self._retire(template)  # dropped while it was being made
            return None
        log.info("template %s ready (import %.0f ms)", template.id, template.init_ms)
        return template

    async def _new_template(self, forkserver: Zygote, function: str, version: int,
                            spec: FunctionSpec, paths: list[str]) -> Template:
        node = self.env
        tid = f"tmpl-{function.replace('/', '.')}-{version}-{os.urandom(3).hex()}"
        template = Template((function, version), tid, node.allocate_uid(),
                            node.scratch_root / tid, node.output_root / f"{tid}.out",
                            node.cgroup(tid) if node.features.cgroup_dirs else None)
        parent: socket.socket | None = None
        try:
            template.scratch.mkdir(mode=0o700)
            if template.uid is not None:
                os.chown(template.scratch, template.uid, template.uid)
            if template.cgroup is not None:
                template.cgroup.create(spec.memory_mb)
            env = node.variables(function, version, spec, template.scratch, own=False)
            plan = node.plan(spec, template.uid, template.scratch, paths, template=True)
            sink = node.output(tid, template.output_path)
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                proc = await forkserver.fork(
                    tid, {"t": "template", "uid": template.uid,
                          "cwd": str(template.scratch), "env": env, "confine": plan},
                    [child.fileno(), sink.write_fd])
            finally:
                child.close()
                sink.start()
            template.zygote = Zygote("template", parent, proc)
            parent = None
            self._spawn_task(self._watch(template))
            await template.zygote.expect(HELLO_TIMEOUT_S)
            if template.cgroup is not None:
                template.cgroup.add(proc.pid)
            if plan.get("network") == "egress" and template.uid is not None:
                template.egress = (node.lease_slot(template.uid),
                                   list(spec.network_allow))
                await network.attach(proc.pid, *template.egress)
            template.zygote.send(node.load_message(function, version, spec, paths, tid))
            reply = await template.zygote.expect(INIT_TIMEOUT_S)
            if reply.get("t") != "ready":
                raise Refused(str(reply.get("reason") or (
                    f"the function failed to load: {reply.get('type')}: {reply.get('message')}"
                ))[:500])
            template.init_ms = reported_ms(reply.get("init_ms"))
            if template.cgroup is not None:
                # the import ran under memory_mb; from now on the template only forks, and
                # what its children copy before their move is charged here
                template.cgroup.raise_memory(
                    spec.memory_mb + CHILD_CHARGE_MB * (spec.max_instances + self.spares.count))
        except BaseException:
            if parent is not None:
                parent.close()
            if template.zygote is not None:
                template.zygote.kill()
                template.zygote.close()
            else:
                self._cleanup(template)
            raise
        template.last_used = asyncio.get_running_loop().time()
        template.spec = spec
        self._arm(template)
        # the first spare after the cold start that may be waiting for this template
        asyncio.get_running_loop().call_later(SPARE_DELAY_S, self.spares.refill, template)
        return template

    def _arm(self, template: Template, delay: float = TEMPLATE_IDLE_S) -> None:
        template.timer = asyncio.get_running_loop().call_later(delay, self._idle_check, template)

    def _idle_check(self, template: Template) -> None:
        idle = asyncio.get_running_loop().time() - template.last_used
        if idle < TEMPLATE_IDLE_S:
            self._arm(template, TEMPLATE_IDLE_S - idle)
            return
        log.info("retiring template %s after %.0f s without a fork", template.id, idle)
        self._retire(template)

    def _retire(self, template: Template) -> None:
        template.retired = True
        self.spares.drop_all(template)  # the template exits once its last child has
        if _made(self._templates.get(template.key)) is template:
            del self._templates[template.key]
        if template.timer is not None:
            template.timer.cancel()
        if template.zygote is not None:
            template.zygote.retire()

    async def _detach(self, egress: tuple[int, list[str]]) -> None:
        await network.detach(*egress)
        self.env.release_slot(egress[0])  # after: a new holder must not lose its rules

    async def _watch(self, template: Template) -> None:
        """Clean up after a template once its process is gone (retired, killed, crashed)."""
        assert template.zygote is not None
        await template.zygote.gone.wait()
        if _made(self._templates.get(template.key)) is template:
            del self._templates[template.key]  # a new one may be made at a later cold start
        if template.timer is not None:
            template.timer.cancel()
        self._cleanup(template)

    def _cleanup(self, template: Template) -> None:
        template.retired = True
        self.spares.drop_all(template)
        if template.cgroup is not None:
            template.cgroup.kill_all()
            if not template.cgroup.remove():
                self._spawn_task(template.cgroup.destroy())
        self.env.close_output(template.id)
        if template.egress is not None:
            self._spawn_task(self._detach(template.egress))
            template.egress = None
        if template.zygote is not None and isinstance(template.zygote.process, ForkedProcess):
            template.zygote.process.close()
        shutil.rmtree(template.scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            template.output_path.unlink()
        if template.uid is not None:
            self.env.release_uid(template.uid)

    def has_template(self, function: str, version: int) -> bool:
        """Whether ``version`` has a ready template whose zygote runs."""
        template = _made(self._templates.get((function, version)))
        return template is not None and template.zygote is not None and template.zygote.alive

    def drop_templates(self, function: str, below: int | None = None) -> None:
        """Retire the templates of ``function`` (only of versions below ``below``)."""
        for key in [k for k in self._templates if k[0] == function]:
            if below is not None and key[1] >= below:
                continue
            task = self._templates.pop(key)
            task.add_done_callback(self._retire_made)
        for table in (self._refused, self._cold_starts):
            for key in [k for k in table if k[0] == function]:
                if below is None or key[1] < below:
                    del table[key]

    def _retire_made(self, task: asyncio.Task[Template | None]) -> None:
        template = _made(task)
        if template is not None:
            self._retire(template)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        making = []
        for key in list(self._templates):
            task = self._templates.pop(key)
            if not task.done():
                task.cancel()
                making.append(task)
            task.add_done_callback(self._retire_made)
        if making:  # a cancelled make kills and closes what it had started
            await asyncio.wait(making, timeout=CLOSE_TIMEOUT_S)
        watchers = list(self._background)
        pending = self._forkserver_task
        if pending is not None:  # a start whose caller went away: its server is ours to end
            with contextlib.suppress(Exception):
                started = await asyncio.wait_for(asyncio.shield(pending), CLOSE_TIMEOUT_S)
                if self._forkserver is None or not self._forkserver.alive:
                    self._forkserver = started
                elif started is not self._forkserver:
                    started.close()
        if self._forkserver is not None:
            self._forkserver.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._forkserver.gone.wait(), CLOSE_TIMEOUT_S)
        if watchers:
            await asyncio.wait(watchers, timeout=CLOSE_TIMEOUT_S)


def _made(task: asyncio.Task[Template | None] | None) -> Template | None:
    """The template a finished template task made, if any."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()
