"""A store that cannot write answers 503 store_unavailable, reports no call as succeeded
without its record, and recovers when there is room again."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, open_tempdir

ECHO = {"main.py": "def handler(event, context):\n    return event\n"}


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 48 MB tmpfs of its own (root only): the data dir's disk, which the test fills."""
    if os.environ.get("FAASBOX_TEST_STORE", "sqlite") != "sqlite":
        pytest.skip("fills the disk of the data dir, where SQLite keeps the store")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small filesystem for the data dir")
    root = open_tempdir() / "disk"
    root.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0711", "tmpfs",
                           str(root)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(path: Path) -> None:
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_is_a_503_and_nothing_is_reported_done_without_its_record(
        make_server: Any, small_disk: Path) -> None:
    server: Server = make_server(data=small_disk / "data")
    server.deploy("sf-echo", ECHO)
    assert server.invoke("sf-echo", {"n": 1}).status_code == 200  # a warm instance
    other = server.deploy_body(ECHO)
    filler = small_disk / "filler"
    fill(filler)
    calls = [server.invoke("sf-echo", {"n": i}) for i in range(5)]
    submit = server.http.post("/v1/functions/sf-echo/tasks", json={"n": 1})
    deploy = server.http.put("/v1/functions/sf-other", json=other)
    delete = server.http.delete("/v1/functions/sf-echo")
    for resp in [*calls, submit, deploy, delete]:
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "store_unavailable", resp.text
    filler.unlink()
    ok = server.invoke("sf-echo", {"n": 2})
    assert ok.status_code == 200
    rec = server.http.get(f"/v1/invocations/{ok.headers['x-faasbox-request-id']}")
    assert rec.status_code == 200 and rec.json()["status"] == "succeeded"
