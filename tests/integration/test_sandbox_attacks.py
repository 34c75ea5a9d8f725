"""Attacks on the instance sandbox (docs/sandbox.md): each deploys a function that tries one
thing a function must not be able to do, asserts that it fails, and that the platform serves
the next call. The filesystem, identity and process attacks run under every start mode (a
spawned instance, a fork-server instance, a template's instance)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import faasbox
from faasbox.node.sandbox import detect
from faasbox.node.zygote import parent_and_uid
from tests.conftest import ERRNO_OF, Server, open_tempdir, remove_tree

pytestmark = [
    pytest.mark.xdist_group("sandbox-attacks"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root"),
]

ATTACK = {"main.py": r'''
import ctypes, errno, os, socket, subprocess, sys, time

libc = ctypes.CDLL(None, use_errno=True)
''' + ERRNO_OF + r'''

def _sys(res):
    return 0 if res == 0 else ctypes.get_errno()

def fs(event):
    out = {}
    data = event["data"]
    for name, path in {"db": f"{data}/faasbox.db", "admin_key": f"{data}/admin.key",
                       "instances": f"{data}/instances", "root_home": "/root/.bashrc"}.items():
        out[name] = _errno(lambda: open(path, "rb").read(1))
    here = os.path.dirname(os.path.abspath(__file__))
    out["other_code"] = [_errno(lambda: open(f"{d}/main.py", "rb").read(1))
                         for d in event.get("code_dirs", []) if d != here]
    out["data_listing"] = sorted(os.listdir(data)) if os.path.isdir(data) else None
    code = f"{data}/code"
    out["code_listing"] = sorted(os.listdir(code)) if os.path.isdir(code) else None
    out["write_code"] = _errno(lambda: open(os.path.join(here, "x.py"), "w").write("x"))
    out["write_etc"] = _errno(lambda: open("/etc/faasbox-attack", "w").write("x"))
    out["write_usr"] = _errno(lambda: open("/usr/faasbox-attack", "w").write("x"))
    for d in ("/tmp", "/var/tmp", "/dev/shm", os.getcwd()):
        mark = os.path.join(d, f"mark-{os.path.basename(os.getcwd())}")
        out[f"write {d}"] = _errno(lambda: open(mark, "w").write("x"))
    out["tmp_listing"] = sorted(os.listdir("/tmp"))
    out["cwd"] = os.getcwd()
    out["scratch_listing"] = sorted(os.listdir(os.path.dirname(os.getcwd())))
    return out

def fill(event):
    try:
        with open("/tmp/big", "wb") as f:
            for _ in range(event["mb"]):
                f.write(b"\0" * 2**20)
                f.flush()
        return {"errno": 0}
    except OSError as exc:
        return {"errno": exc.errno}
    finally:
        with __import__("contextlib").suppress(OSError):
            os.unlink("/tmp/big")

def procs(event):
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    uids = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids.add(int(line.split()[1]))
        except OSError:
            pass
    pid1_uid = None  # a template (pid 1 of its children) is not dumpable: hidden
    if os.path.exists("/proc/1/status"):
        with open("/proc/1/status") as f:
            pid1_uid = [int(l.split()[1]) for l in f if l.startswith("Uid:")][0]
    return {"pids": len(pids), "uids": sorted(uids), "me": os.getuid(), "pid1_uid": pid1_uid}

def untie(event):
    """Try to end what waits for this instance (a spawned one's first process) and to outlive
    it: no signal at its parent's death, SIGTERM to its whole process group, a new session."""
    import signal
    libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
    if os.getpid() == 1:  # (a template's child is not: it would end itself)
        os.kill(0, signal.SIGTERM)  # ignored by a pid 1 itself
    setsid = _errno(os.setsid)
    return {"setsid": setsid, "instance": CONTEXT[0].instance_id}

def environ(event):
    return {"now": {k: os.environ.get(k) for k in event["keys"]},
            "gmtoff": time.localtime().tm_gmtoff, "instance": CONTEXT[0].instance_id}

def neighbours(event):
    """What system calls that check no permission tell of another instance, by its host pid
    and uid, and which pids answer at all."""
    pid = event["pid"]
    ctypes.set_errno(0)
    libc.getpriority(2, event["uid"])  # PRIO_USER
    prio_user = ctypes.get_errno()
    def answers(p):
        return libc.kill(p, 0) == 0 or ctypes.get_errno() == errno.EPERM
    return {"kill": _sys(libc.kill(pid, 0)), "sid": _errno(lambda: os.getsid(pid)),
            "sched": _errno(lambda: os.sched_getscheduler(pid)),
            "affinity": _errno(lambda: os.sched_getaffinity(pid)),
            "prio_user": prio_user, "me": os.getpid(),
            "answering": [p for p in range(1, max(pid, 1 << 15) + 1000) if answers(p)]}

def cgroups(event):
    """Every file under the cgroup tree this instance can see, and what a read of another
    instance's memory use gives."""
    seen = []
    for dirpath, dirs, files in os.walk("/sys/fs/cgroup"):
        seen += [os.path.join(dirpath, n) for n in dirs + files]
    def content(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError as exc:
            return exc.errno
    return {"seen": seen[:50], "other": _errno(lambda: open(event["other"]).read()),
            "own": open("/proc/self/cgroup").read(),
            "locks": content("/proc/locks"), "cgroup_counts": content("/proc/cgroups"),
            "seqnum": content("/sys/kernel/uevent_seqnum"),
            "links": os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net") else [],
            "firmware": os.listdir("/sys/firmware") if os.path.isdir("/sys/firmware") else []}

def identity(event):
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    libc.ptrace.restype = ctypes.c_long
    out = {
        "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
        "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
        "batch": os.sched_getscheduler(0) == os.SCHED_BATCH,
        "ptrace": _sys(libc.ptrace(0, 0, None, None)),   # PTRACE_TRACEME
        "unshare_net": _sys(libc.unshare(0x40000000)),
        "unshare_user": _sys(libc.unshare(0x10000000)),
        "mount": _sys(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        "keyctl": _sys(libc.syscall(250, 0, 0, 0, 0, 0)),   # keyctl (x86_64)
        "bpf": _sys(libc.syscall(321, 0, 0, 0)),            # bpf (x86_64)
        "init_module": _sys(libc.syscall(175, 0, 0, 0)),
        "setns": _sys(libc.setns(0, 0)),
        "setuid0": _errno(lambda: os.setuid(0)),
        "hostname": socket.gethostname(),
    }
    # clone with a namespace flag, as a shell's `unshare -n` would do: refused
    out["unshare_cmd"] = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode
    return out

def status(event):
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return {"no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
            "unshare_net": _sys(libc.unshare(0x40000000))}

def connect(event):
    s = socket.socket()
    s.settimeout(event.get("timeout", 3))
    try:
        s.connect((event["host"], event["port"]))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return {"ok": True, "reply": s.recv(200).decode(errors="replace")}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "error": str(exc)}
    finally:
        s.close()

def daemon(event):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            os.closerange(3, 1024)
            time.sleep(3600)
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32))
    os.close(r)
    os.wait()
    return {"daemon": pid, "me": CONTEXT[0].instance_id}

def flood(event):
    chunk = b"y" * 65536
    for _ in range(event["kb"] // 64):
        os.write(1, chunk)
    os._exit(3)

def hog(event):
    blocks = []
    while True:
        blocks.append(bytearray(16 * 2**20))

def sleep(event):
    time.sleep(event["s"])

CONTEXT = [None]

def handler(event, context):
    CONTEXT[0] = context
    if event.get("action") == "ping":
        return {"pong": True, "pid": os.getpid(), "instance": context.instance_id}
    return globals()[event["action"]](event)
'''}


def cgroup_scope(data: Path) -> str:
    return "srv-" + hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]


def cgroup_dirs(data: Path) -> list[Path]:
    """The instance cgroups this server's scope holds, across controllers (the cpuset one
    holds the server's shared CPUs and service groups only)."""
    found = []
    for root in Path("/sys/fs/cgroup").iterdir():
        scope = root / "faasbox" / cgroup_scope(data)
        if scope.is_dir():
            found += [d for d in scope.iterdir() if d.is_dir() and d.name != "shared"]
    return found


def call(srv: Server, name: str, **event: Any) -> Any:
    resp = srv.invoke(name, event)
    assert resp.status_code == 200, resp.text
    return resp.json()


def still_serves(srv: Server, name: str) -> None:
    assert call(srv, name, action="ping")["pong"] is True


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except OSError:
        return True


# -- one server per start mode --------------------------------------------------------------
@pytest.fixture(scope="module", params=["spawn", "forkserver", "template"])
def moded(request: pytest.FixtureRequest) -> Iterator[Server]:
    root = open_tempdir()
    srv = Server(root / "data", {"FAASBOX_START_MODE": request.param,
                                 "FAASBOX_ACQUIRE_TIMEOUT_S": "5"}).start()
    srv.deploy("attack", ATTACK, memory_mb=128, timeout_s=5, ephemeral_storage_mb=32)
    srv.deploy("other", {"main.py": "SECRET = 1\ndef handler(e, c):\n    return 1\n"})
    yield srv
    srv.stop()
    remove_tree(root)


def started_as(srv: Server, name: str, pid: int) -> str:
    for inst in srv.instances(name):
        if inst["pid"] == pid:
            return str(inst["start_mode"])
    raise AssertionError(f"no instance with pid {pid}")


def test_protections_are_reported_active(moded: Server) -> None:
    rows = {r["feature"]: r for r in moded.node()["sandbox"]}
    for feature in ("mount namespace", "private tmpfs", "private /proc", "network namespace",
                    "pid namespace",
                    "no_new_privs", "seccomp", "host-unique uids", "output cap"):
        assert rows[feature]["active"], rows[feature]


def test_filesystem_attacks_fail(moded: Server) -> None:
    data = str(moded.data.resolve())
    code_dirs = [str(d) for d in (moded.data / "code").iterdir()]
    assert len(code_dirs) == 2  # "attack" and "other"
    out = call(moded, "attack", action="fs", data=data, code_dirs=code_dirs)
    # the database, the admin key, the output files, other code: not there at all
    assert out["db"] == out["admin_key"] == out["instances"] == 2, out  # ENOENT
    assert out["other_code"] == [2]
    # of the data dir, only its own code (and scratch) is visible
    assert set(out["data_listing"]) <= {"code", "packages", "scratch", ".tmp", ".var-tmp",
                                        ".shm"}, out["data_listing"]
    assert len(out["code_listing"]) == 1
    # its code and the host are read-only; scratch, /tmp, /var/tmp and /dev/shm are not
    assert out["write_code"] == out["write_etc"] == out["write_usr"] == 30  # EROFS
    for d in ("/tmp", "/var/tmp", "/dev/shm", out["cwd"]):
        assert out[f"write {d}"] == 0, (d, out)
    # the host's /tmp (where this test's data dir is) is not the instance's /tmp: it holds
    # its own files and, when the data dir is under /tmp, the path down to it (re-made)
    # (and of the checkout or virtualenv faasbox runs from, bound back read-only)
    made = {p.parts[2] for p in (Path(data), Path(sys.prefix).resolve(),
                                 Path(faasbox.__file__).resolve().parent.parent)
            if len(p.parts) > 2 and p.parts[1] == "tmp"}
    assert {n for n in out["tmp_listing"] if not n.startswith("mark-")} == made
    # on disk, code is not open to other users
    assert (moded.data / "code").stat().st_mode & 0o007 == 0
    still_serves(moded, "attack")


def test_nothing_written_outlives_the_instance(moded: Server) -> None:
    moded.deploy("scribble", ATTACK, idle_ttl_s=0)
    data = str(moded.data.resolve())
    first = call(moded, "scribble", action="fs", data=data)
    moded.wait_for(lambda: not moded.instances("scribble"), what="the instance to stop")
    second = call(moded, "scribble", action="fs", data=data)
    assert second["cwd"] != first["cwd"]
    old_pid = Path(first["cwd"]).name
    # its scratch dir is gone (a template's children share the template's tmpfs: the
    # template removes each child's scratch dir when it reaps it)
    assert Path(first["cwd"]).name not in second["scratch_listing"]
    # nor on the host (removed as the stop's last step, just after the instance leaves the list)
    moded.wait_for(lambda: not Path(first["cwd"]).exists(), what="the scratch dir removed")
    if moded.env["FAASBOX_START_MODE"] != "template":  # /tmp is the template's (documented)
        assert [n for n in first["tmp_listing"] if n.startswith("mark-")]
        assert not [n for n in second["tmp_listing"]
                    if n in first["tmp_listing"] and n.startswith("mark-")], old_pid


def test_tmpfs_is_capped_by_ephemeral_storage(moded: Server) -> None:
    assert call(moded, "attack", action="fill", mb=64)["errno"] == 28  # ENOSPC at 32 MB
    assert call(moded, "attack", action="fill", mb=8)["errno"] == 0
    still_serves(moded, "attack")


def test_host_processes_are_hidden(moded: Server) -> None:
    out = call(moded, "attack", action="procs")
    # pid 1 is the instance itself, or its template (the same uid, hidden), not the host's init
    assert out["uids"] == [out["me"]], out
    if moded.env["FAASBOX_START_MODE"] == "template":
        assert out["pid1_uid"] is None, out
    else:
        assert out["pid1_uid"] == out["me"], out
    still_serves(moded, "attack")


def test_other_instances_cannot_be_named_by_pid_or_uid(moded: Server) -> None:
    """kill(pid, 0), getsid, sched_getscheduler, sched_getaffinity and getpriority(PRIO_USER)
    check no permission: in the host's pid namespace they would tell of another tenant's
    instances by pid or uid (that they run, and when they start and stop)."""
    call(moded, "other")
    [other] = moded.instances("other")
    uid = parent_and_uid(other["pid"])
    assert uid is not None
    out = call(moded, "attack", action="neighbours", pid=other["pid"], uid=uid[1])
    esrch = errno.ESRCH
    assert (out["kill"], out["sid"], out["sched"], out["affinity"], out["prio_user"]) == (
        esrch, esrch, esrch, esrch, esrch), out
    # only its own namespace answers: itself as pid 1, or its template and the template's
    # other children (the same version: trusted, docs/sandbox.md)
    assert other["pid"] not in out["answering"] and 1 in out["answering"], out
    if moded.env["FAASBOX_START_MODE"] == "template":
        assert out["me"] != 1 and len(out["answering"]) <= 4, out
    else:
        assert out["me"] == 1 and out["answering"] == [1], out
    still_serves(moded, "attack")


def test_what_tells_of_other_instances_is_hidden(moded: Server) -> None:
    """The host's cgroup tree names every instance (tenant.function) and shows its memory:
    an instance sees none of it, not even another instance's files by their path."""
    assert moded.feature("memory limit")
    call(moded, "other")
    files = [f for d in cgroup_dirs(moded.data) if d.name.startswith("default.other-")
             for f in (d / "memory.usage_in_bytes", d / "memory.current") if f.exists()]
    assert files  # there, on the host
    out = call(moded, "attack", action="cgroups", other=str(files[0]))
    assert out["seen"] == [] and out["other"] == errno.ENOENT, out
    assert "/default.attack-" in out["own"]  # its own cgroup, by /proc/self/cgroup only
    # the server's locks (one per live instance's uid), the host's count of cgroups and of
    # device events (instances starting), its network links (every egress instance's, with
    # byte counters), its firmware tables
    assert Path("/proc/locks").read_text() and Path("/proc/cgroups").read_text()  # on the host
    assert os.listdir("/sys/class/net")
    assert out["locks"] == "" and out["cgroup_counts"] == "" and out["seqnum"] == "", out
    assert out["links"] == [] and out["firmware"] == [], out
    still_serves(moded, "attack")


def test_the_functions_variables_never_reach_an_exec_as_root(moded: Server) -> None:
    """A spawned instance is root until it confines itself: had the function's LD_PRELOAD been
    in the environment it was started with, the loader would have run the function's code as
    root before the sandbox. The function's variables are set at load, before its import."""
    env = {"LD_PRELOAD": "/nonexistent/evil.so", "TZ": "XYZ-3", "MY_VAR": "mine"}
    moded.deploy("envy", ATTACK, env=env)
    out = call(moded, "envy", action="environ", keys=sorted(env))
    assert out["now"] == env and out["gmtoff"] == 3 * 3600, out
    # what the process was exec'd with (for a forked one, its fork server's), from the host
    pid = moded.pid_of("envy", out["instance"])
    at_exec = {v.split(b"=", 1)[0].decode()
               for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if v}
    assert "PATH" in at_exec and not set(env) & at_exec, at_exec


def test_an_instance_cannot_end_what_waits_for_it(moded: Server) -> None:
    """SIGTERM to its process group, no parent-death signal: a spawned instance's first
    process (outside its namespace, waiting for it) is out of reach, and a timeout still
    ends the instance with everything in it."""
    moded.deploy("untie", ATTACK, timeout_s=3)
    first = call(moded, "untie", action="untie")
    again = call(moded, "untie", action="ping")
    assert again["instance"] == first["instance"]  # still there, still itself
    pid = moded.pid_of("untie", first["instance"])
    parent = parent_and_uid(pid)  # what waits for it (spawn) or its zygote: still there
    assert parent is not None and parent[0] != 1 and not gone(parent[0]), parent
    resp = moded.invoke("untie", {"action": "sleep", "s": 30})
    assert resp.status_code == 504, resp.text
    moded.wait_for(lambda: gone(pid), what="the timed-out instance to die")
    still_serves(moded, "untie")


def test_identity_and_seccomp(moded: Server) -> None:
    out = call(moded, "attack", action="identity")
    assert out["uid"] == out["euid"] and out["uid"] >= 200000 and out["groups"] == []
    assert out["no_new_privs"] == "1" and out["seccomp"] == "2"
    for syscall in ("ptrace", "unshare_net", "unshare_user", "mount", "keyctl", "bpf",
                    "init_module", "setns", "setuid0"):
        assert out[syscall] == 1, (syscall, out)  # EPERM
    assert out["unshare_cmd"] != 0
    assert out["hostname"] == "faasbox"
    assert out["batch"]  # SCHED_BATCH: a woken instance does not preempt the node
    still_serves(moded, "attack")


def test_a_daemon_dies_with_its_instance(moded: Server) -> None:
    out = call(moded, "attack", action="daemon")
    inst = out["me"]
    # on the host, by the instance's cgroup (its pids inside are of its own namespace)
    pids = {int(p) for d in cgroup_dirs(moded.data) if d.name == inst
            for p in (d / "cgroup.procs").read_text().split()}
    [host_pid] = [i["pid"] for i in moded.instances("attack") if i["id"] == inst]
    assert host_pid in pids and len(pids) >= 2 and not any(gone(p) for p in pids), pids
    # the invocation times out: its instance is killed, and with it everything it started
    resp = moded.invoke("attack", {"action": "sleep", "s": 30})
    assert resp.status_code == 504, resp.text
    moded.wait_for(lambda: all(gone(p) for p in pids), what="the daemon to die")
    moded.wait_for(lambda: inst not in {d.name for d in cgroup_dirs(moded.data)},
                   what="the killed instance's cgroup to go")
    still_serves(moded, "attack")


def test_output_flood_is_truncated(moded: Server) -> None:
    resp = moded.invoke("attack", {"action": "flood", "kb": 4096})
    assert resp.status_code == 500, resp.text
    assert "output truncated at 1048576 bytes" in resp.text
    still_serves(moded, "attack")


def test_oom_leaves_no_cgroup_behind(moded: Server) -> None:
    resp = moded.invoke("attack", {"action": "hog"})
    assert resp.status_code == 500 and "out_of_memory" in resp.text, resp.text
    names = lambda: {d.name for d in cgroup_dirs(moded.data)}  # noqa: E731
    functions = [f["name"] for f in moded.http.get("/v1/functions").json()["functions"]]
    live = lambda: {i["id"] for f in functions for i in moded.instances(f)}  # noqa: E731
    moded.wait_for(lambda: {n for n in names() if not n.startswith("tmpl-")} <= live(),
                   what="the OOM-killed instance's cgroup to go")
    still_serves(moded, "attack")


# -- one server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain() -> Iterator[Server]:
    root = open_tempdir()
    srv = Server(root / "data", {"FAASBOX_ACQUIRE_TIMEOUT_S": "5"}).start()
    srv.deploy("attack", ATTACK, timeout_s=10)
    yield srv
    srv.stop()
    remove_tree(root)


def test_network_none_reaches_nothing_not_even_the_server(plain: Server) -> None:
    out = call(plain, "attack", action="connect", host="127.0.0.1", port=plain.port)
    assert out["ok"] is False and out["errno"] == 111, out  # its own loopback: refused
    host_ip = _host_address()
    if host_ip is not None:
        out = call(plain, "attack", action="connect", host=host_ip, port=plain.port)
        assert out["ok"] is False and out["errno"] == 101, out  # ENETUNREACH: no route
    still_serves(plain, "attack")


def test_bad_spec_values_are_422(plain: Server) -> None:
    for spec in ({"network": "host"}, {"network_allow": ["10.0.0.0/8"]},
                 {"network": "egress", "network_allow": ["nope"]},
                 {"ephemeral_storage_mb": 20000}, {"ephemeral_storage_mb": 1}):
        plain.deploy("bad", ATTACK, expect=422, **spec)


def test_ephemeral_storage_above_the_node_cap_is_422(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_MAX_EPHEMERAL_STORAGE_MB": "256"})
    resp = srv.deploy("big", ATTACK, expect=422, ephemeral_storage_mb=512)
    assert "cap of 256 MB" in resp.text
    srv.deploy("small", ATTACK, ephemeral_storage_mb=256)


def test_uids_are_unique_across_servers(make_server: Any) -> None:
    a = make_server()
    b = make_server()
    for srv in (a, b):
        srv.deploy("who", ATTACK)
    uid_a = call(a, "who", action="identity")["uid"]
    uid_b = call(b, "who", action="identity")["uid"]
    assert uid_a != uid_b


def test_clean_shutdown_leaves_no_cgroup(make_server: Any) -> None:
    srv = make_server()
    srv.deploy("attack", ATTACK, min_instances=2)
    call(srv, "attack", action="daemon")
    assert cgroup_dirs(srv.data)
    srv.stop()
    assert cgroup_dirs(srv.data) == []
    for root in Path("/sys/fs/cgroup").iterdir():
        assert not (root / "faasbox" / cgroup_scope(srv.data)).exists()


def test_doctor_lists_each_protection(tmp_path: Path) -> None:
    data = open_tempdir() / "data"
    out = subprocess.run(["faasbox", "doctor", "--json", "--data", str(data)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{Path(os.sys.executable).parent}:"
                              + os.environ["PATH"]})
    rows = {r["feature"]: r for r in json.loads(out.stdout)["sandbox"]}
    for feature in ("mount namespace", "private tmpfs", "private /proc", "network namespace",
                    "pid namespace",
                    "network egress", "no_new_privs", "seccomp", "host-unique uids",
                    "output cap", "memory limit", "unprivileged uid"):
        assert feature in rows and rows[feature]["detail"], feature


# -- degraded: no network namespace, no seccomp ----------------------------------------------
def test_without_namespaces_instances_use_the_host_network(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_SANDBOX_DISABLE": "network namespace,seccomp"})
    rows = {r["feature"]: r for r in srv.node()["sandbox"]}
    assert not rows["network namespace"]["active"]
    assert "FAASBOX_SANDBOX_DISABLE" in rows["network namespace"]["detail"]
    assert "host network" in rows["network namespace"]["detail"]
    assert not rows["seccomp"]["active"] and rows["mount namespace"]["active"]
    srv.deploy("attack", ATTACK)
    out = call(srv, "attack", action="connect", host="127.0.0.1", port=srv.port)
    assert out["ok"] is True  # on the host network: the server's port is reachable
    ident = call(srv, "attack", action="status")
    assert ident["seccomp"] == "0" and ident["no_new_privs"] == "1"
    assert ident["unshare_net"] == 1  # still refused: not root
    assert detect(srv.data, "auto").net_ns  # the machine itself has them


# -- degraded: no pid namespace --------------------------------------------------------------
def test_without_a_pid_namespace_instances_share_the_hosts(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_SANDBOX_DISABLE": "pid namespace",
                           "FAASBOX_START_MODE": "spawn"})
    rows = {r["feature"]: r for r in srv.node()["sandbox"]}
    assert not rows["pid namespace"]["active"]
    assert "FAASBOX_SANDBOX_DISABLE" in rows["pid namespace"]["detail"]
    assert "named by pid" in rows["pid namespace"]["detail"]
    srv.deploy("attack", ATTACK)
    srv.deploy("other", {"main.py": "def handler(e, c):\n    return 1\n"})
    call(srv, "other")
    [other] = srv.instances("other")
    uid = parent_and_uid(other["pid"])
    assert uid is not None
    out = call(srv, "attack", action="neighbours", pid=other["pid"], uid=uid[1])
    assert out["kill"] == errno.EPERM and out["prio_user"] == 0, out  # there, as documented
    # the process spawned is the instance itself, with no process waiting for it
    [inst] = srv.instances("attack")
    assert out["me"] == inst["pid"] and other["pid"] in out["answering"]
    assert srv.proc is not None
    found = parent_and_uid(inst["pid"])
    assert found is not None and found[0] == srv.proc.pid
    assert detect(srv.data, "auto").confine >= {"pid namespace"}  # the machine has them


# -- egress, against a test host in a network namespace of the test's own --------------------
class FakeHost:
    """A network namespace with a tiny HTTP server on ``addr``:``port``, joined to the host by
    a veth pair (the host side gets ``gw``)."""

    def __init__(self, name: str, addr: str, gw: str) -> None:
        self.name, self.addr, self.gw, self.port = name, addr, gw, 8080
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeHost:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> FakeHost:
        n, h = self.name, f"{self.name}h"
        for cmd in (f"ip netns add {n}", f"ip link add {h} type veth peer name {n}i",
                    f"ip link set {n}i netns {n}", f"ip addr add {self.gw}/24 dev {h}",
                    f"ip link set {h} up",
                    f"ip -n {n} addr add {self.addr}/24 dev {n}i", f"ip -n {n} link set {n}i up",
                    f"ip -n {n} link set lo up", f"ip -n {n} route add default via {self.gw}"):
            subprocess.run(cmd.split(), check=True, capture_output=True)
        server = ("import socket\n"
                  f"s = socket.create_server(('{self.addr}', {self.port}))\n"
                  "while True:\n"
                  "    c, _ = s.accept()\n"
                  "    c.recv(1000)\n"
                  "    c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\ntest-host')\n"
                  "    c.close()\n")
        self.proc = subprocess.Popen(["ip", "netns", "exec", n, os.sys.executable, "-S", "-c",
                                      server])
        deadline = time.monotonic() + 60  # a loaded machine may start Python slowly
        while True:  # from the host, through the pair
            try:
                socket.create_connection((self.addr, self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "test host did not start"
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "link", "del", f"{self.name}h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def fake_hosts() -> Iterator[tuple[FakeHost, FakeHost]]:
    tag = f"{os.getpid() % 10000}"
    with FakeHost(f"tpub{tag}", "203.0.113.10", "203.0.113.1") as public, \
            FakeHost(f"tprv{tag}", "10.123.45.10", "10.123.45.1") as private:
        yield public, private


def test_egress_reaches_outside_but_not_the_host_or_private_ranges(
        make_server: Any, fake_hosts: tuple[FakeHost, FakeHost]) -> None:
    public, private = fake_hosts
    srv = make_server()
    if not srv.feature("network egress"):
        pytest.skip("egress is not available here")
    srv.deploy("out", ATTACK, network="egress", timeout_s=15)
    srv.deploy("allowed", ATTACK, network="egress", network_allow=[f"{private.addr}/32"],
               timeout_s=15)
    srv.deploy("none", ATTACK, timeout_s=15)
    got = call(srv, "out", action="connect", host=public.addr, port=public.port)
    assert got["ok"] and "test-host" in got["reply"], got
    # private ranges and the host itself: refused, unless listed
    assert call(srv, "out", action="connect", host=private.addr, port=private.port)["ok"] is False
    assert call(srv, "out", action="connect", host=public.gw, port=srv.port)["ok"] is False
    assert call(srv, "out", action="connect", host="127.0.0.1", port=srv.port)["ok"] is False
    got = call(srv, "allowed", action="connect", host=private.addr, port=private.port)
    assert got["ok"] and "test-host" in got["reply"], got
    # network none: nothing at all
    assert call(srv, "none", action="connect", host=public.addr, port=public.port,
                timeout=2)["ok"] is False
    still_serves(srv, "out")


def test_egress_unavailable_runs_on_the_host_network(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_SANDBOX_DISABLE": "network egress"})
    rows = {r["feature"]: r for r in srv.node()["sandbox"]}
    assert not rows["network egress"]["active"]
    assert "host network" in rows["network egress"]["detail"]
    srv.deploy("out", ATTACK, network="egress")
    assert call(srv, "out", action="connect", host="127.0.0.1", port=srv.port)["ok"] is True
    srv.deploy("none", ATTACK)  # network none is unaffected
    assert call(srv, "none", action="connect", host="127.0.0.1", port=srv.port)["ok"] is False
    assert "network egress is unavailable" in srv.log.read_text()


def _host_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the source address
        addr = str(s.getsockname()[0])
        return None if addr.startswith("127.") else addr
    return None



def test_requirements_from_host_paths_or_vcs_are_422(plain: Server) -> None:
    for line in ("../../code/x/evil.whl", "/etc/passwd", "file:///etc/passwd",
                 "git+https://example.invalid/r.git", "pkg @ git+ssh://example.invalid/r",
                 "-e .", "-r /etc/requirements.txt", "--find-links /root"):
        resp = plain.deploy("reqs", {"main.py": "def handler(e, c):\n    return 1\n",
                                     "requirements.txt": line + "\n"}, expect=422)
        assert "requirements.txt" in resp.json()["error"]["message"], line
    still_serves(plain, "attack")
