"""The PostgreSQL test cluster: a module's database, and a cluster restarted mid-run."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.conftest import PG_TEMPLATE, _tmp_root, pg_schema_sql, pg_unavailable
from tests.pg import PgCluster


def test_a_module_gets_a_database_of_its_own_with_the_schema(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        name, user = conn.execute("SELECT current_database(), current_user").fetchone()
        assert url_db(pg_url) == name and user == "postgres"
        assert name != PG_TEMPLATE
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"functions", "tasks", "servers", "code_blobs"} <= tables
        conn.execute("INSERT INTO servers (id, started_at, heartbeat_at) VALUES ('s1', 1, 1)")
        assert conn.execute("SELECT id FROM servers").fetchall() == [("s1",)]


def test_a_restarted_cluster_keeps_its_port_and_data() -> None:
    # a cluster of its own: restarting the shared one would cut the other modules' connections
    reason = PgCluster.available()
    if reason is not None:
        pg_unavailable(reason)
    cluster = PgCluster(_tmp_root()).start()
    root = cluster.root
    try:
        cluster.create_template("tmpl", pg_schema_sql())
        url = cluster.clone("tmpl", "db")
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("INSERT INTO code_blobs VALUES ('abc', %s, 1)", (b"zip",))
        # a clone is a copy: the template and other clones do not see its rows
        other = cluster.clone("tmpl", "other")
        with psycopg.connect(other) as conn2:
            assert conn2.execute("SELECT count(*) FROM code_blobs").fetchone() == (0,)
        port = cluster.port
        cluster.restart()
        with pytest.raises(psycopg.OperationalError):  # the old connection was cut
            conn.execute("SELECT 1")
        conn.close()
        assert cluster.port == port and cluster.url("db") == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT data FROM code_blobs").fetchall() == [(b"zip",)]
        cluster.drop("db")
        with psycopg.connect(cluster.url()) as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'db'").fetchall() == []
    finally:
        cluster.stop()
    assert root is not None and not root.exists()
    assert not os.path.exists(root)


def url_db(url: str) -> str:
    return url.rsplit("/", 1)[-1]
