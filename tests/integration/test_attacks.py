"""Attacks by a hostile tenant and a hostile function, each of which must fail.

Tenant ``ka`` is the victim: its function ``alpha`` has a secret in its env. Tenant ``kb`` is
the attacker: a developer key, and a function ``probe`` that, from inside its sandboxed
instance, calls the server's API, reads files, lists directories, writes to its code and scans
other processes' environments, and reports what it got. After each attack, ``alpha`` must not
have run (its invocation records are counted) and nothing of ``ka`` may have reached ``kb``.

A function's attacks meet the sandbox first (docs/sandbox.md): its own network namespace
(network "none": the server's port is closed on its loopback), a mount namespace where the data
dir is a tmpfs holding only its own code and scratch, and a /proc of its own processes. So on
the module's server (``world``) they are asserted to fail for those reasons. The second line of
defence (API keys; uids and file permissions) is what remains where the namespaces are
unavailable, so the same attacks run again on a server started without them (``bare``). Each
part is skipped, saying why, where what it tests is not active on this machine (the namespaces
and instances under their own uids need a root server).
"""

from __future__ import annotations

import http.client
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from faasbox.tenancy.names import within
from tests.conftest import Server, open_tempdir, remove_tree
from tests.tenants import (
    Clients,
    deploy,
    error_code,
    invocations,
    key_id,
    make_key,
    make_tenant,
    wait_job,
    wait_task,
)

A, B = "ka", "kb"
BARE = "network namespace,mount namespace"  # FAASBOX_SANDBOX_DISABLE of the ``bare`` server
ALPHA = {"main.py": """
    import os
    def handler(event, context):
        event = event if isinstance(event, dict) else {}
        if "scratch" in event:  # a file in the instance's private scratch dir (its cwd)
            with open("secret.txt", "w") as f:
                f.write(event["scratch"])
            return {"path": os.path.abspath("secret.txt"), "instance": context.instance_id}
        return {"code": "A", "instance": context.instance_id}
"""}
PROBE = {"main.py": """
    import os, urllib.error, urllib.request

    def call(url, method="GET", key=None):
        data = b"{}" if method in ("POST", "PUT", "PATCH") else None
        req = urllib.request.Request(url, method=method, data=data)
        if key:
            req.add_header("Authorization", "Bearer " + key)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except urllib.error.URLError as exc:  # no HTTP answer: why not
            return f"error:{getattr(exc.reason, 'errno', exc.reason)}"
        except OSError as exc:
            return f"error:{exc.errno}"

    def read(path):
        try:
            with open(path, "rb") as f:
                return "read:" + f.read(300).decode("latin-1")
        except PermissionError:
            return "denied"
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"error:{exc.errno}"

    def listing(path):
        try:
            return "listed:" + ",".join(sorted(os.listdir(path))[:20])
        except PermissionError:
            return "denied"
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"error:{exc.errno}"

    def write(path):
        try:
            with open(path, "a") as f:
                f.write("# tampered")
            return "written"
        except PermissionError:
            return "denied"
        except OSError as exc:
            return f"error:{exc.errno}"

    def scan(needle):
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        return found

    def handler(event, context):
        event = event if isinstance(event, dict) else {}
        out = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(),
               "env_with_keys": sorted(k for k, v in os.environ.items() if "fbx_" in v)}
        api = event.get("api")
        if api:
            out["api"] = [call(api + path, method, event.get("key"))
                          for method, path in event.get("paths", [])]
        out["read"] = {p: read(p) for p in event.get("read", [])}
        out["list"] = {p: listing(p) for p in event.get("list", [])}
        if event.get("write_own_code"):
            here = os.path.dirname(os.path.abspath(__file__))
            out["code_mount_read_only"] = bool(os.statvfs(here).f_flag & os.ST_RDONLY)
            out["write"] = {"main.py": write(__file__),
                            "new file": write(os.path.join(here, "planted.py"))}
        if event.get("scan"):
            me = int(os.readlink("/proc/self"))  # its pid in the /proc it sees
            out["scan"] = [p for p in scan(event["scan"]) if p != me]
        stolen = out["read"].get(event.get("steal", ""), "")
        if api and stolen.startswith("read:"):  # a key read where it should not be: use it
            out["with_stolen_key"] = call(api + "/v1/tenants", key=stolen[5:].strip())
        return out
"""}


@dataclass
class World:
    server: Server
    a: httpx.Client  # tenant A's developer
    b: httpx.Client  # tenant B's developer (the attacker)
    a_key: str
    b_key: str
    secret: str  # in alpha's env

    def alpha_runs(self) -> int:
        return len(invocations(self.a, "alpha"))

    def probe(self, **event: Any) -> dict[str, Any]:
        resp = self.b.post("/v1/functions/probe/invoke", json=event)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


def _make_world(server: Server, pool: Clients) -> World:
    make_tenant(server, A)
    make_tenant(server, B)
    a_key, b_key = make_key(server, A, "developer"), make_key(server, B, "developer")
    a, b = pool(server, a_key), pool(server, b_key)
    secret = f"a-secret-{secrets.token_hex(8)}"
    deploy(server, a, "alpha", ALPHA, env={"SECRET": secret})
    deploy(server, b, "probe", PROBE, timeout_s=60)
    return World(server, a, b, a_key, b_key, secret)


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    """The attacks on a server with every protection this machine has."""
    pool = Clients()
    yield _make_world(server, pool)
    pool.close()


@pytest.fixture(scope="module")
def bare() -> Iterator[World]:
    """The same on a server without the network and mount namespaces (as where they are
    unavailable, docs/sandbox.md): what the second line of defence (API keys, uids, file
    permissions) has to stop on its own."""
    root = open_tempdir()
    srv = Server(root / "data", {"FAASBOX_ACQUIRE_TIMEOUT_S": "3",
                                 "FAASBOX_SANDBOX_DISABLE": BARE}).start()
    pool = Clients()
    try:
        assert not srv.feature("network namespace") and not srv.feature("mount namespace")
        yield _make_world(srv, pool)
    finally:
        pool.close()
        srv.stop()
        remove_tree(root)


def require(server: Server, *features: str) -> None:
    """Skip unless each feature is active on ``server`` (saying why one is not)."""
    rows = {f["feature"]: f for f in server.node()["sandbox"]}
    off = [f"{name} ({rows[name]['detail']})" for name in features if not rows[name]["active"]]
    if off:
        pytest.skip("inactive here: " + "; ".join(off))


def _api_paths() -> list[list[str]]:
    return [["GET", "/v1/functions"], ["GET", "/v1/tenants"], ["GET", "/v1/whoami"],
            ["POST", f"/v1/functions/alpha/invoke?tenant={A}"], ["GET", "/metrics"],
            ["PUT", "/v1/functions/planted"], ["GET", f"/v1/audit?tenant={A}"]]


def _secret_files(w: World) -> tuple[list[str], list[str]]:
    """The server's files and dirs an attacker wants (files, dirs)."""
    data = w.server.data
    assert w.server.proc is not None
    files = [str(data / "admin.key"), str(data / "faasbox.db"), str(data / "faasbox.db-wal"),
             str(data / "server.lock"), f"/proc/{w.server.proc.pid}/environ"]
    dirs = [str(data), str(data / "code"), str(data / "packages"), str(data / "scratch"),
            str(data / "instances"), str(data / "tmp")]
    return files, dirs


def _alpha_instance(w: World) -> tuple[str, int]:
    """A file with A's secret in the scratch dir of a live instance of alpha, and its pid."""
    resp = w.a.post("/v1/functions/alpha/invoke", json={"scratch": w.secret})
    assert resp.status_code == 200, resp.text
    scratch, instance = resp.json()["path"], resp.json()["instance"]
    listed = w.a.get("/v1/functions/alpha/instances").json()["instances"]
    [pid] = [i["pid"] for i in listed if i["id"] == instance]  # alive while B looks
    return scratch, pid


# -- a hostile function ---------------------------------------------------------------------
def test_a_function_cannot_reach_the_api_from_its_network_namespace(world: World) -> None:
    """Network "none": the server's port on the instance's own loopback is closed."""
    require(world.server, "network namespace")
    before = world.alpha_runs()
    paths = _api_paths()
    got = world.probe(api=world.server.url, paths=paths)
    assert got["api"] == ["error:111"] * len(paths)  # ECONNREFUSED: no server there
    forged = f"fbx_{key_id(world.a_key)}_{'0' * 64}"
    got = world.probe(api=world.server.url, paths=paths, key=forged)
    assert got["api"] == ["error:111"] * len(paths)
    assert got["env_with_keys"] == []  # the instance was given no key
    assert world.alpha_runs() == before


def test_a_function_on_the_host_network_calling_the_api_without_a_key_is_refused(
        bare: World) -> None:
    """Where the server is reachable, the API still wants a key the instance does not have."""
    before = bare.alpha_runs()
    paths = _api_paths()
    got = bare.probe(api=bare.server.url, paths=paths)
    assert got["api"] == [401] * len(paths)
    # nor with a real key id and a made-up secret
    forged = f"fbx_{key_id(bare.a_key)}_{'0' * 64}"
    assert bare.probe(api=bare.server.url, paths=paths, key=forged)["api"] == [401] * len(
        paths)
    assert got["env_with_keys"] == []  # the instance was given no key
    assert bare.alpha_runs() == before


def test_a_sandboxed_function_cannot_see_the_servers_secrets(world: World) -> None:
    """The data dir is a tmpfs of the instance's own (its code and scratch only) and /proc
    shows its own processes: the server's files are not there at all."""
    require(world.server, "mount namespace", "private /proc")
    files, dirs = _secret_files(world)
    data, code, packages, scratch, instances, tmp = dirs
    got = world.probe(api=world.server.url, read=files, list=dirs, steal=files[0])
    assert got["uid"] != 0
    assert got["read"] == dict.fromkeys(files, "missing")  # ENOENT, the admin key included
    assert set(got["list"][data].removeprefix("listed:").split(",")) <= {
        "code", "packages", "scratch", ".tmp", ".var-tmp", ".shm"}, got["list"][data]
    assert len(got["list"][code].removeprefix("listed:").split(",")) == 1  # its own code
    scratches = got["list"][scratch].removeprefix("listed:").split(",")
    assert os.path.basename(got["cwd"]) in scratches  # its own scratch dir, no other function's
    assert all(n.startswith(f"{B}.probe-") for n in scratches), scratches
    assert got["list"][packages] == got["list"][instances] == got["list"][tmp] == "missing"
    assert "with_stolen_key" not in got


def test_without_a_mount_namespace_file_permissions_keep_the_servers_secrets(
        bare: World) -> None:
    """On the host's filesystem, under its own uid, the instance is denied every secret (and
    on the host network it would use a key it read)."""
    require(bare.server, "unprivileged uid")
    files, dirs = _secret_files(bare)
    admin_key, db, wal, lock, environ = files
    got = bare.probe(api=bare.server.url, read=files, list=dirs, steal=admin_key)
    assert got["uid"] != 0
    assert got["read"][admin_key] == got["read"][db] == got["read"][lock] == "denied"
    assert got["read"][wal] in ("denied", "missing")
    assert got["read"][environ] == "denied"
    assert got["list"] == dict.fromkeys(dirs, "denied")
    assert "with_stolen_key" not in got


def test_a_function_cannot_see_another_tenants_instance(world: World) -> None:
    """Another instance's scratch dir is in that instance's tmpfs, and its process is hidden
    by the instance's own /proc (hidepid)."""
    require(world.server, "mount namespace", "private /proc")
    scratch, pid = _alpha_instance(world)
    got = world.probe(read=[scratch, f"/proc/{pid}/environ", f"/proc/{pid}/cmdline"],
                      list=[os.path.dirname(scratch)], scan=world.secret)
    assert got["read"] == {scratch: "missing", f"/proc/{pid}/environ": "missing",
                           f"/proc/{pid}/cmdline": "missing"}
    assert got["list"][os.path.dirname(scratch)] == "missing"
    assert got["scan"] == []  # no process whose env holds A's secret is even listed


def test_without_a_mount_namespace_another_tenants_instance_is_unreadable(
        bare: World) -> None:
    """On the host's filesystem and /proc: the other instance's uid keeps B out."""
    require(bare.server, "unprivileged uid")
    scratch, pid = _alpha_instance(bare)
    got = bare.probe(read=[scratch, f"/proc/{pid}/environ", f"/proc/{pid}/cmdline"],
                     list=[os.path.dirname(scratch)], scan=bare.secret)
    assert got["read"][scratch] == "denied"
    assert got["read"][f"/proc/{pid}/environ"] == "denied"
    assert got["read"][f"/proc/{pid}/cmdline"].startswith("read:")  # there, visible ...
    assert bare.secret not in got["read"][f"/proc/{pid}/cmdline"]  # ... and holds nothing
    assert got["list"][os.path.dirname(scratch)] == "denied"
    assert got["scan"] == []  # no process whose env holds A's secret is readable


def test_a_function_cannot_change_its_code_which_same_code_deploys_share(
        world: World) -> None:
    """Code is stored by content: a tenant deploying the same files as another gets the
    same directory. So no instance may write there: it is bound in read-only."""
    require(world.server, "mount namespace")
    got = world.probe(write_own_code=True)
    assert got["code_mount_read_only"] is True
    assert got["write"] == {"main.py": "denied", "new file": "error:30"}  # EROFS


def test_without_a_mount_namespace_file_permissions_keep_the_code_unchanged(
        bare: World) -> None:
    require(bare.server, "unprivileged uid")
    got = bare.probe(write_own_code=True)
    assert got["code_mount_read_only"] is False  # the host's filesystem
    assert got["write"] == {"main.py": "denied", "new file": "denied"}


# -- a hostile tenant: names --------------------------------------------------------------
def _raw(server: Server, method: str, path: str, key: str | None) -> tuple[int, str]:
    """A request with its path sent exactly as written (httpx would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=b"{}" if method != "GET" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_paths_naming_another_tenants_function_reach_nothing(world: World) -> None:
    before = world.alpha_runs()
    attempts = {
        ("POST", f"/v1/functions/{A}%2Falpha/invoke"): 404,
        ("POST", f"/v1/functions/..%2F{A}%2Falpha/invoke"): 404,
        ("POST", f"/v1/functions/%2E%2E%2F{A}%2Falpha/invoke"): 404,
        ("POST", f"/v1/functions/../{A}/alpha/invoke"): 404,
        ("POST", f"/v1/functions/{A}/alpha/invoke"): 404,
        ("POST", "/v1/functions/alpha/invoke"): 404,  # B has no alpha
        ("POST", f"/v1/functions/alpha/invoke?tenant={A}"): 403,
        ("POST", f"/v1/functions/alpha/tasks?tenant={A}"): 403,
        ("POST", f"/v1/functions/{A}%2Falpha/tasks"): 404,
        ("POST", f"/v1/functions/{A}%2Falpha/tasks:batch"): 404,
        ("GET", f"/v1/functions/{A}%2Falpha"): 404,
        ("GET", f"/v1/functions/..%2F{A}%2Falpha/versions"): 404,
        ("PUT", f"/v1/functions/{A}%2Falpha"): 404,
        ("PATCH", f"/v1/functions/{A}%2Falpha"): 404,
        ("DELETE", f"/v1/functions/{A}%2Falpha"): 404,
        ("DELETE", "/v1/functions/alpha"): 404,
        ("GET", "/v1/functions/alpha%00"): 404,
    }
    got = {route: _raw(world.server, *route, world.b_key)[0] for route in attempts}
    assert got == attempts
    # open paths are no way around the key
    for path, status in (("/docs/../v1/functions", 404), ("/docs/%2e%2e/v1/functions", 404),
                         ("/healthz/../v1/functions", 401), ("//v1/functions", 401),
                         ("/openapi.json/../v1/functions", 401), ("/v1/functions/", 401)):
        assert _raw(world.server, "GET", path, None)[0] == status, path
    assert world.alpha_runs() == before
    versions = world.a.get("/v1/functions/alpha/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1]


def test_job_fields_cannot_name_another_tenants_function(world: World) -> None:
    before, jobs = world.alpha_runs(), len(world.b.get("/v1/jobs").json()["jobs"])
    bad = [f"{A}/alpha", f"../{A}/alpha", f"{A}%2Falpha", "/alpha", "alpha/", f"{A}:alpha"]
    for name in bad:
        for body in ({"function": name, "shards": [1]},
                     {"function": "probe", "shards": [1], "reduce": name}):
            resp = world.b.post("/v1/jobs", json=body)
            assert resp.status_code == 422, (body, resp.text)
            assert error_code(resp) == "invalid_spec"
    for body in ({"function": "alpha", "shards": [1]},
                 {"function": "probe", "shards": [1], "reduce": "alpha"}):
        resp = world.b.post("/v1/jobs", json=body)  # a plain name is B's, and B has none
        assert resp.status_code == 404 and error_code(resp) == "function_not_found", resp.text
    assert len(world.b.get("/v1/jobs").json()["jobs"]) == jobs
    assert world.alpha_runs() == before


def test_chains_cannot_reach_another_tenant(world: World) -> None:
    before = world.alpha_runs()
    for target in (f"{A}/alpha", f"../{A}/alpha"):
        resp = deploy(world.server, world.b, "chainer", PROBE, on_success=target, expect=422)
        assert error_code(resp) == "invalid_spec"
        resp = world.b.patch("/v1/functions/probe", json={"on_success": target})
        assert resp.status_code == 422, resp.text
    # a plain name chains within B, where there is no alpha: the chained task fails
    deploy(world.server, world.b, "chainer", PROBE, on_success="alpha")
    assert world.b.post("/v1/functions/chainer/invoke", json={}).status_code == 200
    tasks = world.server.wait_for(
        lambda: world.b.get("/v1/tasks", params={"function": "alpha"}).json()["tasks"],
        what="the chained task")
    assert [t["source"] for t in tasks] == ["chain"]
    done = wait_task(world.b, tasks[0]["task_id"])
    assert done["status"] in ("failed", "dead"), done
    assert done["error"]["code"] == "function_not_found"
    assert world.alpha_runs() == before


def test_trigger_job_templates_cannot_reach_another_tenant(world: World) -> None:
    before = world.alpha_runs()
    every_second = {"cron": "* * * * * *", "job": {"shards": [1]}}
    for target in (f"{A}/alpha", f"../{A}/alpha"):
        evil = {**every_second, "job": {"shards": [1], "reduce": target}}
        resp = world.b.post("/v1/functions/probe/triggers", json={"name": "evil", **evil})
        assert resp.status_code == 422 and error_code(resp) == "invalid_spec", resp.text
        resp = world.b.put("/v1/functions/probe/triggers/evil", json=evil)
        assert resp.status_code == 422, resp.text
    resp = world.b.post("/v1/functions/probe/triggers", json={
        "name": "evil", **every_second, "job": {"shards": [1], "reduce": "alpha"}})
    assert resp.status_code == 404 and error_code(resp) == "function_not_found", resp.text
    # a valid trigger cannot be changed into one either
    made = world.b.post("/v1/functions/probe/triggers", json={"name": "tick", **every_second})
    assert made.status_code == 201, made.text
    resp = world.b.patch("/v1/functions/probe/triggers/tick",
                         json={"job": {"shards": [1], "reduce": f"{A}/alpha"}})
    assert resp.status_code == 422, resp.text
    try:
        world.server.wait_for(lambda: world.b.get("/v1/functions/probe/triggers/tick").json()[
            "fires"] >= 2, what="two fires of the trigger")
    finally:
        assert world.b.delete("/v1/functions/probe/triggers/tick").status_code == 204
    for job in world.b.get("/v1/jobs", params={"function": "probe"}).json()["jobs"]:
        assert job["reduce"] is None
        wait_job(world.b, job["job_id"])
    assert world.alpha_runs() == before


def test_names_within_a_tenant_never_leave_it() -> None:
    assert within("kb/probe", "alpha") == "kb/alpha"
    assert within("kb/probe", "kb/alpha") == "kb/alpha"
    assert within("kb/probe", "ka/alpha") == "kb/ka/alpha"  # found nowhere
    assert within("kb/probe", "../ka/alpha") == "kb/../ka/alpha"
    assert within("kbx/probe", "kb/alpha") == "kbx/kb/alpha"


# -- a hostile tenant: keys -----------------------------------------------------------------
def test_an_invoke_key_for_one_function_cannot_call_another(world: World) -> None:
    deploy(world.server, world.a, "alpha2", ALPHA, env={"SECRET": "two"})
    pool = Clients()
    only_alpha = pool(world.server, make_key(world.server, A, "invoke", functions=["alpha"]))
    try:
        assert only_alpha.get("/v1/whoami").json()["functions"] == ["alpha"]
        assert only_alpha.post("/v1/functions/alpha/invoke", json={}).status_code == 200
        for path, body in (("/v1/functions/alpha2/invoke", {}),
                           ("/v1/functions/alpha2/tasks", {}),
                           ("/v1/functions/alpha2/tasks:batch", [1]),
                           (f"/v1/functions/alpha/invoke?tenant={B}", {})):
            resp = only_alpha.post(path, json=body)
            assert resp.status_code == 403 and error_code(resp) == "forbidden", (path, resp.text)
        other_task = world.a.post("/v1/functions/alpha2/tasks", json={}).json()["task_id"]
        resp = only_alpha.get(f"/v1/tasks/{other_task}")
        assert resp.status_code == 404 and error_code(resp) == "task_not_found"
        mine = only_alpha.post("/v1/functions/alpha/tasks", json={})
        assert mine.status_code == 202
        assert wait_task(only_alpha, mine.json()["task_id"])["status"] == "succeeded"
        assert only_alpha.get("/v1/tasks").status_code == 403  # listing is a developer's
        # alpha2 ran only for A's developer's task, never for this key
        assert [i["trigger"] for i in invocations(world.a, "alpha2")] in ([], ["task"])
    finally:
        pool.close()


def test_guessed_secrets_for_a_real_key_id_are_refused(world: World) -> None:
    real = world.a_key
    _, ident, secret = real.split("_")
    flipped = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    guesses = [
        f"fbx_{ident}_{secrets.token_hex(32)}", f"fbx_{ident}_{flipped}",
        f"fbx_{ident}_{secret.upper()}", f"fbx_{ident}_{secret[:-1]}",
        f"fbx_{ident}_{secret}0", f"fbx_{ident}_{world.b_key.split('_')[2]}",
        f"fbx_{ident}", f"fbx_{ident}_", f"FBX_{ident}_{secret}", f"fbx_{ident.upper()}_{secret}",
        f"fbx_{key_id(world.b_key)}_{secret}",
    ]
    # a key id (12 hex digits) or secret without letters has no upper-case variant: that
    # "guess" would be the key itself (about 1 run in 280)
    guesses = [guess for guess in guesses if guess != real]
    pool = Clients()
    try:
        for guess in guesses:
            resp = pool(world.server, guess).get("/v1/whoami")
            assert resp.status_code == 401 and error_code(resp) == "unauthenticated", guess
        # the key is only read from the Authorization header, as a bearer token
        for headers, params in (({"Authorization": f"Basic {real}"}, {}),
                                ({"Authorization": real}, {}),
                                ({"X-Api-Key": real}, {}), ({}, {"api_key": real}),
                                ({"Cookie": f"api_key={real}"}, {})):
            resp = pool(world.server, None).get("/v1/whoami", headers=headers, params=params)
            assert resp.status_code == 401, headers
        ok = pool(world.server, None).get("/v1/whoami", headers={
            "Authorization": f"bearer {real}"})
        assert ok.status_code == 200 and ok.json()["tenant"] == A
    finally:
        pool.close()


def test_a_tenant_key_cannot_raise_its_own_privileges(world: World) -> None:
    invoke_b = make_key(world.server, B, "invoke")
    pool = Clients()
    try:
        for client in (world.b, pool(world.server, invoke_b)):
            for method, path, body in (
                    ("POST", f"/v1/tenants/{B}/keys", {"scope": "admin"}),
                    ("POST", f"/v1/tenants/{B}/keys", {"scope": "developer"}),
                    ("PATCH", f"/v1/tenants/{B}", {"limits": {"max_concurrency": 100000}}),
                    ("DELETE", f"/v1/tenants/{A}", None),
                    ("DELETE", f"/v1/tenants/{A}/keys/{key_id(world.a_key)}", None),
                    ("POST", "/v1/tenants", {"name": "kb-2"})):
                resp = client.request(method, path, **({"json": body} if body else {}))
                assert resp.status_code == 403 and error_code(resp) == "forbidden", (
                    method, path, resp.text)
    finally:
        pool.close()
    scopes = [k["scope"] for k in world.server.http.get(f"/v1/tenants/{B}/keys").json()["keys"]]
    assert sorted(scopes) == ["developer", "invoke"]
    assert world.a.get("/v1/whoami").status_code == 200


def wait_for_status(client: Any, workflow_id: str) -> None:
    deadline = time.monotonic() + 30
    while client.get(f"/v1/workflows/{workflow_id}").json()["status"] == "running":
        assert time.monotonic() < deadline, "the workflow did not finish"
        time.sleep(0.05)


def test_a_reused_tenant_name_does_not_inherit_the_old_tenants_records(world: World) -> None:
    server = world.server
    make_tenant(server, "kreuse")
    pool = Clients()
    try:
        old = pool(server, make_key(server, "kreuse", "developer"))
        deploy(server, old, "fn", ALPHA, env={"SECRET": "old"})
        record = old.post("/v1/functions/fn/invoke", json={}).headers["x-faasbox-request-id"]
        # and what is the tenant's beside its functions: a workflow run (its input and result),
        # a definition, a topic, a webhook signing secret
        flow = old.post("/v1/workflows", json={"chain": ["fn"], "input": {"x": "old"}}).json()
        assert old.put("/v1/workflow-definitions/old-def",
                       json={"chain": ["fn"]}).status_code == 200
        assert old.post("/v1/topics", json={"name": "old-topic"}).status_code == 201
        old_secret = old.get("/v1/webhook-secret").json()["secret"]
        wait_for_status(old, flow["workflow_id"])
        assert old.delete("/v1/functions/fn").status_code == 204
        assert server.http.delete("/v1/tenants/kreuse").status_code == 204
        make_tenant(server, "kreuse")
        new = pool(server, make_key(server, "kreuse", "developer"))
        assert new.get(f"/v1/invocations/{record}").status_code == 404
        assert record not in new.get("/v1/invocations").text
        assert new.get(f"/v1/workflows/{flow['workflow_id']}").status_code == 404
        assert new.get("/v1/workflows").json()["workflows"] == []
        assert new.get("/v1/workflow-definitions").json()["definitions"] == []
        assert new.get("/v1/topics").json()["topics"] == []
        # the old team knew the secret: the new one's receivers must not trust it
        assert new.get("/v1/webhook-secret").json()["secret"] != old_secret
    finally:
        pool.close()
