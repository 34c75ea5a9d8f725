"""The ``faasbox`` command in an 80-column terminal: names are never cut, no line is wider than
the terminal, help and values read as text, and the version, job start and fire zones show."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

import faasbox
from tests.acceptance.test_cli import FAASBOX
from tests.conftest import Server

SHARD = {"main.py": """
    def handler(event, context):
        return {"shard": context.shard["index"]}
"""}
TOTAL = {"main.py": """
    def handler(event, context):
        return sum(r["shard"] for r in event["results"])
"""}
NAMES = ("fund-earnings", "fund-earnings-total")


def narrow(server: Server | None, *args: str, ok: bool = True) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    if server is not None:
        env.update(server.cli_env())
    proc = subprocess.run([*FAASBOX, *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc.stdout


def assert_fits(text: str, *names: str) -> None:
    """Every name appears whole (not cut, not folded) and no line is wider than 80."""
    assert text.strip(), "no output"
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text
    for name in names:
        # a whole word: "fund-earnings" must show up somewhere not followed by "-total"
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (name, text)


@pytest.fixture(scope="module")
def job(server: Server) -> dict[str, Any]:
    server.deploy("fund-earnings", SHARD, max_instances=4)
    server.deploy("fund-earnings-total", TOTAL)
    view: dict[str, Any] = json.loads(narrow(server, "job", "run", "fund-earnings", "--shards",
                                             "4", "--reduce", "fund-earnings-total", "--json"))
    assert view["status"] == "succeeded", view
    return view


def test_lists_show_whole_names_in_80_columns(server: Server, job: dict[str, Any]) -> None:
    assert_fits(narrow(server, "ls"), *NAMES)
    assert_fits(narrow(server, "tasks"), *NAMES)
    assert_fits(narrow(server, "jobs"), "fund-earnings", job["job_id"])
    assert_fits(narrow(server, "trace", job["trace_id"]), *NAMES)
    assert_fits(narrow(server, "top", "--once"), *NAMES)
    assert_fits(narrow(server, "job", job["job_id"], "--shards"), "fund-earnings")
    assert_fits(narrow(server, "describe", "fund-earnings-total"), "fund-earnings-total")


def test_job_shows_when_it_started(server: Server, job: dict[str, Any]) -> None:
    shown = narrow(server, "job", job["job_id"])
    [started] = [line for line in shown.splitlines() if line.strip().startswith("started")]
    assert re.search(r"\d\d:\d\d:\d\d", started), shown
    view = server.http.get(f"/v1/jobs/{job['job_id']}", params={"results": "false"}).json()
    assert view["created_at"] <= view["started_at"] <= view["finished_at"]
    [listed] = [j for j in server.http.get("/v1/jobs").json()["jobs"]
                if j["job_id"] == job["job_id"]]
    assert listed["started_at"] == view["started_at"]


def test_cron_fire_times_show_their_zone(server: Server, job: dict[str, Any]) -> None:
    added = narrow(server, "trigger", "add", "fund-earnings", "--cron", "0 2 * * *",
                   "--tz", "Asia/Tokyo", "--name", "nightly")
    [fires] = [line for line in added.splitlines() if "next fires" in line]
    assert fires.count("02:00 JST") == 3, added
    narrow(server, "trigger", "disable", "fund-earnings", "nightly")
    assert "02:00 JST (in " in narrow(server, "trigger", "enable", "fund-earnings", "nightly")
    table = narrow(server, "triggers")
    assert_fits(table, "fund-earnings", "nightly")
    assert "02:00 JST" in table
    narrow(server, "trigger", "rm", "fund-earnings", "nightly")


def test_describe_prints_values(server: Server, job: dict[str, Any]) -> None:
    server.deploy("described", SHARD, env={"A": "1", "B": "two"}, timeout_s=12)
    text = narrow(server, "describe", "described")
    for repr_text in ("[]", "None", "{'", "{}"):
        assert repr_text not in text, text
    assert "A=1, B=two" in text and "12 s" in text


def test_version_and_help_without_python_types() -> None:
    assert narrow(None, "--version").strip() == f"faasbox {faasbox.__version__}"
    for command in ([], ["deploy"], ["invoke"], ["tasks"], ["job", "run"], ["trigger", "add"],
                    ["top"], ["server"]):
        text = narrow(None, *command, "--help")
        assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", text), text
        assert max(len(line) for line in text.splitlines()) <= 80
    assert "--version" in narrow(None, "--help")
