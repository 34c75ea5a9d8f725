"""``faasbox top`` against a real server: one frame with --once, and the same data as JSON."""

from __future__ import annotations

import json

from tests.acceptance.test_cli import run
from tests.conftest import Server

HELLO = {"main.py": """
    def handler(event, context):
        return "hi"
"""}


def test_top_once_prints_one_frame(server: Server) -> None:
    server.deploy("top-fn", HELLO, min_instances=1, max_instances=3)
    server.wait_for(lambda: any(i["state"] == "idle" for i in server.instances("top-fn")),
                    what="the min instance")
    assert server.invoke("top-fn").status_code == 200
    frame = run(server, "top", "--once").stdout
    assert "faasbox top" in frame and "keep-alive policy faasbox" in frame
    for column in ("function", "starting", "idle", "busy", "in-flight", "queue", "desired",
                   "actual", "cold/min"):
        assert column in frame
    row = next(line for line in frame.splitlines() if "top-fn" in line)
    assert "1/3" in row  # min/max
    assert "stable" in row


def test_top_json_and_unreachable_server(server: Server) -> None:
    server.deploy("top-json", HELLO)
    body = json.loads(run(server, "top", "--json").stdout)
    assert any(f["name"] == "top-json" for f in body["functions"])
    gone = run(None, "top", "--once", "--url", "http://127.0.0.1:9", ok=False)
    assert "cannot reach the faasbox server" in gone.stderr
