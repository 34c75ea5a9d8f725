"""Small pure pieces: spec validation, billing, frames, clock, stack files, settings."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from faasbox import errors
from faasbox.clock import VirtualClock
from faasbox.config import Settings
from faasbox.dispatcher.lifecycle import (
    AHEAD_MAX_MS,
    PIPELINE_MOST,
    PIPELINE_WAIT_MS,
    pipeline_depth,
)
from faasbox.metering import billed_ms, gb_seconds
from faasbox.runtime import protocol
from faasbox.runtime.context import LOG_LIMIT, LogBuffer
from faasbox.spec import FunctionSpec, check_name
from faasbox.stack import load_stack


def test_spec_defaults_match_the_docs() -> None:
    spec = FunctionSpec(handler="main:handler")
    assert (spec.memory_mb, spec.timeout_s, spec.concurrency) == (128, 30.0, 1)
    assert (spec.min_instances, spec.max_instances, spec.idle_ttl_s) == (0, 10, 300.0)


@pytest.mark.parametrize("bad", [
    {"handler": "main"}, {"handler": "main:handler", "memory_mb": 127},
    {"handler": "main:handler", "timeout_s": 0}, {"handler": "main:handler", "concurrency": 0},
    {"handler": "main:handler", "env": {"FAASBOX_X": "1"}},
])
def test_spec_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FunctionSpec(**bad)  # type: ignore[arg-type]


def test_names() -> None:
    assert check_name("ok-name_1") == "ok-name_1"
    for bad in ("", "Upper", "-lead", "a" * 64, "sp ace"):
        with pytest.raises(errors.InvalidSpec):
            check_name(bad)


def test_billing_rounds_up_to_the_millisecond() -> None:
    assert billed_ms(0.01) == 1
    assert billed_ms(1.0) == 1
    assert billed_ms(1.001) == 2
    assert gb_seconds(1000, 1024) == 1.0
    assert gb_seconds(500, 128) == 0.0625


def test_frames_round_trip_over_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(protocol.pack({"t": "invoke", "id": "x"}, b'{"k": [1]}'))
        a.sendall(protocol.pack({"t": "empty"}))
        a.sendall(protocol.pack({"t": "cut"}, b"12345")[:-2])
        rfile = b.makefile("rb")
        assert protocol.read_frame(rfile) == ({"t": "invoke", "id": "x"}, b'{"k": [1]}')
        assert protocol.read_frame(rfile) == ({"t": "empty"}, b"")
        a.close()
        with pytest.raises(protocol.ProtocolError):
            protocol.read_frame(rfile)  # the stream ended inside the third frame
        assert protocol.read_frame(rfile) is None


def test_bad_frame_length_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_length((2**31).to_bytes(4, "big"))


def test_log_buffer_truncates() -> None:
    buf = LogBuffer()
    buf.write("a" * (LOG_LIMIT - 1))
    buf.write("bcd")
    text = buf.getvalue()
    assert text.startswith("a" * (LOG_LIMIT - 1) + "b")
    assert "truncated" in text and buf.truncated


def test_virtual_clock_wakes_sleepers_in_order() -> None:
    async def main() -> list[str]:
        clock = VirtualClock(100.0)
        woke: list[str] = []

        async def sleeper(name: str, dt: float) -> None:
            await clock.sleep(dt)
            woke.append(f"{name}@{clock.now():g}")

        tasks = [asyncio.create_task(sleeper("b", 5)), asyncio.create_task(sleeper("a", 2))]
        await asyncio.sleep(0)
        clock.advance(3)
        await asyncio.sleep(0)
        assert woke == ["a@103"]
        clock.advance(10)
        await asyncio.gather(*tasks)
        with pytest.raises(ValueError):
            clock.advance(-1)
        return woke

    assert asyncio.run(main()) == ["a@103", "b@113"]


def test_stack_file(tmp_path: Path) -> None:
    (tmp_path / "fn").mkdir()
    stack = tmp_path / "faasbox.yaml"
    stack.write_text("functions:\n  one:\n    path: fn\n    handler: main:h\n    memory: 256\n"
                     "    env: {N: 3}\n")
    [item] = load_stack(stack)
    assert item.name == "one" and item.path == (tmp_path / "fn").resolve()
    assert item.spec == {"handler": "main:h", "memory_mb": 256, "env": {"N": "3"}}
    stack.write_text("functions: [1, 2]\n")
    with pytest.raises(errors.InvalidSpec):
        load_stack(stack)
    stack.write_text("functions:\n  two:\n    path: missing\n")
    with pytest.raises(errors.InvalidSpec, match="no folder"):
        load_stack(stack)
    stack.write_text(":\n  - [")
    with pytest.raises(errors.InvalidRequest, match="not valid YAML"):
        load_stack(stack)


def test_settings_from_env_and_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({"FAASBOX_PORT": "9000", "FAASBOX_ACQUIRE_TIMEOUT_S": "2.5",
                           "FAASBOX_DATA": str(tmp_path)}, host="0.0.0.0")
    assert s.port == 9000 and s.acquire_timeout_s == 2.5 and s.data == tmp_path
    assert s.host == "0.0.0.0"
    assert Settings.from_env({}, port=1234).port == 1234


PEAK_PROBE = """
import json, os, sys
from faasbox.runtime import worker

def own():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

def report():
    peak = worker._peak_rss_kb()
    return {"peak": peak, "hwm": own(), "rusage": worker._status[0] == worker._RUSAGE}

out = {"spawned": report()}
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, json.dumps(report()).encode())
    os._exit(0)
os.waitpid(pid, 0)
out["forked"] = json.loads(os.read(read, 4096))
print(json.dumps(out))
"""


def test_an_instances_peak_rss_is_its_own_spawned_or_forked(tmp_path: Path) -> None:
    """A spawned instance inherits its parent's peak in ``ru_maxrss`` across exec, so the
    worker reads VmHWM there; a forked one reads ``ru_maxrss``, which is then the same."""
    import json
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(PEAK_PROBE)
    # a parent of 300 MB execs the probe: its ru_maxrss starts at the parent's peak
    parent = ("import os, sys; big = bytearray(300 << 20); big[::4096] = b'x' * len(big[::4096]);"
              f" os.execv(sys.executable, [sys.executable, {str(probe)!r}])")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, check=True)
    out = json.loads(done.stdout)
    spawned, forked = out["spawned"], out["forked"]
    assert spawned["rusage"] is False and forked["rusage"] is True
    for seen in (spawned, forked):
        assert 0 < seen["peak"] <= seen["hwm"] < 200 * 1024  # not the parent's 300 MB


def test_row_ids_sort_by_creation_and_stay_unguessable() -> None:
    import re
    import time

    from faasbox.invoker import new_id, new_row_id

    ids = []
    for _ in range(3):
        ids += [new_row_id() for _ in range(100)]
        time.sleep(0.002)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes) and len(set(prefixes)) >= 3  # milliseconds first
    assert abs(int(ids[-1][:12], 16) / 1000 - time.time()) < 60
    assert len({i[12:] for i in ids}) == len(ids)  # 80 random bits after them
    assert len({new_id()[:8] for _ in range(50)}) > 1  # random ids stay random from the start


def test_tasks_sent_ahead_as_deep_as_a_few_ms_of_calls() -> None:
    """dispatcher/lifecycle.py: only instances that run calls in order, only short runs; the
    shorter the calls, the more sent ahead, 1 to PIPELINE_MOST."""
    assert pipeline_depth(None, None, True) == 0  # no run yet
    assert pipeline_depth(AHEAD_MAX_MS + 1, None, True) == 0  # long runs, no call timed yet
    assert pipeline_depth(1.0, AHEAD_MAX_MS + 1, True) == 0  # long calls
    # a run that waited behind calls sent ahead is long; its call, which counts, is not
    assert pipeline_depth(AHEAD_MAX_MS * 10, 0.1, True) == PIPELINE_MOST
    assert pipeline_depth(1.0, 0.1, False) == 0  # an async handler's calls overlap
    assert pipeline_depth(1.0, None, True) == 1  # no call timed yet
    assert pipeline_depth(1.0, 0.0, True) == PIPELINE_MOST
    assert pipeline_depth(1.0, PIPELINE_WAIT_MS / 3, True) == 3
    assert pipeline_depth(1.0, AHEAD_MAX_MS, True) == 1  # calls longer than the budget
