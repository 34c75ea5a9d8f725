"""The instance sandbox: what this machine can isolate (the cgroups are in ``cgroups.py``).

Everything is detected, never assumed. ``detect()`` probes cgroup v2, then v1, for a writable
memory, cpu and pids controller; whether instances can run under an unprivileged uid (the server
is root and the interpreter, faasbox and the data dir are readable by other users); rlimits are
always available on Linux. A missing feature is reported with its reason (``faasbox doctor``)
and the instance runs without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
GROUP_NAME = "faasbox"
PIDS_MAX = 256
NOFILE = 1024
OUTPUT_CAP = 2**20  # bytes of an instance's output file (FAASBOX_OUTPUT_CAP_BYTES)
EPHEMERAL_CAP_MB = 10240  # the most ephemeral_storage_mb a version may ask (FAASBOX_MAX_...)
UID_LOCK_DIR = Path("/run/faasbox/uids")  # host-wide uid leases (FAASBOX_UID_LOCK_DIR)
CGROUP_REMOVE_WAIT_S = 2.0
# what runtime/confine.py's probe tries, as reported (feature name -> probe keys needed)
CONFINE_FEATURES = {
    "mount namespace": ("mount namespace", "private mounts", "read-only root", "tmpfs",
                        "masked paths"),
    "private /proc": ("mount namespace", "private mounts", "private /proc"),
    "network namespace": ("network namespace",),
    "pid namespace": ("pid namespace",),
    "no_new_privs": ("no_new_privs",),
    "seccomp": ("seccomp",),
}
CPU_PERIOD_US = 10_000


@dataclass
class SandboxFeatures:
    enabled: bool = True
    cgroup_version: int | None = None
    # controller -> parent directory under which per-instance groups are made
    cgroup_dirs: dict[str, Path] = field(default_factory=dict)
    # the cgroup v1 cpuset parent under which service groups get dedicated CPUs
    cpuset_dir: Path | None = None
    uid_drop: bool = False
    # host-wide uid leases (lock files), so that servers on one host never share a uid
    uid_lock_dir: Path | None = None
    # runtime/confine.py features that work here (names of CONFINE_FEATURES)
    confine: set[str] = field(default_factory=set)
    # network: "egress" needs veth pairs and nftables NAT on top of the namespace
    egress: bool = False
    output_cap: int = OUTPUT_CAP
    ephemeral_cap_mb: int = EPHEMERAL_CAP_MB
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

    @property
    def mount_ns(self) -> bool:
        return "mount namespace" in self.confine

    @property
    def net_ns(self) -> bool:
        return "network namespace" in self.confine

    def plan(self, *, uid: int | None, scratch: Path, data_dir: Path, read_only: list[str],
             network: str, tmpfs_mb: int, template: bool = False) -> dict[str, object]:
        """What runtime/confine.py does in a new instance (or template) before user code."""
        c = self.confine
        return {
            "uid": uid, "scratch": str(scratch), "data_dir": str(data_dir),
            "read_only": read_only, "tmpfs_mb": tmpfs_mb, "template": template,
            "mount": self.mount_ns, "proc": self.mount_ns and "private /proc" in c,
            "network": network if self.net_ns else "host",
            "pid": "pid namespace" in c,
            "no_new_privs": "no_new_privs" in c, "seccomp": "seccomp" in c,
        }

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
            ("dedicated cpus", self.cpuset_dir is not None,
             "cgroup v1 cpuset: a service group with cpus gets CPUs of its own"
             if self.cpuset_dir is not None else self._why("cpuset")
             + "; a service group's cpus is a quota on shared CPUs"),
            ("rlimits", self.enabled, f"nofile {NOFILE}, no core files"),
            ("unprivileged uid", self.uid_drop,
             "each instance runs as its own uid" if self.uid_drop
             else self.reasons.get("uid", "unavailable")),
            ("host-unique uids", self.uid_lock_dir is not None,
             f"uids leased host-wide under {self.uid_lock_dir}" if self.uid_lock_dir
             else self.reasons.get("uid_lock", self.reasons.get("uid", "unavailable"))),
            ("mount namespace", self.mount_ns,
             "code and packages read-only, the rest of the data dir hidden, host read-only"
             if self.mount_ns else self._why("mount namespace")),
            ("private tmpfs", self.mount_ns,
             "scratch, /tmp, /var/tmp, /dev/shm on one tmpfs of ephemeral_storage_mb "
             f"(at most {self.ephemeral_cap_mb} MB); gone with the instance"
             if self.mount_ns else self._why("mount namespace") + "; scratch dir on disk"),
            ("private /proc", self.mount_ns and "private /proc" in self.confine,
             "hidepid=invisible: only its own processes"
             if self.mount_ns and "private /proc" in self.confine
             else self._why("private /proc" if self.mount_ns else "mount namespace")),
            ("pid namespace", "pid namespace" in self.confine,
             "pid 1 of a namespace of its own: no pid or uid names another's processes"
             if "pid namespace" in self.confine else self._why("pid namespace")
             + "; other instances can be named by pid (kill 0, getpriority)"),
            ("network namespace", self.net_ns,
             "network none (loopback only) by default; egress on request"
             if self.net_ns else self._why("network namespace")
             + "; instances use the host network"),
            ("network egress", self.egress,
             "veth + NAT; host addresses and private ranges blocked unless network_allow"
             if self.egress else self.reasons.get("egress", "unavailable")
             + "; network: egress runs on the host network"),
            ("no_new_privs", "no_new_privs" in self.confine,
             "setuid binaries cannot raise privileges" if "no_new_privs" in self.confine
             else self._why("no_new_privs")),
            ("seccomp", "seccomp" in self.confine,
             "denies ptrace, mount, bpf, keyctl, kexec, modules, new namespaces, ..."
             if "seccomp" in self.confine else self._why("seccomp")),
            ("output cap", self.enabled,
             f"instance output files keep the first {self.output_cap} bytes"),
            ("private scratch dir", self.enabled, "cwd, HOME and TMPDIR; removed on stop"),
            ("limited environment", self.enabled, "only the function's env and the runtime's"),
            ("fast start", self.start_mode != "spawn", self._start_detail()),
        ]
        return rows

    def _why(self, feature: str) -> str:
        return self.reasons.get(feature, "unavailable")

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
                         for k in ("memory", "cpu", "pids", "cpuset", "uid", "egress",
                                   *CONFINE_FEATURES)}
    else:
        feats = SandboxFeatures()
        # FAASBOX_SANDBOX_DISABLE="seccomp,network egress,...": protections turned off by
        # name (to show and test the degraded paths, or around a kernel that misbehaves)
        disabled = {n.strip() for n in os.environ.get("FAASBOX_SANDBOX_DISABLE", "").split(",")
                    if n.strip()}
        _detect_cgroups(feats)
        _detect_confine(feats)
        for name in disabled & set(CONFINE_FEATURES):
            feats.confine.discard(name)
            feats.reasons[name] = "disabled by FAASBOX_SANDBOX_DISABLE"
        _detect_uid(feats, data_dir)
        _detect_uid_leases(feats)
        if "dedicated cpus" in disabled:
            feats.cpuset_dir = None
            feats.reasons["cpuset"] = "disabled by FAASBOX_SANDBOX_DISABLE"
        if "network egress" in disabled:
            feats.reasons["egress"] = "disabled by FAASBOX_SANDBOX_DISABLE"
        else:
            _detect_egress(feats)
    feats.output_cap = int(os.environ.get("FAASBOX_OUTPUT_CAP_BYTES", OUTPUT_CAP))
    feats.ephemeral_cap_mb = int(os.environ.get("FAASBOX_MAX_EPHEMERAL_STORAGE_MB",
                                                EPHEMERAL_CAP_MB))
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


def _detect_confine(feats: SandboxFeatures) -> None:
    """Run runtime/confine.py's probe in a throw-away process (namespaces cannot be tried in
    the server itself) and keep the features whose every step worked."""
    if os.geteuid() != 0:
        for name in CONFINE_FEATURES:
            feats.reasons[name] = "the server is not root"
        return
    try:
        out = subprocess.run([sys.executable, "-I", "-m", "faasbox.runtime.confine"],
                             capture_output=True, timeout=30, check=True).stdout
        found: dict[str, str | None] = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        for name in CONFINE_FEATURES:
            feats.reasons[name] = f"the probe failed: {exc}"
        return
    for name, steps in CONFINE_FEATURES.items():
        failed = [f"{step}: {found.get(step, 'not tried')}" for step in steps
                  if found.get(step, "not tried") is not None]
        if failed:
            feats.reasons[name] = "; ".join(failed)
        else:
            feats.confine.add(name)


def _detect_uid_leases(feats: SandboxFeatures) -> None:
    if not feats.uid_drop:
        return
    lock_dir = Path(os.environ.get("FAASBOX_UID_LOCK_DIR", str(UID_LOCK_DIR)))
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = lock_dir / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        feats.reasons["uid_lock"] = (f"{lock_dir} is not writable ({exc.strerror}); uids are "
                                     "unique within this server only")
        return
    feats.uid_lock_dir = lock_dir


def _detect_egress(feats: SandboxFeatures) -> None:
    from faasbox.node import network

    if not feats.net_ns:
        feats.reasons["egress"] = "no network namespaces"
        return
    why = network.egress_unavailable()
    if why is not None:
        feats.reasons["egress"] = why
    else:
        feats.egress = True


def _detect_cgroups(feats: SandboxFeatures) -> None:
    if os.geteuid() != 0:
        for c in ("memory", "cpu", "pids", "cpuset"):
            feats.reasons[c] = "the server is not root, so it cannot create cgroups"
        return
    if (CGROUP_MOUNT / "cgroup.controllers").exists():
        _detect_v2(feats)
        feats.reasons["cpuset"] = "dedicated CPUs need the cgroup v1 cpuset controller"
    else:
        _detect_v1(feats)
        _detect_cpuset(feats)


def _detect_cpuset(feats: SandboxFeatures) -> None:
    root = CGROUP_MOUNT / "cpuset"
    if not (root / "cpuset.cpus").is_file():
        feats.reasons["cpuset"] = "no cgroup v1 cpuset controller mounted"
        return
    parent = root / GROUP_NAME
    try:
        parent.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset starts empty
            if not (parent / knob).read_text().strip():
                (parent / knob).write_text((root / knob).read_text().strip())
    except OSError as exc:
        feats.reasons["cpuset"] = f"cgroup v1 cpuset is not writable here ({exc.strerror})"
        return
    feats.cpuset_dir = parent


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
    for c in ("memory", "cpu", "pids", "freezer"):
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
    ]
    if not feats.mount_ns:  # else the data dir is a tmpfs of the instance's own
        needed.append(data_dir.resolve())
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


def rlimits(feats: SandboxFeatures, memory_mb: int) -> dict[str, int]:
    """The resource limits an instance sets on itself before it loads user code (hard and
    soft alike, so the code cannot raise them again)."""
    limits = {"RLIMIT_CORE": 0, "RLIMIT_NOFILE": NOFILE}
    if not feats.memory_limit:
        limits["RLIMIT_DATA"] = (memory_mb + 64) * 2**20
    if not feats.pids_limit and feats.uid_drop:
        limits["RLIMIT_NPROC"] = PIDS_MAX
    return limits
