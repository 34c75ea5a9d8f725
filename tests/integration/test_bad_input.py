"""Bad input is a clear 4xx, never a 500, and the server serves the next call."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

import pytest

from tests.conftest import Server

ECHO = {"main.py": "def handler(event, context):\n    return event\n"}
BIG_INT = b"18446744073709551616"  # 2**64: beyond what JSON numbers carry here
SEVEN_MIB = "x" * (7 * 2**20)


@pytest.fixture(scope="module")
def bad(server: Server) -> Server:
    server.deploy("bi-echo", ECHO)
    return server


def assert_error(resp: Any, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


def serves(server: Server) -> None:
    resp = server.invoke("bi-echo", {"still": "here"})
    assert resp.status_code == 200 and resp.json() == {"still": "here"}


def test_a_cron_that_never_fires_is_refused(bad: Server) -> None:
    resp = bad.http.post("/v1/functions/bi-echo/triggers",
                         json={"name": "never", "cron": "0 0 30 2 *"})
    assert_error(resp, 422, "invalid_spec")
    assert "never fires" in resp.json()["error"]["message"]
    serves(bad)


def test_integers_beyond_64_bits_in_an_event_are_read_as_floats(bad: Server) -> None:
    resp = bad.http.post("/v1/functions/bi-echo/invoke", content=b'{"n": ' + BIG_INT + b"}")
    assert resp.status_code == 200 and resp.json() == {"n": float(2**64)}
    resp = bad.http.post("/v1/functions/bi-echo/tasks:batch", content=b"[1, " + BIG_INT + b"]")
    assert resp.status_code == 202
    serves(bad)


def test_integers_beyond_64_bits_in_a_batch_a_job_a_trigger_and_a_version(bad: Server) -> None:
    assert_error(bad.http.post("/v1/jobs", content=b'{"function": "bi-echo", "shards": ['
                               + BIG_INT + b"]}"), 422)
    assert_error(bad.http.post("/v1/functions/bi-echo/triggers", content=(
        b'{"name": "big", "cron": "0 2 * * *", "event": ' + BIG_INT + b"}")), 422)
    assert_error(bad.http.post("/v1/functions/bi-echo/tasks",
                               params={"version": "99999999999999999999"}, json={}), 400)
    assert_error(bad.invoke("bi-echo", {}, version="-1"), 400)
    # the cron service still ticks: a valid trigger fires its schedule
    resp = bad.http.post("/v1/functions/bi-echo/triggers", json={"name": "ok", "cron": "* * * * *"})
    assert resp.status_code == 201 and resp.json()["upcoming"]
    serves(bad)


def test_the_event_cap_holds_for_every_way_in(bad: Server) -> None:
    assert_error(bad.http.post("/v1/functions/bi-echo/tasks:batch", json=[1, SEVEN_MIB]), 413)
    assert_error(bad.http.post("/v1/jobs", json={"function": "bi-echo",
                                                 "shards": [1, SEVEN_MIB]}), 422)
    assert_error(bad.http.post("/v1/functions/bi-echo/triggers", json={
        "name": "huge", "cron": "0 2 * * *", "event": SEVEN_MIB}), 422)
    serves(bad)


def test_a_model_bound_body_is_capped_before_it_is_read_whole(bad: Server) -> None:
    """Jobs, workflows, publish and triggers take a JSON model, which the framework reads whole
    before validating it: over 16 MiB it is a 413, whether its length is declared or not."""
    huge = b'{"function": "bi-echo", "shards": ["' + b"x" * (17 * 2**20) + b'"]}'
    assert_error(bad.http.post("/v1/jobs", content=huge,
                               headers={"content-type": "application/json"}), 413)

    def chunks() -> Any:  # no Content-Length: sent in chunks
        for i in range(0, len(huge), 2**20):
            yield huge[i:i + 2**20]

    assert_error(bad.http.post("/v1/workflows", content=chunks(),
                               headers={"content-type": "application/json"}), 413)
    serves(bad)


def zip_of(entries: list[tuple[str, bytes]], **change: Any) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    if "flag_bits" in change or "method" in change:  # patch the first local header
        if "flag_bits" in change:
            raw[6:8] = change["flag_bits"].to_bytes(2, "little")
        if "method" in change:
            raw[8:10] = change["method"].to_bytes(2, "little")
        cd = raw.rfind(b"PK\x01\x02")  # and the central directory entry
        if "flag_bits" in change:
            raw[cd + 8:cd + 10] = change["flag_bits"].to_bytes(2, "little")
        if "method" in change:
            raw[cd + 10:cd + 12] = change["method"].to_bytes(2, "little")
    if "corrupt" in change:  # flip bytes inside the first file's data
        at = 30 + len(entries[0][0]) + 2
        raw[at:at + 4] = b"\x00\xff\x00\xff"
    return bytes(raw)


MAIN = ("main.py", b"def handler(e, c):\n    return 1\n" * 50)
ZIPS = {
    "an absolute name": zip_of([MAIN, ("/etc/x.py", b"x")]),
    "a file and a folder of one name": zip_of([MAIN, ("a", b"x"), ("a/b", b"y")]),
    "bad crc": zip_of([MAIN], corrupt=True),
    "truncated": zip_of([MAIN])[:60],
    "encrypted": zip_of([MAIN], flag_bits=0x1),
    "unknown compression": zip_of([MAIN], method=99),
    "2000 nested dirs": zip_of([MAIN, ("d/" * 2000 + "f.py", b"x")]),
    "not a zip": b"hello",
}


@pytest.mark.parametrize("kind", list(ZIPS))
def test_malformed_code_archives_are_a_400(bad: Server, kind: str) -> None:
    resp = bad.http.put("/v1/functions/bi-zip", json={
        "handler": "main:handler", "code_zip": base64.b64encode(ZIPS[kind]).decode()})
    assert_error(resp, 400)
    serves(bad)


def test_an_on_success_cycle_is_refused_at_deploy(bad: Server) -> None:
    bad.deploy("bi-a", ECHO)
    bad.deploy("bi-b", ECHO, on_success="bi-a")
    resp = bad.deploy("bi-a", ECHO, on_success="bi-b", expect=422)
    assert "on_success makes a cycle: bi-a -> bi-b -> bi-a" in resp.json()["error"]["message"]
    assert bad.deploy("bi-c", ECHO, on_success="bi-c", expect=422)
    serves(bad)


def test_a_malformed_traceparent_is_ignored(bad: Server) -> None:
    resp = bad.http.post("/v1/functions/bi-echo/invoke", json={"x": 1},
                         headers={"traceparent": "not-a-trace"})
    assert resp.status_code == 200
    assert len(resp.headers["x-faasbox-trace-id"]) == 32
