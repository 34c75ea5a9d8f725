"""The instance sandbox: what this machine can isolate, and the per-instance cgroup.

Everything is detected, never assumed. ``detect()`` probes cgroup v2, then v1, for a writable
memory, cpu and pids controller; whether instances can run under an unprivileged uid (the server
is root and the interpreter, faasbox and the data dir are readable by other users); rlimits are
always available on Linux. A missing feature is reported with its reason (``faasbox doctor``)
and the instance runs without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
GROUP_NAME = "faasbox"
PIDS_MAX = 256
NOFILE = 1024


@dataclass
class SandboxFeatures:
    enabled: bool = True
    cgroup_version: int | None = None
    # controller -> parent directory under which per-instance groups are made
    cgroup_dirs: dict[str, Path] = field(default_factory=dict)
    uid_drop: bool = False
    # how instances start (node/startmode.py): the setting, or spawn when fork is unusable
    start_mode: str = "auto"
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def memory_limit(self) -> bool:
        return "memory" in self.cgroup_dirs

    @property
    def cpu_weight(self) -> bool:
        return "cpu" in self.cgroup_dirs

    @property
    def pids_limit(self) -> bool:
        return "pids" in self.cgroup_dirs

    def report(self) -> list[tuple[str, bool, str]]:
        """``(feature, active, detail)`` rows for ``faasbox doctor`` and ``/v1/node``."""
        cg = f"cgroup v{self.cgroup_version}" if self.cgroup_version else "no cgroup"
        rows = [
            ("process group", self.enabled, "killpg on timeout and stop"),
            ("memory limit", self.memory_limit,
             f"{cg}: OOM kill at memory_mb" if self.memory_limit
             else self.reasons.get("memory", "unavailable") + "; RLIMIT_DATA used instead"),
            ("cpu weight", self.cpu_weight,
             f"{cg}: share proportional to memory_mb" if self.cpu_weight
             else self.reasons.get("cpu", "unavailable")),
            ("pids limit", self.pids_limit,
             f"{cg}: at most {PIDS_MAX} tasks" if self.pids_limit
             else self.reasons.get("pids", "unavailable") + "; RLIMIT_NPROC used instead"),
            ("rlimits", self.enabled, f"nofile {NOFILE}, no core files"),
            ("unprivileged uid", self.uid_drop,
             "each instance runs as its own uid" if self.uid_drop
             else self.reasons.get("uid", "unavailable")),
            ("private scratch dir", self.enabled, "cwd, HOME and TMPDIR; removed on stop"),
            ("limited environment", self.enabled, "only the function's env and the runtime's"),
            ("fast start", self.start_mode != "spawn", self._start_detail()),
        ]
        return rows

    def _start_detail(self) -> str:
        if self.start_mode != "spawn":
            return f"{self.start_mode}: {START_MODE_DETAIL[self.start_mode]}"
        why = self.reasons.get("start", "FAASBOX_START_MODE=spawn")
        return f"{why}; every instance is a new interpreter"


START_MODE_DETAIL = {
    "auto": "snapshot template from a version's 2nd cold start where safe, else fork server",
    "template": "snapshot template from a version's 1st cold start where safe, else fork server",
    "forkserver": "forked from a fork server with the runtime preloaded",
}


def detect(data_dir: Path, mode: str = "auto", start_mode: str = "auto") -> SandboxFeatures:
    if start_mode not in (*START_MODE_DETAIL, "spawn"):
        raise ValueError(f"FAASBOX_START_MODE must be auto, template, forkserver or spawn, "
                         f"not {start_mode!r}")
    if mode == "off":
        feats = SandboxFeatures(enabled=False)
        feats.reasons = {k: "sandbox disabled (FAASBOX_SANDBOX=off)"
                         for k in ("memory", "cpu", "pids", "uid")}
    else:
        feats = SandboxFeatures()
        _detect_cgroups(feats)
        _detect_uid(feats, data_dir)
    feats.start_mode = start_mode
    _detect_fork(feats)
    return feats


def _detect_fork(feats: SandboxFeatures) -> None:
    """Forked instances need pidfds (Linux 5.3) to be watched and signalled safely."""
    if feats.start_mode == "spawn":
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        feats.reasons["start"] = f"pidfd_open is not available ({exc}), so instances spawn"
        feats.start_mode = "spawn"


def _detect_cgroups(feats: SandboxFeatures) -> None:
    if os.geteuid() != 0:
        for c in ("memory", "cpu", "pids"):
            feats.reasons[c] = "the server is not root, so it cannot create cgroups"
        return
    if (CGROUP_MOUNT / "cgroup.controllers").exists():
        _detect_v2(feats)
    else:
        _detect_v1(feats)


def _detect_v2(feats: SandboxFeatures) -> None:
    parent = CGROUP_MOUNT / GROUP_NAME
    try:
        available = (CGROUP_MOUNT / "cgroup.controllers").read_text().split()
        wanted = [c for c in ("memory", "cpu", "pids") if c in available]
        parent.mkdir(exist_ok=True)
        for c in wanted:
            with contextlib.suppress(OSError):
                (CGROUP_MOUNT / "cgroup.subtree_control").write_text(f"+{c}")
            (parent / "cgroup.subtree_control").write_text(f"+{c}")
    except OSError as exc:
        for c in ("memory", "cpu", "pids"):
            feats.reasons[c] = f"cgroup v2 is not writable here ({exc.strerror})"
        return
    feats.cgroup_version = 2
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    for c in ("memory", "cpu", "pids"):
        if c in enabled:
            feats.cgroup_dirs[c] = parent
        else:
            feats.reasons[c] = f"cgroup v2 controller {c} cannot be delegated here"


def _detect_v1(feats: SandboxFeatures) -> None:
    for c in ("memory", "cpu", "pids"):
        root = CGROUP_MOUNT / c
        if not root.is_dir():
            feats.reasons[c] = f"no cgroup v1 {c} controller mounted"
            continue
        parent = root / GROUP_NAME
        try:
            parent.mkdir(exist_ok=True)
            probe = parent / f"probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as exc:
            feats.reasons[c] = f"cgroup v1 {c} is not writable here ({exc.strerror})"
            continue
        feats.cgroup_dirs[c] = parent
        feats.cgroup_version = 1


def _detect_uid(feats: SandboxFeatures, data_dir: Path) -> None:
    if os.geteuid() != 0:
        feats.reasons["uid"] = "the server is not root, so instances run as its own uid"
        return
    import orjson

    import faasbox

    needed = [
        Path(sys.executable).resolve(),
        Path(sysconfig.get_paths()["stdlib"]).resolve() / "os.py",
        Path(faasbox.__file__).resolve(),
        Path(orjson.__file__).resolve(),
        data_dir.resolve(),
    ]
    for path in needed:
        blocker = first_inaccessible(path)
        if blocker is not None:
            feats.reasons["uid"] = (
                f"{blocker} is not readable by other users (needed for {path}); instances run "
                f"as root. Grant traversal (chmod o+x {blocker}) to enable"
            )
            return
    feats.uid_drop = True


def first_inaccessible(path: Path) -> Path | None:
    """The first directory on ``path`` (or the file itself) that a uid other than its owner and
    group cannot traverse or read; None when every step is open to others."""
    for ancestor in reversed([path, *path.parents]):
        try:
            mode = ancestor.stat().st_mode
        except OSError:
            return ancestor
        need = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
        if not mode & need:
            return ancestor
    return None


class Cgroup:
    """One instance's cgroup (one directory per v1 controller, or one v2 directory)."""

    def __init__(self, feats: SandboxFeatures, name: str) -> None:
        self.version = feats.cgroup_version
        self.dirs: dict[str, Path] = {c: p / name for c, p in feats.cgroup_dirs.items()}

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

    def _write(self, controller: str, name: str, value: str) -> None:
        d = self.dirs.get(controller)
        if d is None:
            return
        try:
            (d / name).write_text(value)
        except OSError as exc:  # optional knobs (memsw, swap) may be missing
            log.debug("cgroup %s: cannot set %s: %s", d, name, exc)

    def add(self, pid: int) -> None:
        for d in set(self.dirs.values()):
            (d / "cgroup.procs").write_text(str(pid))

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
        for d in set(self.dirs.values()):
            try:
                pids = (d / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        for d in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                d.rmdir()


def rlimits(feats: SandboxFeatures, memory_mb: int) -> dict[str, int]:
    """The resource limits an instance sets on itself before it loads user code (hard and
    soft alike, so the code cannot raise them again)."""
    limits = {"RLIMIT_CORE": 0, "RLIMIT_NOFILE": NOFILE}
    if not feats.memory_limit:
        limits["RLIMIT_DATA"] = (memory_mb + 64) * 2**20
    if not feats.pids_limit and feats.uid_drop:
        limits["RLIMIT_NPROC"] = PIDS_MAX
    return limits
