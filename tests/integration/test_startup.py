"""A second server on a data dir in use, or on another server's own store, stops before it
touches anything."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.conftest import Server, free_port, open_tempdir

PID = {"main.py": """
    import os
    def handler(event, context):
        open(os.path.join(os.environ["TMPDIR"], "mark"), "w").write("x")
        return context.instance_id
"""}


def test_a_second_server_on_the_same_data_dir_exits_with_no_side_effect(
        make_server: Any) -> None:
    first: Server = make_server()
    first.deploy("st-pid", PID)
    pid = first.invoke("st-pid").json()
    [inst] = first.instances("st-pid")
    second = subprocess.run(
        [sys.executable, "-m", "faasbox", "server", "--port", str(free_port()),
         "--data", str(first.data), "--log-level", "warning"],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: another faasbox server is using {first.data.resolve()}"], lines
    # the first server's warm instance, and its scratch, are untouched
    assert first.invoke("st-pid").json() == pid
    [again] = first.instances("st-pid")
    assert again["id"] == inst["id"] and again["calls_served"] == 2


def test_a_server_that_would_share_another_servers_own_store_exits(make_server: Any) -> None:
    first: Server = make_server()
    first.deploy("st-pid", PID)
    db = (first.data / "faasbox.db").resolve()
    second = subprocess.run(
        [sys.executable, "-m", "faasbox", "server", "--port", str(free_port()),
         "--data", str(open_tempdir() / "data"), "--log-level", "warning",
         "--store-url", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: another faasbox server has it alone (it is that server's default"
                     f" store): {db}"], lines
    assert first.invoke("st-pid").status_code == 200
