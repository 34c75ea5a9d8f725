"""What a new instance (or template) does to itself, as root, before it runs any user code.

The node (spawn) or a zygote (fork) starts the process as root; :func:`confine` then, in this
order: unshares its own mount, IPC, UTS and (unless ``network`` is ``host``) network namespace;
makes every inherited mount read-only and ``nosuid``; mounts one private tmpfs of
``tmpfs_mb`` over the data dir and binds its parts to ``/tmp``, ``/var/tmp`` and
``/dev/shm``; binds the version's code and packages back read-only (nothing else of the data
dir is visible); mounts a ``/proc`` of its own with ``hidepid=invisible``; masks what tells of
the host or of other instances (the cgroup tree, ``/proc/locks``, …: :func:`mask`); brings
its loopback up; drops to its uid (no supplementary groups); sets ``no_new_privs``; loads the
seccomp filter.

``plan`` (a dict, JSON on the wire) says which of these to do; the node leaves out what
:func:`probe` found impossible on this machine. A process that is not root (a template's child,
which shares its template's namespaces, uid and filter) only makes and enters its scratch dir.

With ``pid`` in the plan the process is also pid 1 of a pid namespace of its own, so that no
system call names another tenant's processes (``kill(pid, 0)``, ``getpriority(PRIO_USER)``, …
see only the namespace). A namespace takes effect for a process's *children*, so whoever
forks it makes the namespace first: a zygote forks inside :func:`pid_namespace_for_child`; a
spawned instance forks itself once (:func:`become_pid_one`), its first process staying behind
to wait for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NEW_NAMESPACES = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                  | CLONE_NEWPID | CLONE_NEWNET)

# covered in an instance's mount namespace (the paths container runtimes mask, and more)
# (the host's sysfs lists every egress instance's link with its byte counters, and
# /proc/cgroups and uevent_seqnum count instances starting and stopping)
MASKED_DIRS = ("/sys/fs/cgroup", "/sys/firmware", "/sys/devices/virtual/powercap",
               "/sys/class/net", "/sys/devices/virtual/net",
               "/proc/acpi", "/proc/asound", "/proc/scsi")
MASKED_FILES = ("/proc/locks", "/proc/cgroups", "/sys/kernel/uevent_seqnum", "/proc/kcore",
                "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug")

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and arm64
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# What a function never needs. Denied with EPERM (clone3 with ENOSYS, so that the C library
# falls back to clone, whose namespace flags are checked).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "vhangup", "lookup_dcookie",
    "personality", "uselib",
)
ENOSYS_SYSCALLS = ("clone3",)

_libc: ctypes.CDLL | None = None
_filter: bytes | None = None  # the compiled seccomp program (BPF), made once per process


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(libc().mount(
        None if source is None else source.encode(), target.encode(),
        None if fstype is None else fstype.encode(), ctypes.c_ulong(flags),
        None if data is None else data.encode()), f"mount {target}")


def read_only_tree(path: str = "/") -> None:
    """Every mount under ``path`` read-only and nosuid (in this mount namespace only)."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fn = libc().syscall
    fn.restype = ctypes.c_long
    res = fn(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(-100), path.encode(),
             ctypes.c_uint(AT_RECURSIVE), buf, ctypes.c_size_t(len(attr)))
    _check(int(res), "mount_setattr")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def no_new_privs() -> None:
    u = ctypes.c_ulong
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, u(1), u(0), u(0), u(0)), "prctl(NO_NEW_PRIVS)")


# -- seccomp ---------------------------------------------------------------------------------
class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def compile_filter() -> bytes:
    """The seccomp program (BPF) of ``DENIED_SYSCALLS`` and of clone with a namespace flag,
    made with libseccomp; raises OSError when libseccomp is missing or fails."""
    global _filter
    if _filter is not None:
        return _filter
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        name = ctypes.util.find_library("seccomp")  # slow (runs ldconfig): only as a fallback
        if name is None:
            raise OSError(errno.ENOENT, "libseccomp is not installed") from None
        lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    try:
        rules: list[tuple[str, int, list[_ArgCmp]]] = [
            (n, _act_errno(errno.EPERM), []) for n in DENIED_SYSCALLS]
        rules += [(n, _act_errno(errno.ENOSYS), []) for n in ENOSYS_SYSCALLS]
        for ns_flag in (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                        CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET):
            rules.append(("clone", _act_errno(errno.EPERM),
                          [_ArgCmp(0, SCMP_CMP_MASKED_EQ, ns_flag, ns_flag)]))
        for sys_name, action, cmps in rules:
            nr = lib.seccomp_syscall_resolve_name(sys_name.encode())
            if nr < 0:  # not a syscall on this architecture
                continue
            arr = (_ArgCmp * max(1, len(cmps)))(*cmps)
            rc = lib.seccomp_rule_add_array(ctypes.c_void_p(ctx), action, nr, len(cmps), arr)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add {sys_name}: {os.strerror(-rc)}")
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctypes.c_void_p(ctx), w)
            os.close(w)
            w = -1
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctypes.c_void_p(ctx))
    _filter = b"".join(chunks)
    return _filter


def load_filter(program: bytes) -> None:
    """Install a BPF seccomp program on this thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    n = len(program) // 8
    buf = ctypes.create_string_buffer(program, len(program))
    prog = struct.pack("HxxxxxxQ", n, ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    u = ctypes.c_ulong
    _check(libc().prctl(PR_SET_SECCOMP, u(SECCOMP_MODE_FILTER), pbuf, u(0), u(0)), "seccomp")


# -- pid namespaces ----------------------------------------------------------------------------
_own_pid_ns: int | None = None  # a zygote's fd of its own pid namespace, to return to
_waited_on = False  # this process is a spawned instance's pid 1 (become_pid_one)


@contextlib.contextmanager
def pid_namespace_for_child() -> Iterator[None]:
    """The fork made inside makes a child that is pid 1 of a new pid namespace (the caller,
    root, stays where it is and returns to its own namespace for its later children)."""
    global _own_pid_ns
    if _own_pid_ns is None:
        _own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    unshare(CLONE_NEWPID)
    try:
        yield
    finally:
        if os.getpid() != 1:  # in the parent (the child is pid 1 and has nowhere to return)
            try:
                setns(_own_pid_ns, CLONE_NEWPID)
            except OSError:
                # every later child would land in this namespace: end here (a zygote's end
                # closes its control socket; the node starts a new one and drops the child)
                os._exit(70)


def forget_pid_namespace() -> None:
    """In a zygote's child: close the zygote's handle on its pid namespace."""
    global _own_pid_ns
    if _own_pid_ns is not None:
        os.close(_own_pid_ns)
        _own_pid_ns = None


def become_pid_one(uid: int | None = None) -> None:
    """Fork into a new pid namespace: returns in the child (pid 1); the first process stays
    behind, holding nothing, as ``uid``, waits for it and exits as it did (a spawned
    instance)."""
    global _waited_on
    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        _waited_on = True
        parent_death_kills()
        os.setsid()  # out of the waiter's group: kill(0, sig) must not reach it
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 65536)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):  # killed by a signal: the same end, for the node to report
        import signal

        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def parent_death_kills() -> None:
    """SIGKILL this process when its parent dies (cleared by a change of uid: set again)."""
    u = ctypes.c_ulong
    libc().prctl(PR_SET_PDEATHSIG, u(9), u(0), u(0), u(0))


# -- the sequence ----------------------------------------------------------------------------
def confine(plan: dict[str, Any]) -> None:
    """Apply ``plan`` to this process (see the module doc); raises OSError on any failure,
    and the caller then exits without running user code."""
    uid = plan.get("uid")
    scratch = str(plan["scratch"])
    if os.geteuid() != 0:  # a template's child: everything else is inherited
        os.makedirs(scratch, mode=0o700, exist_ok=True)
        os.chdir(scratch)
        return
    flags = 0
    if plan.get("mount"):
        flags |= CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if plan.get("network") in ("none", "egress"):
        flags |= CLONE_NEWNET
    if flags:
        unshare(flags)
    if plan.get("mount"):
        _mounts(plan, uid)
    if flags & CLONE_NEWNET:
        loopback_up()
    if flags & CLONE_NEWUTS:
        libc().sethostname(b"faasbox", ctypes.c_size_t(7))
    os.chdir(scratch)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if plan.get("no_new_privs"):
        no_new_privs()
    if _waited_on:
        parent_death_kills()  # again: the change of uid cleared it
    if plan.get("seccomp"):
        load_filter(compile_filter())


def mask() -> None:
    """Cover what tells of the host or of other instances: an empty read-only tmpfs over
    ``MASKED_DIRS`` (the cgroup tree names every instance, ``tenant.function-…``, and shows
    its memory), ``/dev/null`` over ``MASKED_FILES`` (``/proc/locks`` lists the server's
    locks, one per live instance's uid)."""
    for path in MASKED_DIRS:
        if os.path.isdir(path):
            mount("faasbox", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=4k,nr_inodes=16,mode=0555")
    for path in MASKED_FILES:
        if os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _mounts(plan: dict[str, Any], uid: int | None) -> None:
    data_dir = str(plan["data_dir"])
    scratch = str(plan["scratch"])
    # what stays visible of the data dir, opened before the tmpfs covers it
    keep = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in plan.get("read_only", ())]
    writable = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY))
                for p in plan.get("read_write", ())]
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing here propagates to the host
        read_only_tree("/")
        size = int(plan.get("tmpfs_mb", 512))
        mount("faasbox", data_dir, "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={size}m,mode=0755,nr_inodes={max(1024, size * 256)}")
        top = os.open(data_dir, os.O_PATH | os.O_DIRECTORY)
        try:
            shared = ((".tmp", "/tmp"), (".var-tmp", "/var/tmp"), (".shm", "/dev/shm"))
            for sub, _ in shared:
                path = os.path.join(data_dir, sub)
                os.mkdir(path)
                os.chmod(path, 0o1777)
            for sub, target in shared:
                if os.path.isdir(target):
                    mount(f"/proc/self/fd/{top}/{sub}", target, None, MS_BIND)
            # if the data dir lies under one of those, it was just hidden: bind it back
            here = os.stat(data_dir) if os.path.isdir(data_dir) else None
            mine = os.fstat(top)
            if here is None or (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
                os.makedirs(data_dir, mode=0o755, exist_ok=True)
                mount(f"/proc/self/fd/{top}", data_dir, None, MS_BIND)
        finally:
            os.close(top)
        for path, fd in keep:
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        for path, fd in writable:  # a build's output folder
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        os.makedirs(scratch, mode=0o700, exist_ok=True)
        os.chmod(scratch, 0o700)
        if uid is not None:
            os.chown(scratch, uid, uid)
            if plan.get("template"):  # its children make their scratch dirs beside it
                parent = os.path.dirname(scratch)
                os.chown(parent, uid, uid)
                os.chmod(parent, 0o700)
        if plan.get("proc"):
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        mask()
    finally:
        for _, fd in keep + writable:
            os.close(fd)


# -- what this machine allows ----------------------------------------------------------------
def probe() -> dict[str, str | None]:
    """Try each protection in this (throw-away) process: ``{feature: None | why not}``."""
    found: dict[str, str | None] = {}

    def attempt(name: str, fn: Any) -> bool:
        try:
            fn()
        except (OSError, AttributeError) as exc:
            found[name] = str(exc) or type(exc).__name__
            return False
        found[name] = None
        return True

    attempt("seccomp", compile_filter)
    def new_net() -> None:
        unshare(CLONE_NEWNET)
        loopback_up()

    attempt("network namespace", new_net)
    if attempt("mount namespace", lambda: unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)):
        attempt("private mounts", lambda: mount(None, "/", None, MS_REC | MS_PRIVATE))
        attempt("read-only root", lambda: read_only_tree("/"))
        attempt("tmpfs", lambda: mount("faasbox", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
                                       "size=1m"))
        attempt("private /proc", lambda: mount("proc", "/proc", "proc",
                                               MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2"))
        attempt("masked paths", mask)
    attempt("pid namespace", _new_pid)
    attempt("no_new_privs", no_new_privs)
    if found["seccomp"] is None:
        attempt("seccomp", lambda: load_filter(compile_filter()))
    return found


def _new_pid() -> None:
    with pid_namespace_for_child():
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(errno.EINVAL, "a child in a new pid namespace is not its pid 1")


def main() -> None:
    import json
    import sys

    json.dump(probe(), sys.stdout)


if __name__ == "__main__":
    main()
