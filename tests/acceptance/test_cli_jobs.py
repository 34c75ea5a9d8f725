"""The real ``faasbox`` job, trace and trigger commands against a real server.

No sleeps: a test waits on the CLI finishing (``job run`` long-polls) or on server state.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_cli import FAASBOX, run
from tests.conftest import Server

SHARD = {"main.py": """
    import time
    def handler(event, context):
        event, shard = event or {}, context.shard or {}  # cron fires run it outside a job
        time.sleep(event.get("sleep", 0))
        if "fail_at" in event and event["fail_at"] == shard.get("index"):
            raise ValueError("bad shard " + str(shard["index"]))
        return {"shard": context.shard, "params": event}
"""}
SUM = {"main.py": """
    def handler(event, context):
        return sum(r["shard"]["index"] for r in event["results"])
"""}


@pytest.fixture(scope="module")
def functions(server: Server) -> Server:
    server.deploy("cj-shard", SHARD, max_instances=4, timeout_s=300)  # shards sleep 60 s
    server.deploy("cj-sum", SUM)
    return server


def job(server: Server, job_id: str) -> dict[str, Any]:
    return dict(server.http.get(f"/v1/jobs/{job_id}", params={"results": "false"}).json())


def test_job_run_shows_progress_and_a_summary(functions: Server) -> None:
    done = run(functions, "job", "run", "cj-shard", "--shards", "20", "--param", "n=3",
               "--param", "who=ada", "--reduce", "cj-sum")
    assert "20/20" in done.stderr  # the progress bar
    lines = done.stdout.splitlines()
    assert lines[0].startswith("job ") and "cj-shard" in lines[0] and "succeeded in" in lines[0]
    assert "20 succeeded, 0 failed (of 20)" in done.stdout
    assert "result       190" in done.stdout  # 0 + 1 + ... + 19, from the reduce
    job_id = lines[0].split()[1]
    assert f"trace        {job(functions, job_id)['trace_id']}" in done.stdout


def test_job_run_json_then_status_jobs_and_trace(functions: Server) -> None:
    view = json.loads(run(functions, "job", "run", "cj-shard", "--shards", "20", "-p", "n=3",
                          "-p", "who=ada", "-p", 'tags=["x"]', "--max-parallel", "5",
                          "--json").stdout)
    assert view["status"] == "succeeded" and view["max_parallel"] == 5
    params = {"n": 3, "who": "ada", "tags": ["x"]}
    assert view["results"] == [{"shard": {"index": i, "count": 20}, "params": params}
                               for i in range(20)]
    job_id, trace_id = view["job_id"], view["trace_id"]

    status = run(functions, "job", job_id, "--shards").stdout
    assert job_id in status and "succeeded" in status and "20/20" in status
    assert status.count("cj-shard") == 1 and all(f" {i} " in status for i in (0, 19))
    shown = json.loads(run(functions, "job", "status", job_id, "--results", "--json").stdout)
    assert shown["results"] == view["results"] and shown["progress"]["succeeded"] == 20

    listed = json.loads(run(functions, "jobs", "--function", "cj-shard", "--json").stdout)
    assert listed["jobs"][0]["job_id"] == job_id  # newest first
    table = run(functions, "jobs", "-f", "cj-shard", "-s", "succeeded").stdout
    assert job_id in table and "20/20" in table

    traced = json.loads(run(functions, "trace", trace_id, "--json").stdout)
    assert traced["jobs"] == [job_id] and len(traced["invocations"]) == 20
    human = run(functions, "trace", trace_id).stdout
    assert "shard 0/20" in human and "shard 19/20" in human and f"job  {job_id}" in human


def test_job_run_from_a_file(functions: Server, tmp_path: Path) -> None:
    shards = tmp_path / "shards.jsonl"
    shards.write_text('{"a": 1}\n\n{"b": 2}\n{"c": 3}\n')
    view = json.loads(run(functions, "job", "run", "cj-shard", "--file", str(shards),
                          "--json").stdout)
    assert [r["params"] for r in view["results"]] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert view["results"][2]["shard"] == {"index": 2, "count": 3}


def test_a_failing_job_exits_1_with_the_shard_error(functions: Server) -> None:
    failed = run(functions, "job", "run", "cj-shard", "--shards", "6", "--param", "fail_at=3",
                 "--retries", "0", "--on-failure", "continue", ok=False)
    assert failed.returncode == 1
    assert "failed" in failed.stderr and "shard_failed" in failed.stderr
    assert "shard 3: function_error: bad shard 3" in failed.stderr
    assert "5 succeeded, 1 failed (of 6)" in failed.stdout


def test_job_no_wait_and_cancel(functions: Server) -> None:
    started = json.loads(run(functions, "job", "run", "cj-shard", "--shards", "3",
                             "--param", "sleep=60", "--max-parallel", "1", "--no-wait",
                             "--json").stdout)
    assert started["shard_count"] == 3 and started["created"]
    job_id = started["job_id"]
    functions.wait_for(lambda: job(functions, job_id)["progress"]["running"] == 1,
                       timeout=30, what="the first shard to run")
    cancelled = run(functions, "job", "cancel", job_id).stdout
    assert cancelled.strip() == f"job {job_id} cancelled", cancelled
    again = run(functions, "job", "cancel", job_id).stdout
    assert "cancelled" in again
    status = json.loads(run(functions, "job", job_id, "--json").stdout)
    assert status["status"] == "cancelled", status
    assert status["progress"]["cancelled"] == 3, status["progress"]


def test_trigger_add_list_disable_rm(functions: Server) -> None:
    added = run(functions, "trigger", "add", "cj-shard", "--cron", "* * * * * *",
                "--name", "every-second", "--data", '{"n": 1}', "--overlap", "skip")
    assert "added trigger every-second to cj-shard: * * * * * * (UTC)" in added.stdout
    assert "next fires" in added.stdout
    functions.wait_for(lambda: functions.http.get(
        "/v1/functions/cj-shard/triggers/every-second").json()["fires"] > 0, what="a fire")
    table = run(functions, "triggers").stdout
    assert "every-second" in table and "* * * * * *" in table and "skip" in table
    narrow = subprocess.run([*FAASBOX, "triggers"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "80", **functions.cli_env()})
    assert "every-second" in narrow.stdout and "…" not in narrow.stdout, narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    listed = json.loads(run(functions, "triggers", "cj-shard", "--json").stdout)["triggers"]
    [t] = [t for t in listed if t["name"] == "every-second"]
    assert t["enabled"] and t["event"] == {"n": 1} and t["fires"] >= 1
    disabled = run(functions, "trigger", "disable", "cj-shard", "every-second").stdout
    assert disabled.strip() == "trigger every-second of cj-shard disabled"
    assert not functions.http.get("/v1/triggers").json()["triggers"][0]["enabled"]
    enabled = json.loads(run(functions, "trigger", "enable", "cj-shard", "every-second",
                             "--json").stdout)
    assert enabled["enabled"] and enabled["next_fire_at"] is not None
    job_trigger = json.loads(run(functions, "trigger", "add", "cj-shard", "--cron", "@daily",
                                 "--name", "nightly", "--disabled", "--job-shards", "4",
                                 "--job-param", "n=2", "--job-reduce", "cj-sum",
                                 "--json").stdout)
    assert job_trigger["job"]["shards"] == {"count": 4, "params": {"n": 2}}
    assert job_trigger["job"]["reduce"] == "cj-sum" and not job_trigger["enabled"]
    assert "job of 4" in run(functions, "triggers", "cj-shard").stdout
    for name in ("every-second", "nightly"):
        removed = run(functions, "trigger", "rm", "cj-shard", name).stdout
        assert removed.strip() == f"deleted trigger {name} of cj-shard"
    assert "every-second" not in run(functions, "triggers").stdout
    gone = run(functions, "trigger", "rm", "cj-shard", "every-second", ok=False)
    assert "has no trigger 'every-second'" in gone.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("trigger", "add", "cj-shard", "--cron", "61 * * * *"), "not a valid expression"),
    (("trigger", "add", "cj-shard", "--cron", "@daily", "--tz", "Mars/Olympus"),
     "unknown time zone"),
    (("trigger", "add", "cj-shard", "--cron", "@daily", "--misfire", "never"), "--misfire"),
    (("trigger", "add", "cj-shard", "--cron", "@daily", "--job-param", "n=1"),
     "go with --job-shards"),
    (("trigger", "add", "cj-nobody", "--cron", "@daily"), "does not exist"),
    (("job", "run", "cj-shard", "--shards", "2", "--on-failure", "bogus"),
     "--on-failure must be one of stop, continue"),
    (("job", "run", "cj-shard"), "give either --shards N or --file"),
    (("job", "run", "cj-nobody", "--shards", "2"), "does not exist"),
    (("job", "no-such-job"), "no job 'no-such-job'"),
    (("jobs", "--status", "sleeping"), "status must be one of"),
    (("trace", "no-such-trace"), "no trace 'no-such-trace'"),
    (("triggers", "cj-nobody"), "does not exist"),
])
def test_bad_input_is_one_clean_error(functions: Server, args: tuple[str, ...],
                                      message: str) -> None:
    failed = run(functions, *args, ok=False)
    assert message in failed.stderr
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
