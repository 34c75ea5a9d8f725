"""A throwaway PostgreSQL cluster for tests: Debian's server binaries (scripts/pg-setup installs
them), ``initdb`` into a fresh temp dir, a free loopback port, trust auth, no durability.

PostgreSQL refuses to run as root: as root, initdb and the server run as the ``postgres``
system user (and the cluster's dir is chowned to it); otherwise as the current user. The
superuser role is ``postgres`` either way, so URLs are ``postgresql://postgres@127.0.0.1:PORT/DB``.

    cluster = PgCluster(parent_dir).start()
    cluster.create_template("tmpl", schema_sql)
    cluster.clone("tmpl", "db1")         # CREATE DATABASE db1 TEMPLATE tmpl: a fast copy
    url = cluster.url("db1")
    cluster.restart()                    # fast shutdown, start again: same port and data
    cluster.drop("db1")
    cluster.stop()                       # immediate shutdown; the temp dir is removed
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
RUN_AS = "postgres"  # the system user the server runs as when this process is root
START_TIMEOUT_S = 60

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}


def find_bindir() -> Path | None:
    """The bin dir of the highest PostgreSQL server version installed, or None."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(bindir)
        version = path.parent.name
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            found.append((tuple(int(p) for p in re.findall(r"\d+", version)), path))
    if found:
        return max(found)[1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        path = Path(out)
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgError(RuntimeError):
    pass


class PgCluster:
    """One throwaway cluster (see the module's doc)."""

    def __init__(self, parent: Path | str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        """``settings``: postgresql.conf values over the test ones (a bench wants fsync)."""
        self.parent = Path(parent) if parent is not None else None
        self.settings = {**SETTINGS, **(settings or {})}
        self.bindir: Path | None = None
        self.root: Path | None = None  # the temp dir: data/, sock/, log
        self.port = 0
        self.user = SUPERUSER
        self._running = False

    # -- detection ----------------------------------------------------------------------
    @staticmethod
    def available() -> str | None:
        """None when a cluster can be started here, else why not."""
        if find_bindir() is None:
            return ("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin or pg_config"
                    " --bindir); scripts/pg-setup installs them")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(RUN_AS)
            except KeyError:
                return f"running as root and there is no {RUN_AS!r} system user to run PostgreSQL"
        return None

    # -- paths --------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        assert self.root is not None
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    # -- processes ----------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        assert self.bindir is not None and self.root is not None
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env = {"HOME": entry.pw_dir}
        else:
            env = {"HOME": os.environ.get("HOME", str(self.root))}
        env.update(PATH=f"{self.bindir}:/usr/bin:/bin", LC_ALL="C", LANG="C", TZ="UTC")
        proc = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""
            raise PgError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
                          f"{proc.stderr}\n{log}")
        return str(proc.stdout)

    def start(self) -> PgCluster:
        """initdb into a fresh temp dir and start the server on a free port."""
        reason = self.available()
        if reason is not None:
            raise PgError(reason)
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir=self.parent))
        atexit.register(self.stop)  # should a session die without its teardown
        try:
            self.root.chmod(0o700)
            if os.geteuid() == 0:
                entry = pwd.getpwnam(RUN_AS)
                os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
            self._mkdir_owned(self.sockdir)
            for attempt in range(5):  # a free port may be taken before the server binds it
                self.port = free_port()
                self._configure()
                try:
                    self._pg_ctl_start()
                    break
                except PgError:
                    if attempt == 4 or "Address already in use" not in self._log_tail():
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _mkdir_owned(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _configure(self) -> None:
        settings = {**self.settings, "port": str(self.port),
                    "unix_socket_directories": f"'{self.sockdir}'"}
        # postgresql.auto.conf is read last, so its values win; rewritten on each try
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf = self.data / "postgresql.auto.conf"
        conf.write_text(text)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w",
                  "-t", str(START_TIMEOUT_S), "start")
        self._running = True

    def _pg_ctl_stop(self, mode: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self._running = False

    def restart(self) -> None:
        """Stop (fast: clients are disconnected) and start again on the same port and data."""
        self._pg_ctl_stop("fast")
        self._pg_ctl_start()

    def stop(self) -> None:
        """Stop the server (immediate) and remove the temp dir. Idempotent."""
        atexit.unregister(self.stop)
        if self.root is None:
            return
        if self._running or (self.data / "postmaster.pid").exists():
            try:
                self._pg_ctl_stop("immediate")
            except (PgError, OSError, subprocess.SubprocessError):
                self._kill_postmaster()
        _rmtree(self.root)
        self.root = None

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError, IndexError):
            pass
        self._running = False

    # -- databases ----------------------------------------------------------------------
    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    def create_template(self, name: str, schema_sql: str) -> None:
        """A database holding ``schema_sql``, marked as a template (clones copy it)."""
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with self.admin(name) as conn:
            if schema_sql.strip():
                conn.execute(schema_sql.encode())
        with self.admin() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true")
                         .format(sql.Identifier(name)))

    def clone(self, template: str, name: str) -> str:
        """``CREATE DATABASE name TEMPLATE template``; returns its URL. Nobody may be connected
        to the template meanwhile (the fixtures never connect to it)."""
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}")
                         .format(sql.Identifier(name), sql.Identifier(template)))
        return self.url(name)

    def drop(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        with self.admin() as conn:
            if self._is_template(conn, name):  # a template cannot be dropped
                conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false")
                             .format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    @staticmethod
    def _is_template(conn: psycopg.Connection[Any], name: str) -> bool:
        row = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
        return bool(row and row[0])


def _rmtree(path: Path) -> None:
    def fix(func: Any, name: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        try:
            os.chmod(os.path.dirname(name), 0o700)
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
