"""Fixtures that start the real faasbox server on a free loopback port.

The server is a real subprocess (``python -m faasbox server``) with its own data directory;
functions are real folders; instances are real processes. Nothing of faasbox is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faasbox.codestore import zip_folder

READY_TIMEOUT_S = 30.0

# Every temp dir of a test session lives under one session root, made by the controlling pytest
# process and passed to xdist workers in the environment. A test's dirs are removed after the
# test, a module's after the module, and the session fails if anything is left at its end.
TMP_ROOT_ENV = "FAASBOX_TEST_TMP_ROOT"
# gate dirs (see gate_dir) have a session root of their own, where instances can see them
GATE_ROOT_ENV = "FAASBOX_TEST_GATE_ROOT"
GATE_PARENT = Path("/run")
# for the source of probe functions: run a call, keep its errno (0: it succeeded)
ERRNO_OF = """
def _errno(fn):
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return 0
"""

_tempdirs: list[Path] = []


def _make_root(env: str, parent: Path | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="faasbox-test-", dir=parent))
    path.chmod(0o711)
    os.environ[env] = str(path)
    return path


def _tmp_root() -> Path:
    root = os.environ.get(TMP_ROOT_ENV)
    if root is None or not Path(root).is_dir():  # imported outside a configured session
        return _make_root(TMP_ROOT_ENV)
    return Path(root)


def _gate_root() -> Path | None:
    """The session root of gate dirs under /run, or None where this process cannot write
    there (not root: then instances have no mount namespace either, see gate_dir)."""
    root = os.environ.get(GATE_ROOT_ENV)
    if root is not None and Path(root).is_dir():
        return Path(root)
    if os.geteuid() != 0 or not os.access(GATE_PARENT, os.W_OK):
        return None
    try:
        return _make_root(GATE_ROOT_ENV, GATE_PARENT)
    except OSError:
        return None


def open_tempdir() -> Path:
    """A temp dir other uids may traverse (pytest's own is 0700), so that sandboxed instances
    running under their own uids can reach code in a server's data dir. It is removed after
    the test (or the module, for a module-scoped fixture) that made it."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=_tmp_root()))
    path.chmod(0o711)
    _tempdirs.append(path)
    return path


def gate_dir() -> Path:
    """A temp dir for gate files: a handler that waits until the test creates a file in it
    must see that file from inside its instance.

    An instance's mount namespace (docs/sandbox.md) covers /tmp, /var/tmp, /dev/shm and the
    server's data dir with a tmpfs of its own, so an open_tempdir() (under /tmp) is not there
    for it; the rest of the host stays visible, read-only, files made after the instance
    started included. So a gate dir lives under /run (traversable by the instances' uids) when
    this process may write there, as it may whenever it is root, which the mount namespace
    needs; elsewhere (no mount namespace) it is an open_tempdir(). Either way it is removed
    after the test (or module) that made it. Instances cannot write into it."""
    root = _gate_root()
    if root is None:
        return open_tempdir()
    path = Path(tempfile.mkdtemp(prefix="gate-", dir=root))
    path.chmod(0o711)
    _tempdirs.append(path)
    return path


def clear_cgroups(data: Path) -> None:
    """Kill and remove what servers on ``data`` left in their cgroup scope. A server that a
    test kills leaves it to the next server on the same data dir, which never comes: without
    this, every such test would leave cgroups (and any instance that outlived its server)
    behind on the machine."""
    scope = "srv-" + hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    for top in [*Path("/sys/fs/cgroup").glob(f"*/faasbox/{scope}"),
                *Path("/sys/fs/cgroup").glob(f"faasbox/{scope}")]:
        dirs = [d for d in top.rglob("*") if d.is_dir()]
        for d in [*sorted(dirs, key=lambda d: len(d.parts), reverse=True), top]:
            deadline = time.monotonic() + 2
            while True:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # left for the machine's next clean-up; nothing fails for it
                    time.sleep(0.02)


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (an instance is stopped in the background)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_tree(path: Path) -> None:
    """``rm -rf path``, also where instances (under other uids) left entries the owner may not
    write: a directory without write or search permission is opened up. Retries a few times in
    case an instance that outlived its server is still writing into it; what still cannot be
    removed then raises (failing the test or fixture that made the dir)."""

    def fix(func: Any, name: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        for target in (os.path.dirname(name), name):
            try:
                if os.path.isdir(target) and not os.path.islink(target):
                    os.chmod(target, 0o700)
            except OSError:
                pass
        func(name)

    for attempt in range(5):
        if not os.path.lexists(path):
            return
        try:
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=fix)
            else:
                shutil.rmtree(path, onerror=lambda f, n, info: fix(f, n, info[1]))
            return
        except OSError:
            if attempt == 4:
                raise
            time.sleep(0.2)


def _remove_made_since(start: int) -> None:
    made = _tempdirs[start:]
    del _tempdirs[start:]
    for path in made:
        remove_tree(path)


@pytest.fixture(autouse=True, scope="module")
def _module_tempdirs() -> Iterator[None]:
    """Remove the temp dirs that module-scoped fixtures made (after they are torn down)."""
    start = len(_tempdirs)
    yield
    _remove_made_since(start)


@pytest.fixture(autouse=True)
def _test_tempdirs() -> Iterator[None]:
    """Remove the temp dirs a test and its function-scoped fixtures made."""
    start = len(_tempdirs)
    yield
    _remove_made_since(start)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers it too; here for runs without xdist (-p no:xdist)
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one xdist worker")
    if not hasattr(config, "workerinput"):  # the controlling process: fresh session roots
        _make_root(TMP_ROOT_ENV)
        os.environ.pop(GATE_ROOT_ENV, None)
        _gate_root()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session if it left temp dirs behind (then remove them and the roots)."""
    if hasattr(session.config, "workerinput") or TMP_ROOT_ENV not in os.environ:
        return
    problems = []
    for env in (TMP_ROOT_ENV, GATE_ROOT_ENV):
        if env not in os.environ:
            continue
        root = Path(os.environ[env])
        left = sorted(root.iterdir()) if root.is_dir() else []
        if left:
            problems.append(f"left {len(left)} temp dir(s) behind in {root}: "
                            + ", ".join(p.name for p in left[:10]))
        try:
            remove_tree(root)
        except OSError as exc:
            problems.append(f"could not remove {root}: {exc}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "the test session " + "; ".join(problems)
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(message, red=True, bold=True)
        else:
            sys.stderr.write(message + "\n")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_function(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


NO_BURST_AHEAD = "burst_ahead=0"


class Server:
    """A running ``faasbox server`` and a client for it."""

    def __init__(self, data: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        # data dirs may be reused by a restarted server; the log sits beside them
        self.data = data
        self.args = args or []  # more options of `faasbox server`
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FAASBOX_REAP_INTERVAL_S": "0.2", **(env or {})}
        if not {"FAASBOX_KEEPALIVE_POLICY", "FAASBOX_KEEPALIVE_ARGS"} & set(env or {}):
            # a cold start starts only its own instance, so that tests can count them;
            # tests/integration/test_burst_ahead.py runs the default
            self.env["FAASBOX_KEEPALIVE_ARGS"] = NO_BURST_AHEAD
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"server-{self.port}.log"
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self.functions_root = data.parent / "functions"
        self.admin_key = ""

    def start(self) -> Server:
        self.data.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faasbox", "server", "--port", str(self.port),
                 "--data", str(self.data), "--log-level", "warning", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    self.admin_key = self.read_admin_key()
                    self.http.headers["Authorization"] = f"Bearer {self.admin_key}"
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server not ready:\n{self.log.read_text()}")

    def read_admin_key(self) -> str:
        """The admin key the server wrote at start (``<data>/admin.key``)."""
        path = self.data / "admin.key"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not path.exists() or not path.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no admin key in {path}")
            time.sleep(0.02)
        return path.read_text().strip()

    def client(self, key: str | None) -> httpx.Client:
        """A client that sends ``key`` (None: no Authorization header)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)

    def cli_env(self) -> dict[str, str]:
        """What the faasbox CLI needs to talk to this server as its admin."""
        return {"FAASBOX_URL": self.url, "FAASBOX_API_KEY": self.admin_key}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()

    # -- helpers ----------------------------------------------------------------------------
    def folder(self, name: str, files: dict[str, str]) -> Path:
        return write_function(self.functions_root / name, files)

    def deploy(self, name: str, files: dict[str, str] | None = None, *,
               folder: Path | None = None, expect: int | None = None,
               **spec: Any) -> httpx.Response:
        body: dict[str, Any] = {"handler": "main:handler", **spec}
        if files is not None or folder is not None:
            folder = folder or self.folder(name, files or {})
            body["code_zip"] = base64.b64encode(zip_folder(folder)).decode()
        resp = self.http.put(f"/v1/functions/{name}", json=body)
        if expect is None:
            assert resp.status_code in (200, 201), resp.text
        else:
            assert resp.status_code == expect, resp.text
        return resp

    def deploy_body(self, files: dict[str, str], **spec: Any) -> dict[str, Any]:
        """The body of a deploy of ``files`` (a folder made for it)."""
        folder = self.folder(f"body-{len(list(self.functions_root.glob('body-*')))}", files)
        return {"handler": "main:handler", **spec,
                "code_zip": base64.b64encode(zip_folder(folder)).decode()}

    def invoke(self, name: str, event: Any = None, **params: Any) -> httpx.Response:
        return self.http.post(f"/v1/functions/{name}/invoke", json=event, params=params)

    def instances(self, name: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/v1/functions/{name}/instances")
        assert resp.status_code == 200, resp.text
        return list(resp.json()["instances"])

    def pid_of(self, name: str, instance: str) -> int:
        """The host's pid of a live instance, by its id (``context.instance_id``: inside,
        an instance is pid 1 of its own pid namespace)."""
        found = [i["pid"] for i in self.instances(name) if i["id"] == instance]
        assert found, f"no live instance {instance} of {name}"
        return int(found[0])

    def wait_for(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
        """Poll the server until ``predicate()`` is truthy (a bounded wait on server state)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def node(self) -> dict[str, Any]:
        return dict(self.http.get("/v1/node").json())

    def feature(self, name: str) -> bool:
        return any(f["feature"] == name and f["active"] for f in self.node()["sandbox"])


# FAASBOX_TEST_STORE=postgres runs the servers of `server` and `make_server` on PostgreSQL
# (a database of their own each): the whole suite on the other backend, by hand
TEST_STORE_ENV = "FAASBOX_TEST_STORE"


def _store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if os.environ.get(TEST_STORE_ENV, "sqlite") != "postgres":
        return {}
    cluster = request.getfixturevalue("pg_cluster")
    global _pg_databases
    _pg_databases += 1
    url = cluster.clone(PG_TEMPLATE, f"s{_pg_databases}_{os.getpid()}")
    return {"FAASBOX_STORE_URL": url}


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One server shared by a test module; tests use their own function names."""
    root = open_tempdir()
    srv = Server(root / "data", {"FAASBOX_ACQUIRE_TIMEOUT_S": "3",
                                 **_store_env(request)}).start()
    yield srv
    srv.stop()
    clear_cgroups(srv.data)
    remove_tree(root)


@pytest.fixture
def make_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start servers with their own settings: ``make_server(env={...})``."""
    root = open_tempdir()
    started: list[Server] = []

    stores: dict[Path, dict[str, str]] = {}  # a restarted server finds its store again

    def make(env: dict[str, str] | None = None, data: Path | None = None) -> Server:
        data = data or root / f"data{len(started)}"
        if data not in stores:
            stores[data] = _store_env(request)
        srv = Server(data, {**stores[data], **(env or {})}).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
    for data in {srv.data for srv in started}:
        clear_cgroups(data)
    remove_tree(root)


# -- PostgreSQL -----------------------------------------------------------------------------
# A throwaway PostgreSQL cluster per test process (tests/pg.py): each xdist worker starts its
# own on a free port (about a second), with one template database holding faasbox's PostgreSQL
# schema; a module that asks for pg_url gets its own copy of the template (CREATE DATABASE ...
# TEMPLATE, tens of ms), dropped after the module. Without PostgreSQL the fixtures skip, unless
# FAASBOX_REQUIRE_POSTGRES=1, where they fail.
REQUIRE_POSTGRES_ENV = "FAASBOX_REQUIRE_POSTGRES"
PG_TEMPLATE = "faasbox_template"
_pg_databases = 0


def pg_unavailable(reason: str) -> None:
    """Skip the test for ``reason``, or fail it where PostgreSQL is required."""
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_POSTGRES_ENV}=1): {reason}",
                    pytrace=False)
    pytest.skip(reason)


def pg_schema_dir() -> Path:
    """The PostgreSQL schema scripts of the faasbox that is imported (falling back to this
    checkout's, should the imported one not have them)."""
    import faasbox.store

    for path in (Path(faasbox.store.__file__).parent / "postgres" / "sql",
                 Path(__file__).resolve().parents[1] / "src/faasbox/store/postgres/sql"):
        if path.is_dir():
            return path
    raise FileNotFoundError("no src/faasbox/store/postgres/sql")


def pg_schema_sql() -> str:
    """Every PostgreSQL schema script (NNNN_*.sql), in order, as one text."""
    scripts = sorted(pg_schema_dir().glob("[0-9]*.sql"), key=lambda p: int(p.name.split("_")[0]))
    return "\n".join(p.read_text() for p in scripts)


def migrate_pg(url: str) -> None:
    """Bring the database at ``url`` to faasbox's schema, as a server does at start."""
    from faasbox.store.postgres.engine import PostgresDatabase

    db = PostgresDatabase(url)
    conn = db.connect()
    try:
        db.migrate(conn)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """This process's PostgreSQL cluster (a tests.pg.PgCluster, started), holding the template
    database PG_TEMPLATE. Stopped and its dir removed at the end of the session."""
    from tests.pg import PgCluster

    reason = PgCluster.available()
    if reason is not None:
        pg_unavailable(reason)
    # its dir is under the session root (so a leak fails the session) but not in _tempdirs:
    # the module and test cleanups must not remove it
    cluster = PgCluster(_tmp_root()).start()
    try:
        cluster.create_template(PG_TEMPLATE, "")
        migrate_pg(cluster.url(PG_TEMPLATE))  # the server's own migrations
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pg_url(pg_cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a database of this module's own, a fresh copy of the faasbox schema
    (postgresql://postgres@127.0.0.1:PORT/NAME); dropped after the module, connections that
    are still open then are cut."""
    global _pg_databases
    _pg_databases += 1
    base = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    name = f"m{_pg_databases}_{os.getpid()}_{base}"[:63]
    url = pg_cluster.clone(PG_TEMPLATE, name)
    yield url
    pg_cluster.drop(name)
