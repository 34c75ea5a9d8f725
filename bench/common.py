"""Shared pieces of the benchmarks: a real ``faasbox server`` subprocess, deploys, statistics,
and the output format.

Every benchmark prints one JSON line per figure on stdout::

    {"name": "invoke.warm.p50", "value": 1.23, "unit": "ms", "params": {"concurrency": 8}}

and everything meant for a human on stderr (:func:`say`), so that ``bench/run_all.py > out.jsonl``
keeps only the figures and two runs can be compared line by line on ``name`` + ``params``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from faasbox.codestore import zip_folder

BENCH_DIR = Path(__file__).resolve().parent
FUNCTIONS_DIR = BENCH_DIR / "functions"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


# -- output -----------------------------------------------------------------------------------
def emit(name: str, value: float, unit: str, **params: Any) -> None:
    """Print one figure as a JSON line on stdout (flushed at once, so a pipe sees it)."""
    line = {"name": name, "value": round(float(value), 3), "unit": unit, "params": params}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: ``(status, headers, body)``, header
    names lowercased (the benches' minimal keep-alive clients)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ", 2)[1]), headers, body


def say(message: str) -> None:
    """Human-readable progress, on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics -------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between closest ranks (the
    definition of numpy's default), so p50 of an even-sized sample is the mean of the middle
    two and p100 is the maximum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0-100, not {p}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by one process (not its children). ``utime + stime`` of
    ``/proc/PID/stat`` count clock ticks: a process that runs in bursts shorter than a tick
    (an instance answering a call in 20 µs) is mostly not running when the tick comes, and 8
    instances at c=8 read 29 % low. ``/proc/PID/task/*/schedstat`` counts nanoseconds but
    only for threads alive now. Both are lower bounds: the larger is the figure."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    ns = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            ns += int(path.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just exited
    return max(ticks, ns / 1e9)


def host_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process) so far."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (a supervisor's workers)."""
    return _children_by_parent().get(pid, [])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and all its descendants alive now."""
    children = _children_by_parent()
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
        todo += children.get(pid, [])
    return total


# -- processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path,
                 path: str = "/healthz", timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url} exited with code {proc.returncode}:\n{tail(log)}")
            try:
                if client.get(url + path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy within {timeout:g} s:\n{tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL whatever of its process group is left."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        say(f"pid {proc.pid} ignored SIGTERM for {timeout:g} s; killing its process group")
    # the leader is not reaped yet, so its group id cannot have been reused
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


class FaasboxServer:
    """A real ``faasbox server`` on a free loopback port with its own data dir.

    ``data`` keeps a data dir across runs (its package cache saves the pip install of a
    function's requirements); by default a temporary one is made and removed on stop.
    ``env`` adds ``FAASBOX_*`` settings, e.g. ``{"FAASBOX_ACQUIRE_TIMEOUT_S": "30"}``; ``args``
    more options, e.g. ``["--insecure-no-auth"]``. The admin key the server writes at its
    first start is sent with every request of ``http``, ``request`` and the helpers below,
    and ``auth_headers`` gives it to a bench's own clients.
    """

    def __init__(self, data: Path | None = None, env: dict[str, str] | None = None,
                 args: Sequence[str] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="faasbox-bench-"))
        # traversal for the unprivileged uids instances run as (as in a real install)
        self.root.chmod(0o711)
        self.data = data if data is not None else self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.args = list(args)  # more `faasbox server` options, e.g. --insecure-no-auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=900)
        self.api_key: str | None = None  # the admin key the server wrote at its first start

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Authorization header of the admin key (none for --insecure-no-auth)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> FaasboxServer:
        self.data.mkdir(parents=True, exist_ok=True)
        faasbox = Path(sys.executable).with_name("faasbox")
        cmd = [str(faasbox), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--data", str(self.data), "--log-level", "warning", *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        wait_healthy(self.url, self.proc, self.log)
        key_file = self.data / "admin.key"  # written before the server answers
        if key_file.exists():
            self.api_key = key_file.read_text().strip()
            self.http.headers.update(self.auth_headers)
        say(f"faasbox server pid {self.proc.pid} on {self.url}, data {self.data}")
        return self

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.returncode not in (0, -signal.SIGTERM):
                say(f"faasbox server exited with {self.proc.returncode}:\n{tail(self.log)}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FaasboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API --------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:2000]}")
        return resp

    def deploy(self, name: str, folder: Path | None = None, *, check: bool = True,
               **spec: Any) -> dict[str, Any]:
        """PUT a version. Without ``folder`` it is a configuration-only deploy that reuses the
        latest code (a new version, so its first invoke is a cold start, unless the spec is the
        latest version's: then no version is made)."""
        body: dict[str, Any] = {"handler": "main:handler", **spec, "check": check}
        if folder is not None:
            body["code_zip"] = base64.b64encode(zip_folder(folder)).decode()
        result: dict[str, Any] = self.request("PUT", f"/v1/functions/{name}", json=body).json()
        return result

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/v1/functions/{name}")

    def invoke(self, name: str, event: Any = None) -> httpx.Response:
        return self.request("POST", f"/v1/functions/{name}/invoke", json=event)

    def record(self, request_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/invocations/{request_id}").json()
        return result

    def instances(self, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.request(
            "GET", f"/v1/functions/{name}/instances").json()["instances"]
        return found

    def sandbox(self) -> str:
        """The optional isolation features that are active, e.g. ``"memory,cpu,pids,uid"``
        (they change what a cold start costs, so a figure carries them)."""
        short = {"memory limit": "memory", "cpu weight": "cpu", "pids limit": "pids",
                 "unprivileged uid": "uid"}
        rows = self.request("GET", "/v1/node").json()["sandbox"]
        return ",".join(short[r["feature"]] for r in rows
                        if r["active"] and r["feature"] in short) or "none"
