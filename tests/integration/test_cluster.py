"""Several servers on one store (PostgreSQL, or one SQLite file on this machine): any server
serves what another deployed, work runs wherever there is room, a killed server's tasks are
taken back by the others, cron fires once per tick, and a PostgreSQL restart loses no
accepted task."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import (
    ERRNO_OF,
    PG_TEMPLATE,
    Server,
    _tmp_root,
    migrate_pg,
    open_tempdir,
)

NOOP = {"main.py": "def handler(event, context):\n    return event\n"}
TERMINAL = {"succeeded", "failed", "dead", "expired", "cancelled"}
FAST = {"FAASBOX_SERVER_TIMEOUT_S": "3", "FAASBOX_ACQUIRE_TIMEOUT_S": "30"}
_dbs = iter(range(10**6))


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a store of the test's own: a PostgreSQL database, or an SQLite file that
    no server has in its data dir."""
    if request.param == "sqlite":
        yield f"sqlite:///{open_tempdir() / 'shared.db'}"
        return
    pg_cluster = request.getfixturevalue("pg_cluster")
    name = f"cl{next(_dbs)}_{os.getpid()}"
    url = pg_cluster.clone(PG_TEMPLATE, name)
    yield url
    pg_cluster.drop(name)


@pytest.fixture
def shared_sqlite() -> str:
    return f"sqlite:///{open_tempdir() / 'shared.db'}"


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``?`` parameters) read straight from the store at ``url``."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(sql, params).fetchall()
    with psycopg.connect(url, autocommit=True) as pg:
        return pg.execute(sql.replace("?", "%s"), params).fetchall()


def servers(make_server: Any, url: str, n: int, **env: str) -> list[Server]:
    return [make_server(env={"FAASBOX_STORE_URL": url, **FAST, **env}) for _ in range(n)]


def counts(srv: Server, function: str) -> Counter[str]:
    resp = srv.http.get(f"/v1/functions/{function}/queue")
    assert resp.status_code == 200, resp.text
    return Counter(resp.json()["counts"])


def submit_batch(srv: Server, function: str, n: int, start: int = 0) -> list[str]:
    ids: list[str] = []
    for at in range(start, start + n, 1000):
        events = list(range(at, min(at + 1000, start + n)))
        resp = srv.http.post(f"/v1/functions/{function}/tasks:batch", json=events)
        assert resp.status_code == 202, resp.text
        ids += [t["task_id"] for t in resp.json()["tasks"]]
    return ids


def test_any_server_serves_what_another_deployed_and_changed(make_server: Any,
                                                             database: str) -> None:
    a, b = servers(make_server, database, 2)
    a.deploy("cl-echo", NOOP)
    # b never saw the deploy: it fetches the code from the store
    resp = b.invoke("cl-echo", {"n": 1})
    assert resp.status_code == 200 and resp.json() == {"n": 1}, resp.text
    # a task submitted through a runs (on a or b) and is visible through both
    task = a.http.post("/v1/functions/cl-echo/tasks", json={"n": 2}).json()["task_id"]
    done = b.http.get(f"/v1/tasks/{task}", params={"wait": 30}).json()
    assert done["status"] == "succeeded" and done["result"] == {"n": 2}, done
    # a new version through b is what a serves next
    b.deploy("cl-echo", {"main.py": "def handler(event, context):\n    return 'v2'\n"})
    assert a.wait_for(lambda: a.invoke("cl-echo", {}).json() == "v2", what="v2 on a")
    # a key revoked through a stops working on b
    made = a.http.post("/v1/tenants/default/keys", json={"scope": "invoke"}).json()
    with b.client(made["key"]) as client:
        assert client.post("/v1/functions/cl-echo/invoke", json={}).status_code == 200
        assert a.http.delete(f"/v1/tenants/default/keys/{made['key_id']}").status_code == 204
        assert b.wait_for(lambda: client.post("/v1/functions/cl-echo/invoke",
                                              json={}).status_code == 401, what="revoked on b")
    # both servers are listed, each with its heartbeat
    nodes = a.http.get("/v1/nodes").json()
    assert nodes["store"] == database.split(":")[0]
    live = [s for s in nodes["servers"] if s["alive"]]
    assert len(live) == 2 and sum(s["self"] for s in live) == 1, nodes
    assert {s["url"] for s in live} == {a.url, b.url}
    # a deleted function is gone from b too
    assert a.http.delete("/v1/functions/cl-echo").status_code in (200, 204)
    assert b.wait_for(lambda: b.invoke("cl-echo", {}).status_code == 404, what="deleted on b")


def test_a_task_running_on_another_server_is_cancelled(make_server: Any, database: str) -> None:
    a, b = servers(make_server, database, 2)
    a.deploy("cl-slow", {"main.py": "import time\n\ndef handler(event, context):\n"
                                    "    time.sleep(60)\n"}, max_instances=1, timeout_s=120)
    task = a.http.post("/v1/functions/cl-slow/tasks", json={}).json()["task_id"]
    a.wait_for(lambda: a.http.get(f"/v1/tasks/{task}").json()["status"] == "running",
               what="running")
    owner = a.http.get(f"/v1/tasks/{task}").json()
    # cancel through whichever server does not run it (both are tried; one is remote)
    for srv in (a, b):
        resp = srv.http.post(f"/v1/tasks/{task}/cancel")
        assert resp.status_code == 200, resp.text
    done = a.http.get(f"/v1/tasks/{task}", params={"wait": 30}).json()
    assert done["status"] == "cancelled", (owner, done)


def test_kill_9_of_one_of_three_servers_loses_no_task_and_only_its_tasks_run_twice(
        make_server: Any, database: str) -> None:
    cluster = servers(make_server, database, 3)
    a, b, c = cluster
    a.deploy("cl-noop", NOOP, max_instances=4)
    ids = submit_batch(a, "cl-noop", 10_000)
    assert len(set(ids)) == 10_000
    # b has run some: freeze it, note what it holds, kill it
    b.wait_for(lambda: counts(a, "cl-noop")["succeeded"] >= 1500, timeout=120,
               what="work under way")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.0)  # what it had sent before it stopped is committed (or not) by now
    held = {r[0] for r in query(
        database, "SELECT t.id FROM tasks t JOIN servers s ON s.id = t.lease_owner"
        " WHERE t.status = 'running' AND s.url = ?", (b.url,))}
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    a.wait_for(lambda: counts(a, "cl-noop")["succeeded"] == 10_000, timeout=300,
               what="every task succeeded")
    assert set(counts(c, "cl-noop")) == {"succeeded"}
    twice = {r[0] for r in query(
        database, "SELECT id FROM tasks WHERE function = 'default/cl-noop' AND attempts > 1")}
    owners = query(database, "SELECT COUNT(DISTINCT url) FROM servers")
    assert twice <= held, f"{len(twice - held)} tasks ran twice that b did not hold"
    assert owners[0][0] >= 2


def test_cron_fires_once_per_tick_across_three_servers(make_server: Any,
                                                       database: str) -> None:
    cluster = servers(make_server, database, 3)
    a = cluster[0]
    a.deploy("cl-tick", NOOP)
    resp = a.http.post("/v1/functions/cl-tick/triggers",
                       json={"name": "every-second", "cron": "* * * * * *"})
    assert resp.status_code == 201, resp.text

    def fired() -> list[dict[str, Any]]:
        rows = a.http.get("/v1/tasks", params={"function": "cl-tick", "limit": 200}).json()
        return [t for t in rows["tasks"] if t.get("source") == "cron"]

    a.wait_for(lambda: len(fired()) >= 6, timeout=60, what="six fires")
    assert a.http.delete("/v1/functions/cl-tick/triggers/every-second").status_code == 204
    keys = [r[0] for r in query(
        database, "SELECT idempotency_key FROM tasks WHERE function = 'default/cl-tick'"
        " AND source = 'cron'")]
    seconds = sorted(int(float(k.rsplit(":", 1)[1])) for k in keys)
    assert len(seconds) == len(set(seconds)), "a tick fired twice"
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), "a tick was missed"


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A PostgreSQL cluster of this test's own: it is restarted."""
    from tests.pg import PgCluster

    reason = PgCluster.available()
    if reason is not None:
        pytest.skip(reason)
    cluster = PgCluster(_tmp_root()).start()
    try:
        cluster.create_template("t", "")
        migrate_pg(cluster.url("t"))
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(300)
def test_a_database_restart_is_503_meanwhile_and_loses_no_accepted_task(
        make_server: Any, own_cluster: Any) -> None:
    url = own_cluster.clone("t", "db")
    # short leases: a lease whose commit went through as the database stopped (its server
    # never heard) is taken back soon
    a, b = servers(make_server, url, 2, FAASBOX_ACQUIRE_TIMEOUT_S="5")
    a.deploy("cl-pg", NOOP, max_instances=2, timeout_s=5)
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load(srv: Server) -> None:
        with httpx.Client(base_url=srv.url, timeout=30,
                          headers={"Authorization": f"Bearer {srv.admin_key}"}) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    resp = client.post("/v1/functions/cl-pg/tasks", json={"n": n})
                except httpx.TransportError:
                    statuses[0] += 1
                    continue
                statuses[resp.status_code] += 1
                if resp.status_code == 202:
                    accepted.append(resp.json()["task_id"])
                else:
                    assert resp.status_code == 503, resp.text
                    assert resp.json()["error"]["code"] == "store_unavailable", resp.text
                time.sleep(0.005)

    threads = [threading.Thread(target=load, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    try:
        a.wait_for(lambda: len(accepted) >= 200, timeout=60, what="load")
        own_cluster._pg_ctl_stop("fast")
        # while it is down: writes are 503, and /healthz says so once a heartbeat failed
        a.wait_for(lambda: a.http.get("/healthz").status_code == 503, timeout=30,
                   what="healthz 503")
        health = a.http.get("/healthz").json()
        assert health["status"] == "store_unavailable" and health["leasing"] is False
        a.wait_for(lambda: statuses[503] >= 5, timeout=30, what="503s")
        own_cluster._pg_ctl_start()
        a.wait_for(lambda: a.http.get("/healthz").status_code == 200, timeout=60,
                   what="healthz back")
        before = len(accepted)
        a.wait_for(lambda: len(accepted) >= before + 100, timeout=60, what="load again")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses[500] == 0
    total = len(accepted)

    def finished() -> bool:
        return sum(counts(a, "cl-pg")[s] for s in TERMINAL) >= total

    a.wait_for(finished, timeout=120, what="every accepted task ended")
    final = counts(a, "cl-pg")
    # a submit whose commit went through as the database stopped may have had a 503: such a
    # task exists without having been accepted, so the count is at least the accepted ones
    assert set(final) == {"succeeded"} and final["succeeded"] >= total, final
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM tasks WHERE id = ANY(%s)"
                           " AND status = 'succeeded'", (accepted,)).fetchone()
    assert row is not None and row[0] == total == len(set(accepted))


PROBE = {"main.py": r"""
import os, socket
""" + ERRNO_OF + r"""

def handler(event, context):
    db, sockets = event["db"], event["db"] + "-servers"
    out = {name: _errno(lambda: open(path, "rb").read(1))
           for name, path in {"db": db, "lock": db + "-lock", "owners": db + "-owners",
                              "wal": db + "-wal"}.items()}
    out["list_sockets"] = _errno(lambda: os.listdir(sockets))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out["send"] = [_errno(lambda: s.sendto(b'{"kind": "control"}', os.path.join(sockets, n)))
                   for n in event["names"]]
    return out
"""}


def test_a_function_cannot_reach_the_shared_file_or_the_servers_sockets(
        make_server: Any, shared_sqlite: str) -> None:
    a, b = servers(make_server, shared_sqlite, 2)
    a.deploy("cl-probe", PROBE)
    db = shared_sqlite.removeprefix("sqlite:///")
    names = os.listdir(db + "-servers")
    assert len(names) == 2  # one socket per server
    for srv in (a, b):
        resp = srv.invoke("cl-probe", {"db": db, "names": names})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        # not there at all (its own /tmp), or not its to open (another uid)
        refused = {errno.ENOENT, errno.EACCES}
        for what in ("db", "lock", "owners", "wal", "list_sockets"):
            assert out[what] in refused, (what, out)
        assert all(e in refused for e in out["send"]), out
