"""`faasbox server --workers N`: N servers behind one port on one shared SQLite file. Both
take connections; a worker killed is started again and loses no accepted task; stopping the
supervisor stops every worker, and killing it takes them with it; a data dir first used by one
server alone serves its functions on workers; an instance cannot reach the listening socket."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    PG_TEMPLATE,
    Server,
    clear_cgroups,
    free_port,
    gate_dir,
    process_alive,
    remove_tree,
)
from tests.integration.test_cluster import submit_batch

SLEEPY = {"main.py": "import time\n\ndef handler(event, context):\n"
                     "    time.sleep(0.01)\n    return event\n"}
ENV = {"FAASBOX_SERVER_TIMEOUT_S": "3", "FAASBOX_ACQUIRE_TIMEOUT_S": "30"}


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


class Workers(Server):
    def __init__(self, data: Path, count: int = 2, env: dict[str, str] | None = None) -> None:
        super().__init__(data, {**ENV, **(env or {})}, ["--workers", str(count)])

    def nodes(self, http: httpx.Client | None = None) -> dict[str, Any]:
        resp = (http or self.http).get("/v1/nodes")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def alive(self) -> dict[int, str]:
        """pid -> server id of the live servers on the store."""
        return {s["pid"]: s["id"] for s in self.nodes()["servers"] if s["alive"]}

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return children(self.proc.pid)


@pytest.fixture
def root() -> Iterator[Path]:
    # outside /tmp, as a real install's data dir (an instance's mount namespace hides /tmp
    # whole, which would hide a data dir below it whatever the sandbox does for it)
    path = gate_dir()
    yield path
    for data in path.glob("*/workers/*"):
        clear_cgroups(data)
    for data in path.glob("data*"):
        clear_cgroups(data)
    remove_tree(path)


@pytest.fixture
def workers(root: Path) -> Iterator[Workers]:
    srv = Workers(root / "data").start()
    yield srv
    srv.stop()


def test_two_workers_share_the_port_and_the_store(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2
    assert workers.wait_for(lambda: sorted(workers.alive()) == sorted(pids),
                            what="both workers on the store")
    # each new connection is accepted by either worker: both answer within a bounded number
    seen = set()
    for _ in range(400):
        with httpx.Client(base_url=workers.url, headers=workers.http.headers) as fresh:
            seen.add(workers.nodes(fresh)["self"])
        if len(seen) == 2:
            break
    assert seen == set(workers.alive().values())
    # one node's memory is split between them
    servers = workers.nodes()["servers"]
    assert servers[0]["memory_mb"] == servers[1]["memory_mb"]
    workers.deploy("wk-echo", SLEEPY)
    for n in range(20):
        with httpx.Client(base_url=workers.url, headers=workers.http.headers) as fresh:
            resp = fresh.post("/v1/functions/wk-echo/invoke", json={"n": n})
            assert resp.status_code == 200 and resp.json() == {"n": n}, resp.text
    ids = submit_batch(workers, "wk-echo", 100)
    for task_id in ids:
        done = workers.http.get(f"/v1/tasks/{task_id}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done


def test_a_killed_worker_is_started_again_and_loses_no_task(workers: Workers) -> None:
    workers.deploy("wk-sleepy", SLEEPY, max_instances=4)
    first = workers.wait_for(lambda: len(workers.alive()) == 2 and workers.alive(),
                             what="two workers")
    ids = submit_batch(workers, "wk-sleepy", 400)
    victim = workers.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    workers.http.close()  # its connection may have been the killed worker's
    workers.http = httpx.Client(base_url=workers.url, timeout=120,
                                headers={"Authorization": f"Bearer {workers.admin_key}"})
    for task_id in ids:
        done = workers.http.get(f"/v1/tasks/{task_id}", params={"wait": 60}).json()
        assert done["status"] == "succeeded", done
    # a new worker took its place: two live servers again, the killed one not among them
    after = workers.wait_for(
        lambda: (alive := workers.alive()) and len(alive) == 2 and victim not in alive
        and alive, timeout=30, what="the worker started again")
    assert set(after.values()) != set(first.values())
    assert "worker 1 (pid" in workers.log.read_text()
    assert "exited with signal SIGKILL; starting it again" in workers.log.read_text()


def test_a_worker_stuck_in_its_start_does_not_hold_up_the_others(workers: Workers) -> None:
    """Worker 1 is killed and its replacement stopped (SIGSTOP) as soon as it appears, in the
    middle of its start; worker 0, killed then, is started again all the same."""
    assert workers.wait_for(lambda: len(workers.alive()) == 2, what="two workers")
    zero, one = workers.worker_pids()
    os.kill(one, signal.SIGKILL)
    stuck = workers.wait_for(
        lambda: [p for p in workers.worker_pids() if p not in (zero, one)], what="worker 1 again")
    os.kill(stuck[0], signal.SIGSTOP)
    try:
        os.kill(zero, signal.SIGKILL)
        # the port answers again: a new worker 0 serves while the other is still stopped
        again = workers.wait_for(
            lambda: [p for p in workers.worker_pids() if p not in (zero, one, stuck[0])],
            timeout=30, what="worker 0 again")

        def served_by_the_new_worker_0() -> bool:
            # a new connection each time: one that the stopped worker took would hang
            try:
                with httpx.Client(base_url=workers.url, headers=workers.http.headers,
                                  timeout=2) as fresh:
                    return again[0] in {s["pid"] for s in workers.nodes(fresh)["servers"]
                                        if s["alive"]}
            except httpx.TransportError:
                return False

        assert workers.wait_for(served_by_the_new_worker_0, timeout=30, what="the port served")
    finally:
        os.kill(stuck[0], signal.SIGCONT)


def test_stopping_the_supervisor_stops_every_worker(workers: Workers) -> None:
    workers.deploy("wk-stop", SLEEPY)
    assert workers.invoke("wk-stop", {}).status_code == 200
    pids = workers.worker_pids()
    below = [p for w in pids for p in children(w)]  # fork servers and templates
    assert workers.proc is not None
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(30) == 0
    for pid in pids + below:
        assert workers.wait_for(lambda p=pid: not process_alive(p), what=f"pid {pid} gone")


def test_a_killed_supervisor_takes_its_workers_with_it(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert workers.proc is not None
    workers.proc.kill()
    workers.proc.wait()
    for pid in pids:
        assert workers.wait_for(lambda p=pid: not process_alive(p), timeout=30,
                                what=f"worker {pid} gone")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{workers.url}/healthz", timeout=2)


def test_workers_on_postgresql_keep_its_password_off_command_lines_and_logs(
        root: Path, pg_cluster: Any) -> None:
    name = f"wk{os.getpid()}"
    url = pg_cluster.clone(PG_TEMPLATE, name)
    secret = "hunter2-not-for-ps"  # the throwaway cluster trusts local logins: any password
    with_password = url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    srv = Workers(root / "data", env={"FAASBOX_STORE_URL": with_password}).start()
    try:
        srv.wait_for(lambda: len(srv.alive()) == 2, what="both workers on the database")
        assert srv.nodes()["store"] == "postgresql"
        srv.deploy("wk-pg", SLEEPY)
        assert srv.invoke("wk-pg", {"n": 1}).json() == {"n": 1}
        assert srv.proc is not None
        for pid in [srv.proc.pid, *srv.worker_pids()]:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read()
        assert secret not in srv.log.read_text()
    finally:
        srv.stop()
        pg_cluster.drop(name)


def test_a_data_dir_first_used_alone_serves_on_workers(root: Path) -> None:
    alone = Server(root / "data", ENV).start()
    alone.deploy("wk-old", SLEEPY)
    key = alone.admin_key
    alone.stop()
    srv = Workers(root / "data").start()
    try:
        assert srv.admin_key == key  # the same admin key file, still live
        srv.wait_for(lambda: len(srv.alive()) == 2, what="both workers on the store")
        # both workers serve it (each then has an instance): its code is in the shared cache
        for n in range(400):
            with httpx.Client(base_url=srv.url, headers=srv.http.headers) as fresh:
                resp = fresh.post("/v1/functions/wk-old/invoke", json={"n": n})
                assert resp.status_code == 200 and resp.json() == {"n": n}, resp.text
            if all(s["instances"] for s in srv.nodes()["servers"] if s["alive"]):
                break
        assert [s["instances"] > 0 for s in srv.nodes()["servers"]] == [True, True]
    finally:
        srv.stop()


def test_an_instance_does_not_hold_the_listening_socket(workers: Workers) -> None:
    assert workers.proc is not None
    listening = {os.readlink(f"/proc/{workers.proc.pid}/fd/{fd}")
                 for fd in os.listdir(f"/proc/{workers.proc.pid}/fd")}
    listening = {t for t in listening if t.startswith("socket:")}
    assert listening
    probe = {"main.py": (
        "import os\n\ndef handler(event, context):\n"
        "    out = []\n"
        "    for fd in os.listdir('/proc/self/fd'):\n"
        "        try:\n"
        "            out.append(os.readlink('/proc/self/fd/' + fd))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return out\n")}
    workers.deploy("wk-probe", probe)
    for _ in range(4):
        resp = workers.invoke("wk-probe", {})
        assert resp.status_code == 200, resp.text
        assert not listening & set(resp.json()), resp.json()


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port held by a listening socket for the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_a_function_on_a_worker_cannot_reach_what_the_workers_share(workers: Workers) -> None:
    data = workers.data
    probe = {"main.py": (
        "import os\n\ndef handler(event, context):\n"
        "    out = {}\n"
        "    for path in event['paths']:\n"
        "        try:\n"
        "            if os.path.isdir(path):\n"
        "                out[path] = sorted(os.listdir(path))\n"
        "            else:\n"
        "                with open(path, 'rb') as f:\n"
        "                    out[path] = len(f.read())\n"
        "        except OSError as exc:\n"
        "            out[path] = exc.errno\n"
        "    return out\n")}
    workers.deploy("wk-reach", probe)
    paths = [str(data / "admin.key"), str(data / "faasbox.db"), str(data / "faasbox.db-lock"),
             str(data / "code"), str(data / "packages"), str(data / "tmp"),
             str(data / "workers"), str(data / "workers" / "0" / "server.lock")]
    assert (data / "admin.key").is_file() and (data / "code").is_dir()  # they exist
    for _ in range(4):  # whichever worker runs it
        resp = workers.invoke("wk-reach", {"paths": paths})
        assert resp.status_code == 200, resp.text
        seen = resp.json()
        for path in paths:
            if path.endswith(("/code", "/packages", "/workers")):
                # its own code is bound back, read-only, and its scratch dir made anew in
                # its tmpfs (workers/K/scratch/ID): nothing else is there
                assert (seen[path] in (errno.ENOENT, errno.EACCES)
                        or len(seen[path]) <= 1), (path, seen[path])
            else:
                assert isinstance(seen[path], int) and seen[path] in (
                    errno.ENOENT, errno.EACCES), (path, seen[path])


def test_a_dashboard_session_holds_on_every_worker(workers: Workers) -> None:
    """Signed in through one worker, a browser's next connection may reach the other: the
    session holds there, and a sign-out through either ends it on both."""
    assert workers.wait_for(lambda: len(workers.alive()) == 2, what="two workers")
    jar: dict[str, str] = {}

    def fresh() -> httpx.Client:  # a new connection: either worker may take it
        return httpx.Client(base_url=workers.url, timeout=30, cookies=dict(jar))

    with fresh() as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
        jar.update(c.cookies)
    assert token is not None
    with fresh() as c:
        resp = c.post("/ui/login", data={"csrf": token.group(1), "key": workers.admin_key})
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/", resp.text
        jar["faasbox_session"] = c.cookies["faasbox_session"]

    def page_on(worker_ids: set[str]) -> str:
        """A page over a new connection, and the id of the worker that served it."""
        with fresh() as c:
            c.headers["Authorization"] = f"Bearer {workers.admin_key}"
            served = c.get("/v1/nodes").json()["self"]  # the same connection, the same worker
            del c.headers["Authorization"]
            page = c.get("/ui/functions")
            assert page.status_code == 200, (served, page.status_code)
            worker_ids.add(served)
            return page.text

    seen: set[str] = set()
    for _ in range(400):
        text = page_on(seen)
        if len(seen) == 2:
            break
    assert seen == set(workers.alive().values())
    csrf = re.search(r'name="csrf" value="([^"]+)"', text)
    assert csrf is not None
    with fresh() as c:
        assert c.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
    gone: set[str] = set()
    for _ in range(400):
        with fresh() as c:
            c.headers["Authorization"] = f"Bearer {workers.admin_key}"
            served = c.get("/v1/nodes").json()["self"]
            del c.headers["Authorization"]
            resp = c.get("/ui/functions")
            assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
            gone.add(served)
        if len(gone) == 2:
            break
    assert gone == seen


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faasbox", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_bad_workers_options_are_clear_errors(root: Path) -> None:
    done = run_cli("server", "--workers", "0", "--data", str(root / "d0"))
    assert done.returncode != 0
    assert "--workers must be at least 1, not 0" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # the port taken
    with held_port() as port:
        done = run_cli("server", "--workers", "2", "--port", str(port),
                       "--data", str(root / "d1"))
        assert done.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
    # the data dir taken by a server alone
    alone = Server(root / "data", ENV).start()
    try:
        done = run_cli("server", "--workers", "2", "--port", str(free_port()),
                       "--data", str(alone.data))
        assert done.returncode != 0
        assert "another faasbox server is using" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert alone.invoke("nothing", {}).status_code == 404  # untouched
    finally:
        alone.stop()
