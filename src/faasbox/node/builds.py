"""Dependency builds in a sandbox: ``pip install`` as an unprivileged build uid, in a cgroup
of its own (memory, CPU, pids), confined like an instance (runtime/build.py) but on the host
network (it needs the package index), seeing of the data dir only the function's code
(read-only) and its own output folder. Where this machine cannot (the server is not root, or
has no mount namespaces), builds run as the server's user, and ``reason`` says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from faasbox.node.cgroups import Cgroup
from faasbox.node.environment import InstanceEnvironment

BUILD_MEMORY_MB = 2048
BUILD_TMPFS_MB = 2048  # pip's cache and build folders


class BuildSandbox:
    def __init__(self, env: InstanceEnvironment) -> None:
        self.env = env

    @property
    def reason(self) -> str | None:
        """Why builds are not sandboxed here (None: they are)."""
        f = self.env.features
        if not f.enabled:
            return "the sandbox is off"
        if not f.uid_drop:
            return "instances cannot have uids of their own (the server is not root?)"
        if not f.mount_ns:
            return "no mount namespaces"
        return None

    def report(self) -> tuple[str, bool, str]:
        """The ``faasbox doctor`` row of builds."""
        why = self.reason
        return ("sandboxed builds", why is None,
                f"pip runs as a build uid in a cgroup ({BUILD_MEMORY_MB} MB) and a mount"
                " namespace that shows it only the code and its output" if why is None
                else f"{why}: pip runs as the server's user")

    async def pip(self, code: Path, target: Path, args: list[str],
                  timeout_s: float) -> tuple[int | None, bytes]:
        """Run ``pip install ARGS`` for ``code`` into ``target``; ``(exit code, output)``,
        exit code None when it ran past ``timeout_s`` (and was killed)."""
        if self.reason is not None:
            # -I: the code folder (the cwd) is not on sys.path: a pip/ in it would run
            return await _run([sys.executable, "-I", "-m", "pip", "install", *args], code,
                              None, timeout_s)
        uid = self.env.allocate_uid()
        name = f"build-{os.urandom(4).hex()}"
        cgroup = self.env.cgroup(name) if self.env.features.cgroup_dirs else None
        try:
            if cgroup is not None:
                cgroup.create(BUILD_MEMORY_MB)
            if uid is not None:
                os.chown(target, uid, uid)
            plan = self.env.features.plan(
                uid=uid, scratch=self.env.scratch_root / name, data_dir=self.env.hidden_dir,
                read_only=[str(code), *self.env.runtime_paths()], network="host",
                tmpfs_mb=BUILD_TMPFS_MB)
            plan["read_write"] = [str(target)]
            plan["code"] = str(code)
            plan["proc"] = False  # pip reads /proc/self for itself only; keep it simple
            return await _run([sys.executable, "-I", "-m", "faasbox.runtime.build",
                               json.dumps(plan), *args], code, cgroup, timeout_s)
        finally:
            if cgroup is not None:
                cgroup.kill_all()
                cgroup.remove()
            _own(target)
            if uid is not None:
                self.env.release_uid(uid)


async def _run(cmd: list[str], cwd: Path, cgroup: Cgroup | None,
               timeout_s: float) -> tuple[int | None, bytes]:
    def enter() -> None:  # in the child, before exec: nothing it starts escapes the cgroup
        if cgroup is not None:
            cgroup.add(os.getpid())

    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=enter)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return None, b""
    return proc.returncode, out


def _own(root: Path) -> None:
    """What a build uid wrote becomes the server's (instances read it, never write it)."""
    if not root.exists():
        return
    os.chown(root, os.getuid(), os.getgid())
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, n), os.getuid(), os.getgid())
