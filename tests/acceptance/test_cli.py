"""The real ``faasbox`` command, run as a subprocess against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import Server, free_port, open_tempdir, write_function

FAASBOX = [sys.executable, "-m", "faasbox"]


def run(server: Server | None, *args: str, input: str | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if server is not None:
        env.update(server.cli_env())
    proc = subprocess.run([*FAASBOX, *args], capture_output=True, text=True, env=env,
                          input=input, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, proc.stdout
    return proc


def test_deploy_invoke_ls_describe_logs_rm(server: Server, tmp_path: Path) -> None:
    folder = write_function(tmp_path / "greeter", {"main.py": """
        def handler(event, context):
            print("greeting", event["name"])
            return {"greeting": "hello " + event["name"]}
    """})
    out = run(server, "deploy", str(folder), "--memory", "256", "--env", "A=1").stdout
    assert "deployed greeter version 1" in out
    result = run(server, "invoke", "greeter", "--data", '{"name": "ada"}').stdout
    assert json.loads(result) == {"greeting": "hello ada"}
    event = tmp_path / "event.json"
    event.write_text('{"name": "bob"}')
    verbose = run(server, "invoke", "greeter", "--file", str(event), "-v")
    assert json.loads(verbose.stdout) == {"greeting": "hello bob"}
    assert "cold-start: false" in verbose.stderr and "trace-id: " in verbose.stderr
    listed = json.loads(run(server, "ls", "--json").stdout)
    fn = next(f for f in listed["functions"] if f["name"] == "greeter")
    assert fn["spec"]["memory_mb"] == 256 and fn["spec"]["env"] == {"A": "1"}
    assert "greeter" in run(server, "ls").stdout
    described = json.loads(run(server, "describe", "greeter", "--json").stdout)
    assert described["latest_version"] == 1 and len(described["instances"]) == 1
    assert [v["version"] for v in described["versions"]] == [1]
    logs = run(server, "logs", "greeter").stdout
    assert "greeting ada" in logs and "greeting bob" in logs
    assert "deleted greeter" in run(server, "rm", "greeter").stdout
    gone = run(server, "invoke", "greeter", "--data", "{}", ok=False)
    assert "does not exist" in gone.stderr


def test_deploy_stack_file(server: Server, tmp_path: Path) -> None:
    write_function(tmp_path / "a", {"main.py": "def handler(e, c):\n    return 'a'\n"})
    write_function(tmp_path / "b", {"app.py": "def run(e, c):\n    return 'b'\n"})
    stack = tmp_path / "faasbox.yaml"
    stack.write_text("functions:\n  stack-a:\n    path: a\n    handler: main:handler\n"
                     "  stack-b:\n    path: b\n    handler: app:run\n    timeout: 5\n")
    out = json.loads(run(server, "deploy", "-f", str(stack), "--json").stdout)
    assert {f["name"] for f in out["functions"]} == {"stack-a", "stack-b"}
    assert json.loads(run(server, "invoke", "stack-b").stdout) == "b"


def test_errors_are_messages_not_tracebacks(server: Server, tmp_path: Path) -> None:
    broken = write_function(tmp_path / "broken", {"main.py": "import nope_nope\n"})
    failed = run(server, "deploy", str(broken), ok=False)
    assert "error:" in failed.stderr and "nope_nope" in failed.stderr
    bad_json = run(server, "invoke", "x", "--data", "{", ok=False)
    assert "does not exist" in bad_json.stderr or "JSON" in bad_json.stderr
    missing = run(server, "deploy", str(tmp_path / "missing"), ok=False)
    assert "not a folder" in missing.stderr
    bad_env = run(server, "deploy", str(broken), "--env", "NOEQUALS", ok=False)
    assert "KEY=VALUE" in bad_env.stderr
    nofile = run(server, "deploy", "-f", str(tmp_path / "nope.yaml"), ok=False)
    assert "cannot read" in nofile.stderr


def test_redeploy_changes_only_the_options_given(server: Server, tmp_path: Path) -> None:
    folder = write_function(tmp_path / "keeper", {"main.py": """
        import os
        def handler(event, context):
            return os.environ.get("MODE")
    """})

    def spec() -> dict[str, object]:
        listed = json.loads(run(server, "ls", "--json").stdout)["functions"]
        return dict(next(f["spec"] for f in listed if f["name"] == "keeper"))

    first = run(server, "deploy", str(folder), "--env", "MODE=prod", "--timeout", "10",
                "--max", "3").stdout
    assert "deployed keeper version 1" in first
    second = run(server, "deploy", str(folder), "--memory", "256").stdout
    assert "deployed keeper version 2" in second
    kept = spec()
    assert kept["memory_mb"] == 256 and kept["env"] == {"MODE": "prod"}
    assert kept["timeout_s"] == 10 and kept["max_instances"] == 3
    assert json.loads(run(server, "invoke", "keeper").stdout) == "prod"
    same = run(server, "deploy", str(folder), "--memory", "256").stdout
    assert same.strip() == "keeper unchanged (v2)", same
    as_json = json.loads(run(server, "deploy", str(folder), "--json").stdout)
    assert as_json["functions"][0]["unchanged"] is True
    reset = run(server, "deploy", str(folder), "--reset", "--memory", "256").stdout
    assert "deployed keeper version 3" in reset
    fresh = spec()
    assert fresh["memory_mb"] == 256 and fresh["env"] == {}
    assert fresh["timeout_s"] == 30 and fresh["max_instances"] == 10


def test_a_failed_load_is_said_once(server: Server, tmp_path: Path) -> None:
    broken = write_function(tmp_path / "once", {"main.py": "import nope_nope_once\n"})
    failed = run(server, "deploy", str(broken), ok=False)
    assert "nope_nope_once" in failed.stderr
    assert failed.stderr.count("load") == 1, failed.stderr
    assert failed.stderr.count("\n") == 1, failed.stderr  # one line


def test_unreachable_server_is_a_clear_message() -> None:
    env_url = "http://127.0.0.1:9"  # discard port: nothing listens
    proc = subprocess.run([*FAASBOX, "ls", "--url", env_url], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "cannot reach the faasbox server" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_reports_features(tmp_path: Path) -> None:
    out = json.loads(run(None, "doctor", "--json", "--data", str(tmp_path / "d")).stdout)
    features = {f["feature"]: f for f in out["sandbox"]}
    assert {"memory limit", "cpu weight", "pids limit", "unprivileged uid",
            "private scratch dir"} <= set(features)
    off = json.loads(run(None, "doctor", "--json", "--data", str(tmp_path / "d"),
                         "--sandbox", "off").stdout)
    assert not any(f["active"] for f in off["sandbox"] if f["feature"] == "memory limit")
    table = run(None, "doctor", "--data", str(tmp_path / "d")).stdout
    assert "memory limit" in table


def test_server_deploys_a_stack_at_start(make_server: object, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    stack = repo / "examples" / "faasbox.yaml"
    text = stack.read_text()
    assert "hello" in text
    # the examples that need no network: hello and primes
    local = tmp_path / "stack.yaml"
    local.write_text(
        f"functions:\n  hello:\n    path: {repo / 'examples/hello'}\n    handler: main:handler\n"
        f"  primes:\n    path: {repo / 'examples/primes'}\n    handler: main:handler\n")
    srv = make_server(env={"FAASBOX_DEPLOY": str(local)})  # type: ignore[operator]
    assert srv.invoke("hello", {"name": "ada"}).json()["hello"] == "ada"
    assert srv.invoke("primes", {"n": 100}).json() == {"n": 100, "primes": 25}


def test_simulate_replays_a_trace(tmp_path: Path) -> None:
    # without --trace: the dev sample shipped in the package
    out = json.loads(run(None, "simulate", "--policy", "fixed", "--limit", "3").stdout)
    assert out["policy"] == "fixed" and out["functions"] == 3
    assert 0 <= out["cold_start_pct"]["mean"] <= 100
    assert out["invocations"] >= out["cold_starts"] > 0
    assert Path(out["trace"]).parts[-4:] == ("data", "traces", "azure2019", "dev")
    same = json.loads(run(None, "simulate", "--trace", out["trace"], "--policy", "fixed",
                          "--limit", "3").stdout)
    assert same["cold_starts"] == out["cold_starts"]
    bad = run(None, "simulate", "--policy", "nope", ok=False)
    assert "unknown policy" in bad.stderr
    empty = run(None, "simulate", "--trace", str(tmp_path), ok=False)
    assert "not a trace folder" in empty.stderr


def test_server_with_a_relative_data_dir() -> None:
    # instances start in their own scratch dir: a relative --data must still find the code
    root = open_tempdir()
    repo = Path(__file__).resolve().parents[2]
    (root / "stack.yaml").write_text(
        f"functions:\n  hello:\n    path: {repo / 'examples/hello'}\n    handler: main:handler\n")
    port = free_port()
    with (root / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [*FAASBOX, "server", "--port", str(port), "--data", "rel-data", "--deploy",
             "stack.yaml", "--log-level", "warning"], cwd=root, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (root / "server.log").read_text()
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            key = (root / "rel-data" / "admin.key").read_text().strip()
            resp = http.post("/v1/functions/hello/invoke", json={"name": "rel"},
                             headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200 and resp.json()["hello"] == "rel"
        assert (root / "rel-data" / "faasbox.db").exists()
    finally:
        proc.terminate()
        proc.wait(20)
