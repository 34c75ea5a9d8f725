"""Schemathesis against the live server's OpenAPI spec: no server error, and every answer as
the spec says (status, content type, body). Bounded: a fixed seed, a time budget and a few
cases an operation, on a server of its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, open_tempdir

ECHO = {"main.py": "def handler(event, context):\n    return event\n"}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


@pytest.mark.timeout(300)
def test_the_api_holds_to_its_spec() -> None:
    st = Path(sys.executable).with_name("st")
    assert st.exists() or shutil.which("st"), "schemathesis is a dev dependency"
    srv = Server(open_tempdir() / "data", {"FAASBOX_ACQUIRE_TIMEOUT_S": "2"}).start()
    try:
        srv.deploy("hello", ECHO)
        run = subprocess.run(
            [str(st), "run", f"{srv.url}/openapi.json", "--checks", CHECKS,
             "--header", f"Authorization: Bearer {srv.admin_key}",
             "--max-examples", "20", "--seed", "20261202", "--max-time", "75",
             "--workers", "1", "--request-timeout", "30", "--no-shrink",
             "--suppress-health-check", "all", "--warnings", "off"],
            capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    finally:
        srv.stop()
