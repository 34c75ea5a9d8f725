"""Fast cold starts: instances forked from the fork server or from a snapshot template.

Each mode gets its own server (``FAASBOX_START_MODE``); the sandbox, the module-state contract
(docs/sandbox.md, "Fast cold start") and fault handling must hold for forked instances as for
spawned ones.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from faasbox.node.zygote import parent_and_uid
from tests.conftest import Server, open_tempdir
from tests.tenants import Clients, make_key, make_tenant
from tests.tenants import deploy as tenant_deploy

STATE = {"main.py": """
    import os, random, time
    IMPORT_PID = os.getpid()
    COUNTER = [0]
    COUNTER[0] += 41  # module-level code runs once per import
    time.sleep(float(os.environ.get("IMPORT_S", "0")))  # a slow import, if asked for

    def channels():
        found = []
        for fd in os.listdir("/proc/self/fd"):
            if fd in ("1", "2"):  # stdout and stderr: the node's output pipe
                continue
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(("socket:", "pipe:", "anon_inode:")):
                found.append(target)
        return found

    def handler(event, context):
        COUNTER[0] += 1
        time.sleep((event or {}).get("sleep", 0))
        with open("/proc/self/cgroup") as f:
            cgroups = f.read()
        return {
            "instance": context.instance_id,
            "pid": os.getpid(), "import_pid": IMPORT_PID, "counter": COUNTER[0],
            "random": random.random(), "uid": os.getuid(), "cwd": os.getcwd(),
            "cwd_uid": os.stat(".").st_uid,
            "home": os.environ.get("HOME"), "tmpdir": os.environ.get("TMPDIR"),
            "pgid": os.getpgid(0), "sid": os.getsid(0), "cgroups": cgroups,
            "sockets": channels(),
        }
"""}


def _server(mode: str) -> Iterator[Server]:
    root = open_tempdir()
    srv = Server(root / "data", {"FAASBOX_START_MODE": mode,
                                 "FAASBOX_ACQUIRE_TIMEOUT_S": "10"}).start()
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def forkserver() -> Iterator[Server]:
    yield from _server("forkserver")


@pytest.fixture(scope="module")
def template() -> Iterator[Server]:
    yield from _server("template")


def burst(server: Server, name: str, n: int, event: Any) -> list[Any]:
    """``n`` concurrent invokes (each holds its instance for a while: ``n`` instances)."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(lambda _: server.invoke(name, event), range(n)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


# Inside, pids are of the instance's own pid namespace (a forked or spawned instance is pid 1,
# a template's children 2, 3, ... under it): instances are told apart by ``instance``
# (context.instance_id), and the host's pids come from the API.
def instance_of(server: Server, name: str, instance: str) -> dict[str, Any]:
    return next(i for i in server.instances(name) if i["id"] == instance)


def host_pid(server: Server, name: str, out: dict[str, Any]) -> int:
    return int(instance_of(server, name, out["instance"])["pid"])


def template_pid(pid: int) -> int:
    """The host's pid of the template (or fork server) that forked process ``pid``."""
    found = parent_and_uid(pid)
    assert found is not None
    return found[0]


def check_sandbox(server: Server, name: str, out: dict[str, Any]) -> None:
    inst = instance_of(server, name, out["instance"])
    # its own session and process group, its own scratch dir as cwd, HOME and TMPDIR
    assert out["pgid"] == out["pid"] and out["sid"] == out["pid"]
    # a template's spare child was named before it became this instance
    own = inst["spare"] or inst["id"]
    assert out["cwd"].endswith(f"/scratch/{own}")
    assert out["home"] == out["cwd"] and out["tmpdir"] == out["cwd"]
    # its own socket to the node and nothing else (no zygote control channel)
    assert len(out["sockets"]) == 1, out["sockets"]
    if server.feature("unprivileged uid"):
        assert out["uid"] >= 200000
        assert out["cwd_uid"] == out["uid"]
    # a template's child makes its scratch in its template's tmpfs: none on the node's disk
    on_disk = os.path.isdir(out["cwd"])
    assert on_disk is not (inst["start_mode"] == "template" and server.feature("mount namespace"))
    if server.feature("memory limit"):
        memory = next(line for line in out["cgroups"].splitlines() if ":memory:" in line)
        assert memory.endswith(f"/{own}"), memory


# -- fork server ------------------------------------------------------------------------------
def test_fork_server_instance_serves_in_its_sandbox(forkserver: Server) -> None:
    forkserver.deploy("f-state", STATE)
    resp = forkserver.invoke("f-state")
    assert resp.status_code == 200 and resp.headers["x-faasbox-cold-start"] == "true"
    out = resp.json()
    inst = instance_of(forkserver, "f-state", out["instance"])
    assert inst["start_mode"] == "fork" and inst["start_fallback"] is None
    # the module was imported in the instance itself
    assert out["import_pid"] == out["pid"] and out["counter"] == 42
    check_sandbox(forkserver, "f-state", out)
    assert forkserver.feature("fast start")


def test_fork_server_instances_differ(forkserver: Server) -> None:
    forkserver.deploy("f-two", STATE, max_instances=2)
    a, b = burst(forkserver, "f-two", 2, {"sleep": 0.5})
    assert a["instance"] != b["instance"] and a["random"] != b["random"]
    if forkserver.feature("unprivileged uid"):
        assert a["uid"] != b["uid"]  # each forked instance has a uid of its own


def own_module(server: Server, name: str, module: str) -> dict[str, Any]:
    """Deploy a function that ships its own ``module`` (a standard library name) and uses
    it; its one instance, once the call answered with the function's copy."""
    server.deploy(name, {
        "main.py": f"""
            import {module}
            def handler(event, context):
                return {module}.MARK
        """,
        f"{module}.py": f"MARK = 'the function\\'s own {module}'\n",
    })
    resp = server.invoke(name)
    assert resp.status_code == 200 and resp.json() == f"the function's own {module}"
    (inst,) = server.instances(name)
    return inst


def test_module_shadowing_a_preloaded_module_is_spawned(forkserver: Server) -> None:
    # traceback: preloaded, a spawned worker imports it late
    inst = own_module(forkserver, "f-shadow", "traceback")
    assert inst["start_mode"] == "spawn"
    assert "traceback" in inst["start_fallback"]


def test_a_module_the_fork_server_did_not_preload_is_the_functions_own(
        forkserver: Server) -> None:
    """The fork server preloads next to nothing beyond the runtime: a function may bring its
    own decimal and is still forked."""
    assert own_module(forkserver, "f-own", "decimal")["start_mode"] == "fork"


def test_killed_forked_instance_is_instance_crashed(forkserver: Server) -> None:
    forkserver.deploy("f-kill", STATE)
    first = forkserver.invoke("f-kill").json()
    pid = host_pid(forkserver, "f-kill", first)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(forkserver.invoke, "f-kill", {"sleep": 5})
        forkserver.wait_for(
            lambda: any(i["state"] == "busy" for i in forkserver.instances("f-kill")),
            what="a busy instance")
        os.kill(pid, signal.SIGKILL)
        crashed = busy.result()
    assert crashed.status_code == 500
    err = crashed.json()["error"]
    assert err["code"] == "instance_crashed" and "SIGKILL" in err["message"]
    again = forkserver.invoke("f-kill")
    assert again.status_code == 200 and again.json()["instance"] != first["instance"]
    assert again.headers["x-faasbox-cold-start"] == "true"


def test_os_exit_code_of_forked_instance(forkserver: Server) -> None:
    forkserver.deploy("f-exit", {"main.py": """
        import os
        def handler(event, context):
            os._exit(7)
    """})
    crash = forkserver.invoke("f-exit")
    assert crash.status_code == 500
    err = crash.json()["error"]
    assert err["code"] == "instance_crashed" and "code 7" in err["message"]


def fork_servers(server: Server) -> list[int]:
    """Pids of the server's fork server (its child running faasbox.runtime.zygote)."""
    assert server.proc is not None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.proc.pid and b"faasbox.runtime.zygote" in cmdline:
            found.append(int(entry))
    return found


def test_fork_server_death_is_survived(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_START_MODE": "forkserver"})
    srv.deploy("f-die", STATE)  # the deploy's load check starts the fork server
    out = srv.invoke("f-die", {"sleep": 0}).json()
    (forkserver,) = fork_servers(srv)
    os.kill(forkserver, signal.SIGKILL)
    srv.wait_for(lambda: fork_servers(srv) == [], what="the fork server to be gone")
    # the running instance carries on
    again = srv.invoke("f-die")
    assert again.status_code == 200 and again.json()["instance"] == out["instance"]
    # a new instance gets a new fork server
    srv.deploy("f-die2", STATE)
    fresh = srv.invoke("f-die2").json()
    assert instance_of(srv, "f-die2", fresh["instance"])["start_mode"] == "fork"
    assert fork_servers(srv) not in ([], [forkserver])


# -- snapshot templates -----------------------------------------------------------------------
def test_template_instances_share_the_import_not_the_process(template: Server) -> None:
    deployed = template.deploy("t-state", STATE, max_instances=3, env={"IMPORT_S": "1"})
    assert deployed.json()["load_check_ms"] >= 1000  # the import takes 1 s
    outs = burst(template, "t-state", 3, {"sleep": 0.5})
    modes = {instance_of(template, "t-state", o["instance"])["start_mode"] for o in outs}
    assert modes == {"template"}
    # module globals as after import, in a process other than the one that imported
    assert len({template_pid(host_pid(template, "t-state", o)) for o in outs}) == 1
    assert all(o["import_pid"] != o["pid"] for o in outs)
    assert all(o["counter"] == 42 for o in outs)  # the template's rehearsal never calls it
    assert len({o["instance"] for o in outs}) == len({o["pid"] for o in outs}) == 3
    # random is reseeded per instance
    assert len({o["random"] for o in outs}) == 3
    for out in outs:
        check_sandbox(template, "t-state", out)
    if template.feature("unprivileged uid"):
        assert len({o["uid"] for o in outs}) == 1  # a template's children share its uid
    # the import ran once, in the template: an instance's own load does not take the 1 s
    # the import takes (it is near instant, but a loaded machine can stretch that)
    inits = [instance_of(template, "t-state", o["instance"])["init_ms"] for o in outs]
    assert all(ms < 1000 for ms in inits), inits


NUMPY = {"main.py": """
    import os, time
    import numpy
    numpy.random.standard_normal()  # leaves a normal variate cached in the legacy state

    def handler(event, context):
        time.sleep(event.get("sleep", 0))
        return {"instance": context.instance_id, "pid": os.getpid(),
                "uniform": [float(x) for x in numpy.random.random(4)],
                "normal": float(numpy.random.standard_normal())}
"""}


def test_numpys_random_state_is_reseeded_in_each_template_instance(template: Server) -> None:
    template.deploy("t-numpy", NUMPY, max_instances=3)
    outs = burst(template, "t-numpy", 3, {"sleep": 0.5})
    assert {instance_of(template, "t-numpy", o["instance"])["start_mode"]
            for o in outs} == {"template"}
    assert len({o["pid"] for o in outs}) == 3
    # neither the stream nor the variate cached at import is shared between siblings
    assert len({tuple(o["uniform"]) for o in outs}) == 3
    assert len({o["normal"] for o in outs}) == 3
    for out in outs:  # a valid stream: draws spread over [0, 1)
        assert all(0.0 <= x < 1.0 for x in out["uniform"]) and len(set(out["uniform"])) == 4


FORKED = {"main.py": """
    import concurrent.futures, os, random, sys, threading

    HOOKED = []
    if os.environ.get("REGISTER_HOOK"):
        os.register_at_fork(after_in_child=lambda: HOOKED.append(os.getpid()))

    def handler(event, context):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            squares = sorted(pool.map(lambda n: n * n, range(4)))
        return {
            "instance": context.instance_id,
            "pid": os.getpid(), "random": random.random(), "hooked": HOOKED,
            "bare": getattr(sys.modules["__main__"], "bare_fork", None),
            "main": threading.current_thread() is threading.main_thread(),
            "native_id": threading.main_thread().native_id == threading.get_native_id(),
            "threads": squares,
        }
"""}


def forked_burst(server: Server, name: str) -> list[dict[str, Any]]:
    outs = burst(server, name, 2, {})
    modes = {instance_of(server, name, o["instance"])["start_mode"] for o in outs}
    assert modes == {"template"}
    assert outs[0]["instance"] != outs[1]["instance"]
    assert outs[0]["pid"] != outs[1]["pid"] and outs[0]["random"] != outs[1]["random"]
    for out in outs:  # what the interpreter's own after-fork work would have set up
        assert out["main"] and out["native_id"] and out["threads"] == [0, 1, 4, 9]
    return outs


def test_template_children_are_forked_bare(template: Server) -> None:
    template.deploy("t-bare", FORKED, max_instances=2)
    outs = forked_burst(template, "t-bare")
    assert all(o["bare"] is True and o["hooked"] == [] for o in outs)


def test_a_functions_own_at_fork_hook_makes_its_template_fork_with_os_fork(
        template: Server) -> None:
    template.deploy("t-hook", FORKED, max_instances=2, env={"REGISTER_HOOK": "1"})
    outs = forked_burst(template, "t-hook")
    for out in outs:  # the hook the module registered in the template ran in each child
        assert out["bare"] is False and out["hooked"] == [out["pid"]], out


def test_a_standard_modules_hook_keeps_the_bare_fork_and_a_namesakes_does_not(
        template: Server) -> None:
    """logging and concurrent.futures register at-fork hooks that only re-make locks: a
    function importing them still forks bare (FORKED imports concurrent.futures). A module of
    the function's own named logging is not the standard one: its hook runs in each child."""
    template.deploy("t-std", {"main.py": FORKED["main.py"].replace(
        "import concurrent.futures,", "import logging, concurrent.futures,")}, max_instances=2)
    assert all(o["bare"] is True for o in forked_burst(template, "t-std"))
    template.deploy("t-namesake", {
        "main.py": """
            import logging, os, sys, time
            def handler(event, context):
                time.sleep(0.3)
                return {"pid": os.getpid(), "hooked": logging.HOOKED,
                        "instance": context.instance_id,
                        "bare": getattr(sys.modules["__main__"], "bare_fork", None)}
        """,
        "logging.py": """
            import os
            HOOKED = []
            os.register_at_fork(after_in_child=lambda: HOOKED.append(os.getpid()))
        """,
    }, max_instances=2)
    outs = burst(template, "t-namesake", 2, {})
    assert {instance_of(template, "t-namesake", o["instance"])["start_mode"] for o in outs} == {
        "template"}
    for out in outs:
        assert out["bare"] is False and out["hooked"] == [out["pid"]], out


def test_bare_forks_can_be_turned_off(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_START_MODE": "template", "FAASBOX_FORK_BARE": "0"})
    srv.deploy("t-off", FORKED, max_instances=2)
    outs = forked_burst(srv, "t-off")
    assert all(o["bare"] is False for o in outs)


def test_async_and_concurrent_handlers_run_from_a_template(template: Server) -> None:
    """A template imports what its children's worker needs for the handler (the event loop
    of an async one, the thread pool of concurrency > 1) before it forks."""
    template.deploy("t-async", {"main.py": """
        import asyncio, os
        async def handler(event, context):
            await asyncio.sleep(0.01)
            return {"instance": context.instance_id}
    """})
    out = template.invoke("t-async")
    assert out.status_code == 200, out.text
    assert instance_of(template, "t-async", out.json()["instance"])["start_mode"] == "template"
    template.deploy("t-pool", {"main.py": """
        import os, threading, time
        def handler(event, context):
            time.sleep(0.3)
            return {"instance": context.instance_id,
                    "thread": threading.current_thread().name}
    """}, concurrency=3, max_instances=1)
    answers = burst(template, "t-pool", 3, None)
    assert len({a["instance"] for a in answers}) == 1  # one instance ran the three at once
    assert all(a["thread"].startswith("faasbox-handler") for a in answers)
    assert instance_of(template, "t-pool", answers[0]["instance"])["start_mode"] == "template"


def test_template_instance_is_oom_killed(template: Server) -> None:
    if not template.feature("memory limit"):
        pytest.skip("faasbox doctor reports no memory limit on this machine")
    template.deploy("t-oom", {"main.py": """
        BALLAST = bytearray(32 * 2**20)  # at import: charged to the template, shared
        def handler(event, context):
            if event == "hog":
                hoard = [bytearray(16 * 2**20) for _ in range(64)]
                return len(hoard)
            return "fine"
    """}, memory_mb=128)
    hog = template.invoke("t-oom", "hog")
    assert hog.status_code == 500
    err = hog.json()["error"]
    assert err["code"] == "out_of_memory" and "128 MB" in err["message"]
    ok = template.invoke("t-oom", "small")
    assert ok.status_code == 200 and ok.json() == "fine"
    assert ok.headers["x-faasbox-cold-start"] == "true"
    assert {i["start_mode"] for i in template.instances("t-oom")} == {"template"}


def test_killed_template_instance_and_next_cold_start(template: Server) -> None:
    template.deploy("t-kill", STATE)
    first = template.invoke("t-kill").json()
    pid = host_pid(template, "t-kill", first)
    tpid = template_pid(pid)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(template.invoke, "t-kill", {"sleep": 5})
        template.wait_for(
            lambda: any(i["state"] == "busy" for i in template.instances("t-kill")),
            what="a busy instance")
        os.kill(pid, signal.SIGKILL)
        crashed = busy.result()
    assert crashed.status_code == 500
    assert crashed.json()["error"]["code"] == "instance_crashed"
    again = template.invoke("t-kill")
    assert again.status_code == 200 and again.headers["x-faasbox-cold-start"] == "true"
    out = again.json()
    assert template_pid(host_pid(template, "t-kill", out)) == tpid  # the same template
    assert instance_of(template, "t-kill", out["instance"])["start_mode"] == "template"


def children_of(pid: int) -> dict[int, int]:
    """The processes whose parent is ``pid``: host pid -> pid in its own pid namespace."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status["PPid"]) == pid:
            found[int(entry)] = int(status["NSpid"].split()[-1])
    return found


ORPHAN = {"main.py": """
    import os, time
    def handler(event, context):
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            orphan = os.fork()
            if orphan == 0:  # orphaned at once: the template (pid 1) is its parent now
                time.sleep(event["sleep"])
                os._exit(0)
            os.write(w, str(orphan).encode())
            os._exit(0)
        os.waitpid(middle, 0)
        os.close(w)
        return {"instance": context.instance_id, "orphan": int(os.read(r, 32) or 0)}
"""}


def test_a_template_reaps_what_its_childrens_processes_orphan_when_it_exits(
        template: Server) -> None:
    """A process an instance forked and left behind is the template's (pid 1 of their pid
    namespace) when it exits, and the template reaps it then (it wakes on SIGCHLD), not only
    when one of its own children next exits: no zombie waits meanwhile."""
    template.deploy("t-orphan", ORPHAN)
    resp = template.invoke("t-orphan", {"sleep": 3})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    pid = host_pid(template, "t-orphan", out)
    tpid = template_pid(pid)
    orphan = [h for h, ns in children_of(tpid).items() if ns == out["orphan"]]
    assert len(orphan) == 1, (out, children_of(tpid))  # the template's now, still asleep
    template.wait_for(lambda: orphan[0] not in children_of(tpid), timeout=30,
                      what="the orphan reaped once it exited (no zombie left)")
    assert pid in children_of(tpid)  # the instance itself lives on, and serves
    assert template.invoke("t-orphan", {"sleep": 0}).status_code == 200


def test_module_level_thread_falls_back_to_fork_server(template: Server) -> None:
    template.deploy("t-thread", {"main.py": """
        import os, threading, time
        IMPORT_PID = os.getpid()
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        def handler(event, context):
            return {"pid": os.getpid(), "import_pid": IMPORT_PID,
                    "instance": context.instance_id, "threads": threading.active_count()}
    """})
    out = template.invoke("t-thread").json()
    # imported in the instance itself, so its thread runs there
    assert out["import_pid"] == out["pid"] and out["threads"] == 2
    inst = instance_of(template, "t-thread", out["instance"])
    assert inst["start_mode"] == "fork"
    assert "threads" in inst["start_fallback"]


def test_module_level_socket_refuses_the_template(template: Server) -> None:
    template.deploy("t-socket", {"main.py": """
        import os, socket
        CONN = socket.socketpair()  # a connection every forked instance would share
        def handler(event, context):
            return context.instance_id
    """})
    inst = instance_of(template, "t-socket", template.invoke("t-socket").json())
    assert inst["start_mode"] == "fork" and "socket" in inst["start_fallback"]


# user code in a template can send the node any control message, with a pidfd of any process
FORGED_FORKED = {"main.py": """
    import json, os, socket, sys
    VICTIM = int(os.environ["VICTIM"])

    def victim():
        try:
            return [os.pidfd_open(VICTIM)]
        except OSError:  # not in this pid namespace
            return []

    def forge(sock, message, fds=None):
        # a pidfd of the victim with every "forked" report, or one unasked for
        if message.get("t") == "forked" and os.environ.get("HOW") == "reply":
            fds = victim()
        socket.send_fds(sock, [json.dumps(message).encode()], fds or [])

    for module in (sys.modules.get("__main__"), sys.modules.get("faasbox.runtime.zygote")):
        if module is not None and hasattr(module, "Zygote"):  # in a template only
            module.send = forge
            if os.environ.get("HOW") == "unasked":
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        s = socket.socket(fileno=os.dup(int(fd)))
                    except OSError:
                        continue
                    if s.type == socket.SOCK_SEQPACKET:
                        forge(s, {"t": "forked", "id": "nobody", "pid": VICTIM}, victim())
                    s.close()

    def handler(event, context):
        try:
            os.kill(VICTIM, 0)
            named = True
        except ProcessLookupError:
            named = False
        except PermissionError:
            named = True
        return {"instance": context.instance_id, "victim_named": named}
"""}


@pytest.mark.parametrize("how", ["unasked", "reply"])
def test_template_cannot_make_the_node_kill_another_process(template: Server,
                                                            how: str) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        name = f"t-forge-{how}"
        template.deploy(name, FORGED_FORKED, env={"VICTIM": str(victim.pid), "HOW": how})
        resp = template.invoke(name)
        assert resp.status_code == 200, resp.text
        inst = instance_of(template, name, resp.json()["instance"])
        if template.feature("pid namespace"):  # it cannot even name a process outside
            assert resp.json()["victim_named"] is False
        assert template.http.delete(f"/v1/functions/{name}").status_code in (200, 204)
        template.wait_for(lambda: not os.path.exists(f"/proc/{inst['pid']}"),
                          what="the instance stopped")
        assert victim.poll() is None, "the node killed a process a template named"
    finally:
        victim.kill()
        victim.wait()


BAD_READY = {"main.py": """
    import sys
    zygote = sys.modules.get("faasbox.runtime.zygote") or sys.modules.get("__main__")
    if hasattr(zygote, "Zygote"):  # in a template: its "ready" says init_ms is not a number
        real = zygote.send
        def send(sock, message, fds=None):
            if message.get("t") == "ready":
                message = {**message, "init_ms": "soon"}
            real(sock, message, fds)
        zygote.send = send

    def handler(event, context):
        return context.instance_id
"""}


def test_a_templates_malformed_ready_leaks_nothing(template: Server) -> None:
    """A template runs user code, which can say anything in its messages: a ``ready`` whose
    init_ms is not a number still leaves a template the node knows, and retires with it."""
    if not template.feature("memory limit"):
        pytest.skip("templates are found by their cgroups; no memory limit on this machine")
    template.deploy("t-badms", BAD_READY)
    instance = template.invoke("t-badms").json()
    assert instance_of(template, "t-badms", instance)["start_mode"] == "template"
    assert template_processes("t-badms")
    assert template.http.delete("/v1/functions/t-badms").status_code == 204
    template.wait_for(lambda: not template_processes("t-badms"), timeout=20,
                      what="the deleted function's template to exit")


def template_processes(function: str) -> list[int]:
    """Live processes in a template cgroup of ``function`` (tenant default)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if any(":memory:" in line and f"/tmpl-default.{function}-" in line
                       for line in f):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_load_error_under_template_mode_is_an_init_error(template: Server) -> None:
    template.deploy("t-broken", {"main.py": """
        import os
        def handler(event, context):
            return "ok"
        if os.environ.get("BREAK"):
            raise RuntimeError("broken at import")
    """})
    template.deploy("t-broken", env={"BREAK": "1"}, check=False)
    resp = template.invoke("t-broken")
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["code"] == "init_error" and "broken at import" in err["message"]


# -- other modes ------------------------------------------------------------------------------
def test_spawn_mode(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_START_MODE": "spawn"})
    assert not srv.feature("fast start")
    srv.deploy("s-state", STATE)
    out = srv.invoke("s-state").json()
    assert out["import_pid"] == out["pid"] and out["counter"] == 42
    inst = instance_of(srv, "s-state", out["instance"])
    assert inst["start_mode"] == "spawn" and inst["start_fallback"] is None
    if srv.feature("pid namespace"):
        # pid 1 of its namespace, forked by the process the server spawned, which waits
        assert out["pid"] == 1
        waiter = template_pid(inst["pid"])
        assert srv.proc is not None and parent_and_uid(waiter) == (srv.proc.pid, out["uid"])
        assert children(waiter) == {inst["pid"]}  # not root, and holding nothing else:
        assert {os.readlink(f"/proc/{waiter}/fd/{fd}")
                for fd in os.listdir(f"/proc/{waiter}/fd")} == {"/dev/null"}


def test_auto_mode_makes_a_template_after_the_second_cold_start(make_server: Any) -> None:
    srv = make_server(env={"FAASBOX_START_MODE": "auto"})
    srv.deploy("a-state", STATE)
    seen = []
    for _ in range(6):
        out = srv.invoke("a-state").json()
        seen.append(instance_of(srv, "a-state", out["instance"])["start_mode"])
        if seen[-1] == "template":
            break
        os.kill(host_pid(srv, "a-state", out), signal.SIGKILL)
        srv.wait_for(lambda: all(i["id"] != out["instance"]  # noqa: B023
                                 for i in srv.instances("a-state")),
                     what="the killed instance cleared")
    assert seen[:2] == ["fork", "fork"], seen
    assert seen[-1] == "template", seen


def test_auto_mode_starts_instances_ahead_of_demand_from_a_template(make_server: Any) -> None:
    """min_instances are started with nobody waiting: they wait for the version's template, so
    the instances kept warm share its import instead of each holding their own."""
    srv = make_server(env={"FAASBOX_START_MODE": "auto"})
    srv.deploy("a-min", STATE, min_instances=2)
    srv.wait_for(lambda: len([i for i in srv.instances("a-min") if i["state"] == "idle"]) == 2,
                 timeout=30, what="two warm instances")
    modes = [i["start_mode"] for i in srv.instances("a-min")]
    assert modes == ["template", "template"], modes
    # a caller's first cold start still forks from the fork server (it does not wait)
    srv.deploy("a-cold", STATE)
    out = srv.invoke("a-cold").json()
    assert instance_of(srv, "a-cold", out["instance"])["start_mode"] == "fork"


def test_auto_mode_replaces_idle_fork_server_instances_by_template_children(
        make_server: Any) -> None:
    """Instances a burst forked from the fork server before the version had its template are
    swapped for template children once it is ready, while idle: the ones kept warm share the
    template's import."""
    # a fixed keep-alive: the instances stay for the test, whatever the policy would learn
    srv = make_server(env={"FAASBOX_START_MODE": "auto", "FAASBOX_KEEPALIVE_POLICY": "fixed",
                           "FAASBOX_KEEPALIVE_ARGS": "ttl_s=600"})
    srv.deploy("a-swap", STATE, idle_ttl_s=600)
    first = burst(srv, "a-swap", 3, {"sleep": 0.5})  # three cold starts: the second makes
    assert len({o["instance"] for o in first}) == 3  # the template in the background
    # a fork-server child imported the module itself (a template's child found it imported);
    # the swap may be done already, so the instances list cannot tell
    forked = {o["instance"] for o in first if o["import_pid"] == o["pid"]}
    assert forked, "the burst started no fork-server instance"

    seen: list[Any] = []

    def swapped() -> bool:
        # as many or more (the autoscaler may add some after the burst), none forked
        live = seen[:] = srv.instances("a-swap")
        return (len(live) >= 3 and all(i["start_mode"] == "template" for i in live)
                and all(i["state"] == "idle" for i in live))

    try:
        srv.wait_for(swapped, timeout=30, what="the forked instances replaced by template children")
    except AssertionError:
        raise AssertionError(f"not swapped: {seen}") from None
    assert not forked & {i["id"] for i in srv.instances("a-swap")}
    if srv.feature("memory limit"):  # the old processes are gone (found by their cgroups)
        srv.wait_for(lambda: not processes_in(forked), what=f"{forked} stopped")
    # the replacements serve
    out = srv.invoke("a-swap").json()
    assert instance_of(srv, "a-swap", out["instance"])["start_mode"] == "template"


def processes_in(instances: set[str]) -> list[int]:
    """Live processes in the memory cgroups of ``instances`` (by their ids)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                lines = [line.strip() for line in f if ":memory:" in line]
        except OSError:
            continue
        if any(line.rsplit("/", 1)[-1] in instances for line in lines):
            found.append(int(entry))
    return found


def test_templates_are_retired_by_a_new_version_and_by_delete(template: Server) -> None:
    def template_of(name: str) -> int:
        out = template.invoke(name, {}).json()
        assert instance_of(template, name, out["instance"])["start_mode"] == "template"
        return template_pid(host_pid(template, name, out))

    template.deploy("t-retire", STATE, idle_ttl_s=1)
    first = template_of("t-retire")
    # version 2 (a deploy of the same code and spec would make none): version 1's template goes
    template.deploy("t-retire", STATE, idle_ttl_s=1, env={"VERSION": "2"})
    second = template_of("t-retire")
    assert second != first
    template.wait_for(lambda: not os.path.exists(f"/proc/{first}"), timeout=20,
                      what="version 1's template to exit")
    assert os.path.exists(f"/proc/{second}")
    assert template.http.delete("/v1/functions/t-retire").status_code == 204
    template.wait_for(lambda: not os.path.exists(f"/proc/{second}"), timeout=20,
                      what="the deleted function's template to exit")


# -- spare children of templates --------------------------------------------------------------
def children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


SPARE_CGROUP = re.compile(r"/tmpl-[^/]*-s[0-9a-f]{6}$")


def in_spare_cgroup(pid: int) -> bool:
    """The process is in a spare's own cgroup: the last step before it can be handed out."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return any(":memory:" in line and SPARE_CGROUP.search(line.strip()) for line in f)
    except OSError:
        return False


def ready_spares(template_pid: int, instances: list[dict[str, Any]]) -> set[int]:
    """The template's children that are not instances and are ready to be handed out."""
    found = children(template_pid) - {i["pid"] for i in instances}
    return {pid for pid in found if in_spare_cgroup(pid)}


def one_spare(server: Server, name: str, template_pid: int) -> int:
    if not server.feature("memory limit"):
        pytest.skip("a ready spare is told by its cgroup; no memory limit on this machine")
    found = server.wait_for(lambda: ready_spares(template_pid, server.instances(name)),
                            what="a spare child of the template")
    assert len(found) == 1, found  # FAASBOX_TEMPLATE_SPARES defaults to 1
    return int(found.pop())


def cold_start_beside(server: Server, name: str) -> dict[str, Any]:
    """A cold start while the function's one instance is busy (max_instances >= 2)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(server.invoke, name, {"sleep": 3})
        server.wait_for(lambda: any(i["state"] == "busy" for i in server.instances(name)),
                        what="a busy instance")
        resp = server.invoke(name)
        assert busy.result().status_code == 200
    assert resp.status_code == 200 and resp.headers["x-faasbox-cold-start"] == "true"
    return dict(resp.json())


def test_a_spare_child_serves_the_next_cold_start(template: Server) -> None:
    template.deploy("t-spare", STATE, max_instances=3)
    first = template.invoke("t-spare").json()
    tpid = template_pid(host_pid(template, "t-spare", first))
    assert instance_of(template, "t-spare", first["instance"])["spare"] is None  # on demand
    spare = one_spare(template, "t-spare", tpid)
    # sandboxed before it is handed out: the template's uid, its own cgroup (below)
    found = parent_and_uid(spare)
    assert found is not None and found == (tpid, first["uid"])
    out = cold_start_beside(template, "t-spare")
    inst = instance_of(template, "t-spare", out["instance"])
    assert inst["pid"] == spare
    assert inst["start_mode"] == "template" and inst["spare"] is not None
    assert inst["spare"].startswith("tmpl-")
    assert out["import_pid"] != out["pid"] and out["counter"] == 42
    check_sandbox(template, "t-spare", out)
    # the spare it was is replaced
    assert one_spare(template, "t-spare", tpid) != spare


def test_a_killed_spare_is_replaced_not_handed_out(template: Server) -> None:
    template.deploy("t-spare-kill", STATE, max_instances=3)
    first = template.invoke("t-spare-kill").json()
    tpid = template_pid(host_pid(template, "t-spare-kill", first))
    dead = one_spare(template, "t-spare-kill", tpid)
    os.kill(dead, signal.SIGKILL)
    template.wait_for(lambda: dead not in children(tpid), what="the template to reap the spare")
    out = cold_start_beside(template, "t-spare-kill")
    inst = instance_of(template, "t-spare-kill", out["instance"])
    assert inst["pid"] != dead
    assert inst["start_mode"] == "template" and inst["spare"] is None  # forked on demand
    check_sandbox(template, "t-spare-kill", out)
    assert one_spare(template, "t-spare-kill", tpid) != dead  # and a new spare is made


def test_spares_go_with_their_template(template: Server) -> None:
    template.deploy("t-spare-del", STATE, max_instances=2)
    tpid = template_pid(host_pid(template, "t-spare-del", template.invoke("t-spare-del").json()))
    spare = one_spare(template, "t-spare-del", tpid)
    assert template.http.delete("/v1/functions/t-spare-del").status_code == 204
    for pid in (spare, tpid):
        template.wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), timeout=20,
                          what=f"process {pid} of the deleted function to exit")


def test_spares_are_never_shared_across_tenants(template: Server) -> None:
    """Two tenants deploy the same code under the same name: each tenant's cold starts come
    from its own template and its own spares, under its own uid."""
    clients = Clients()
    try:
        outs = {}
        for tenant in ("sa", "sb"):
            make_tenant(template, tenant)
            client = clients(template, make_key(template, tenant, "developer"))
            tenant_deploy(template, client, "same", STATE, max_instances=3)
            first = client.post("/v1/functions/same/invoke", json={}).json()
            tpid = template_pid(tenant_pid(client, first))
            spare = one_spare_of(template, client, tpid)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                busy = pool.submit(client.post, "/v1/functions/same/invoke",
                                   json={"sleep": 3})
                template.wait_for(lambda c=client: any(
                    i["state"] == "busy" for i in tenant_instances(c)), what="a busy instance")
                second = client.post("/v1/functions/same/invoke", json={}).json()
                assert busy.result().status_code == 200
            assert tenant_pid(client, second) == spare, (tenant, first, spare, second,
                                                         tenant_instances(client))
            outs[tenant] = (first, second, tpid)
        (a1, a2, ta), (b1, b2, tb) = outs["sa"], outs["sb"]
        assert ta != tb
        if template.feature("unprivileged uid"):
            assert a1["uid"] == a2["uid"] != b1["uid"] == b2["uid"]
    finally:
        clients.close()


def tenant_instances(client: Any) -> list[dict[str, Any]]:
    resp = client.get("/v1/functions/same/instances")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["instances"])


def tenant_pid(client: Any, out: dict[str, Any]) -> int:
    return int(next(i["pid"] for i in tenant_instances(client) if i["id"] == out["instance"]))


def one_spare_of(server: Server, client: Any, template_pid: int) -> int:
    if not server.feature("memory limit"):
        pytest.skip("a ready spare is told by its cgroup; no memory limit on this machine")
    found = server.wait_for(lambda: ready_spares(template_pid, tenant_instances(client)),
                            what="a spare child of the template")
    assert len(found) == 1, found
    return int(found.pop())


def test_template_cgroup_allows_for_its_children_after_the_import(template: Server) -> None:
    if not template.feature("memory limit"):
        pytest.skip("faasbox doctor reports no memory limit on this machine")
    template.deploy("t-allow", STATE, memory_mb=128, max_instances=5)
    tpid = template_pid(host_pid(template, "t-allow", template.invoke("t-allow").json()))
    with open(f"/proc/{tpid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if ":memory:" in line)
    limit = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
    if not os.path.exists(limit):
        limit = f"/sys/fs/cgroup{path}/memory.max"
    with open(limit) as f:
        # memory_mb + 4 MB for each child it may have at once (max_instances + 1 spare)
        assert int(f.read()) == (128 + 4 * (5 + 1)) * 2**20


def test_without_a_mount_namespace_template_children_get_scratch_dirs_on_disk(
        make_server: Any) -> None:
    """No tmpfs of the template's to make them in: the node makes each child's scratch dir
    on its disk, owned by the child's uid, and removes it when the instance stops."""
    srv = make_server(env={"FAASBOX_START_MODE": "template",
                           "FAASBOX_SANDBOX_DISABLE": "mount namespace"})
    assert not srv.feature("mount namespace")
    srv.deploy("t-disk", STATE, max_instances=2, idle_ttl_s=1)
    outs = burst(srv, "t-disk", 2, {"sleep": 0.3})
    assert {instance_of(srv, "t-disk", o["instance"])["start_mode"] for o in outs} == {"template"}
    for out in outs:
        check_sandbox(srv, "t-disk", out)  # its scratch dir is on disk
    srv.wait_for(lambda: not srv.instances("t-disk"), what="the instances to stop")
    # removed once the stop is done (after the instance has left the listing)
    srv.wait_for(lambda: not any(os.path.exists(o["cwd"]) for o in outs),
                 what="their scratch dirs to go")


def test_auto_mode_makes_a_template_at_once_under_a_burst(make_server: Any) -> None:
    """Four callers at once on a version never started: from the third cold start under way,
    the template is made at once and the burst's starts wait for it (each would otherwise
    import the function in a fork server's child of its own). The 1 s import keeps the four
    starts under way together."""
    srv = make_server(env={"FAASBOX_START_MODE": "auto"})
    srv.deploy("a-burst", STATE, max_instances=4, env={"IMPORT_S": "1"})
    outs = burst(srv, "a-burst", 4, {"sleep": 0.5})
    modes = sorted(instance_of(srv, "a-burst", o["instance"])["start_mode"] for o in outs)
    assert modes.count("template") >= 2, modes
    assert len({o["instance"] for o in outs}) == 4
