"""The real ``faasbox`` task commands (invoke --async, tasks, task, submit) against a real server.

No sleeps: a test waits on the CLI finishing (``--wait`` long-polls) or on server state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.acceptance.test_cli import run
from tests.conftest import Server

HANDLER = {"main.py": """
    import time
    def handler(event, context):
        if isinstance(event, dict):
            time.sleep(event.get("sleep", 0))
            if "fail" in event:
                raise ValueError("bad event " + str(event["fail"]))
        return {"echo": event, "task": context.task_id}
"""}


def deploy(server: Server, name: str, **spec: Any) -> None:
    server.deploy(name, HANDLER, **spec)
    # one attempt and no retries, so that failures end at once
    resp = server.http.put(f"/v1/functions/{name}/task-policy",
                           json={"max_attempts": 1, "retry_on": []})
    assert resp.status_code == 200, resp.text


def status(server: Server, task_id: str) -> str:
    return str(server.http.get(f"/v1/tasks/{task_id}").json()["status"])


def jsonl(path: Path, events: list[Any], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + extra)
    return path


def test_invoke_async_then_task_shows_the_result(server: Server) -> None:
    deploy(server, "ct-async")
    accepted = json.loads(run(server, "invoke", "ct-async", "--async", "-d", '{"n": 1}').stdout)
    assert set(accepted) == {"task_id", "status"} and accepted["status"] == "queued"
    task_id = accepted["task_id"]
    shown = json.loads(run(server, "task", task_id, "--wait", "30", "--json").stdout)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    assert shown["result"] == {"echo": {"n": 1}, "task": task_id}
    human = run(server, "task", "show", task_id).stdout
    assert task_id in human and "succeeded" in human and shown["invocation_ids"][0] in human
    assert '{"echo":{"n":1}' in human


def test_invoke_async_wait_prints_the_result_or_the_error(server: Server) -> None:
    deploy(server, "ct-wait")
    done = run(server, "invoke", "ct-wait", "--async", "--wait", "-d", '{"n": 2}')
    result = json.loads(done.stdout)
    assert result["echo"] == {"n": 2} and len(result["task"]) == 32
    failed = run(server, "invoke", "ct-wait", "--async", "--wait", "-d", '{"fail": 7}', ok=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "failed: function_error: " in failed.stderr and "bad event 7" in failed.stderr
    misuse = run(server, "invoke", "ct-wait", "--wait", ok=False)
    assert "--async" in misuse.stderr


def test_idempotency_key_gives_the_same_task(server: Server) -> None:
    deploy(server, "ct-idem")
    args = ("invoke", "ct-idem", "--async", "-d", '{"n": 3}')
    first = json.loads(run(server, *args, "--idempotency-key", "order-17").stdout)
    second = run(server, *args, "--idempotency-key", "order-17")
    assert json.loads(second.stdout)["task_id"] == first["task_id"]
    assert "order-17" in second.stderr and "used before" in second.stderr
    other = json.loads(run(server, *args, "--idempotency-key", "order-18").stdout)
    assert other["task_id"] != first["task_id"]
    listed = server.http.get("/v1/tasks", params={"function": "ct-idem"}).json()["tasks"]
    assert len(listed) == 2


def test_tasks_lists_with_filters(server: Server) -> None:
    deploy(server, "ct-list")
    ok = json.loads(run(server, "invoke", "ct-list", "--async", "--wait", "-d", "1").stdout)
    run(server, "invoke", "ct-list", "--async", "--wait", "-d", '{"fail": 1}', ok=False)
    everything = json.loads(run(server, "tasks", "--function", "ct-list", "--json").stdout)
    assert [t["status"] for t in everything["tasks"]] == ["failed", "succeeded"]  # newest first
    assert everything["tasks"][1]["result"] == ok
    failed = json.loads(run(server, "tasks", "-f", "ct-list", "-s", "failed", "--json").stdout)
    [only] = failed["tasks"]
    assert only["error"]["code"] == "function_error"
    one = json.loads(run(server, "tasks", "--function", "ct-list", "--limit", "1",
                         "--json").stdout)
    assert len(one["tasks"]) == 1 and one["next_cursor"] == one["tasks"][0]["task_id"]
    table = run(server, "tasks", "--function", "ct-list").stdout
    assert only["task_id"] in table and "bad event 1" in table and "succeeded" in table
    bad = run(server, "tasks", "--status", "sleeping", ok=False)
    assert "status must be one of" in bad.stderr


def test_task_cancel_queued_and_running(server: Server) -> None:
    deploy(server, "ct-cancel", max_instances=1, timeout_s=120)
    running = json.loads(run(server, "invoke", "ct-cancel", "--async",
                             "-d", '{"sleep": 100}').stdout)["task_id"]
    server.wait_for(lambda: status(server, running) == "running", what="the task to run")
    # the only instance is busy: this one stays queued behind it
    queued = json.loads(run(server, "invoke", "ct-cancel", "--async", "-d", "{}").stdout)
    assert queued["status"] == "queued"
    out = run(server, "task", "cancel", queued["task_id"]).stdout
    assert out.strip() == f"task {queued['task_id']} cancelled"
    shown = json.loads(run(server, "task", queued["task_id"], "--json").stdout)
    assert shown["status"] == "cancelled" and shown["attempts"] == 0
    stopped = json.loads(run(server, "task", "cancel", running, "--json").stdout)
    assert stopped["status"] == "cancelled" and stopped["attempts"] == 1
    again = run(server, "task", "cancel", running).stdout
    assert "cancelled" in again
    missing = run(server, "task", "cancel", "no-such-task", ok=False)
    assert "no task 'no-such-task'" in missing.stderr
    assert "no task" in run(server, "task", "no-such-task", ok=False).stderr


def test_submit_file_waits_for_every_task(server: Server, tmp_path: Path) -> None:
    deploy(server, "ct-submit")
    events = jsonl(tmp_path / "events.jsonl", [{"i": i} for i in range(50)], extra="\n\n")
    summary = json.loads(run(server, "submit", "ct-submit", "--file", str(events),
                             "--idempotency-key", "run-1", "--json").stdout)
    assert summary["tasks"] == 50 and summary["created"] == 50
    assert summary["counts"] == {"succeeded": 50} and summary["failures"] == []
    assert summary["wall_s"] > 0 and summary["tasks_per_s"] > 0
    listed = server.http.get("/v1/tasks", params={"function": "ct-submit",
                                                  "limit": 1000}).json()["tasks"]
    assert sorted(t["result"]["echo"]["i"] for t in listed) == list(range(50))
    assert {t["idempotency_key"] for t in listed} == {f"run-1:0:{i}" for i in range(50)}
    # the same file and key again: nothing new
    again = run(server, "submit", "ct-submit", "--file", str(events),
                "--idempotency-key", "run-1")
    assert "50 tasks of ct-submit: 50 succeeded" in again.stdout
    assert "50 were already submitted" in again.stdout
    assert len(server.http.get("/v1/tasks", params={"function": "ct-submit",
                                                    "limit": 1000}).json()["tasks"]) == 50


def test_submit_sends_batches_of_1000(server: Server, tmp_path: Path) -> None:
    deploy(server, "ct-batches", max_instances=4)
    events = jsonl(tmp_path / "events.jsonl", [{"i": i} for i in range(1005)])
    summary = json.loads(run(server, "submit", "ct-batches", "--file", str(events),
                             "--idempotency-key", "big", "--json").stdout)
    assert summary["counts"] == {"succeeded": 1005} and summary["created"] == 1005
    first = server.http.get("/v1/tasks", params={"function": "ct-batches",
                                                 "limit": 1000}).json()
    rest = server.http.get("/v1/tasks", params={"function": "ct-batches", "limit": 1000,
                                                "cursor": first["next_cursor"]}).json()
    keys = {t["idempotency_key"]: t for t in first["tasks"] + rest["tasks"]}
    expected = {f"big:0:{i}" for i in range(1000)} | {f"big:1:{i}" for i in range(5)}
    assert set(keys) == expected
    assert keys["big:1:4"]["result"]["echo"] == {"i": 1004}


def test_submit_no_wait_prints_the_task_ids(server: Server, tmp_path: Path) -> None:
    deploy(server, "ct-nowait")
    events = jsonl(tmp_path / "events.jsonl", [{"i": i} for i in range(3)])
    body = json.loads(run(server, "submit", "ct-nowait", "--file", str(events), "--no-wait",
                          "--json").stdout)
    assert body["tasks"] == 3 and body["created"] == 3 and len(set(body["task_ids"])) == 3
    last = json.loads(run(server, "task", body["task_ids"][-1], "--wait", "30",
                          "--json").stdout)
    assert last["result"]["echo"] == {"i": 2}


def test_submit_malformed_line_submits_nothing(server: Server, tmp_path: Path) -> None:
    deploy(server, "ct-malformed")
    events = tmp_path / "events.jsonl"
    events.write_text('{"i": 0}\n\n{"i": 1}\n{"i": \n{"i": 3}\n')
    failed = run(server, "submit", "ct-malformed", "--file", str(events), ok=False)
    assert failed.returncode == 1
    assert "line 4 is not valid JSON" in failed.stderr and "nothing was submitted" in failed.stderr
    listed = server.http.get("/v1/tasks", params={"function": "ct-malformed"}).json()
    assert listed["tasks"] == []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "holds no events" in run(server, "submit", "ct-malformed", "--file", str(empty),
                                    ok=False).stderr
    missing = run(server, "submit", "ct-malformed", "--file", str(tmp_path / "nope"), ok=False)
    assert "error: No such file" in missing.stderr


def test_submit_with_failures_exits_1_and_shows_them(server: Server, tmp_path: Path) -> None:
    deploy(server, "ct-failing")
    events = jsonl(tmp_path / "events.jsonl",
                   [{"fail": i} if i % 4 == 0 else {"i": i} for i in range(20)])
    failed = run(server, "submit", "ct-failing", "--file", str(events), "--json", ok=False)
    assert failed.returncode == 1 and "5 of 20 tasks did not succeed" in failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["counts"] == {"succeeded": 15, "failed": 5}
    assert len(summary["failures"]) == 5
    assert {f["error"]["code"] for f in summary["failures"]} == {"function_error"}
    assert sorted(f["error"]["message"] for f in summary["failures"]) == sorted(
        f"bad event {i}" for i in range(0, 20, 4))
    human = run(server, "submit", "ct-failing", "--file", str(events), ok=False).stdout
    assert "15 succeeded" in human and "5 failed" in human and "bad event 8" in human


def test_submit_to_an_unknown_function_is_an_error(server: Server, tmp_path: Path) -> None:
    events = jsonl(tmp_path / "events.jsonl", [{"i": 1}])
    failed = run(server, "submit", "ct-nobody", "--file", str(events), ok=False)
    assert "does not exist" in failed.stderr
