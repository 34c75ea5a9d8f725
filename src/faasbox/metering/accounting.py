"""What the node measures of an instance: CPU seconds and peak RSS.

From the instance's cgroup when it has one (v2 ``cpu.stat`` and ``memory.peak``; v1
``cpuacct.usage`` and ``memory.max_usage_in_bytes``), else from ``/proc/<pid>`` (the process's
own and its reaped children's CPU time, ``VmHWM``). Reads are a few small files; a value that
cannot be read is None (the process is gone, the file does not exist here).
"""

from __future__ import annotations

import os
from pathlib import Path

from faasbox.node import Instance

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_seconds(inst: Instance) -> float | None:
    cg = inst.cgroup
    if cg is not None:
        d = cg.dirs.get("cpu")
        if d is not None:
            text = _read(d / "cpu.stat")
            if text and cg.version == 2:
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
            usage = _read(d / "cpuacct.usage")
            if usage and usage.strip().isdigit():
                return int(usage) / 1e9
    pid = inst.pid
    if pid is None:
        return None
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    # the fields after the command (which may hold spaces) in parentheses
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        ticks = sum(int(v) for v in rest[11:15])  # utime stime cutime cstime
    except (ValueError, IndexError):
        return None
    return ticks / _TICKS


def peak_rss_mb(inst: Instance) -> float | None:
    cg = inst.cgroup
    if cg is not None:
        d = cg.dirs.get("memory")
        if d is not None:
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                text = _read(d / name)
                if text and text.strip().isdigit():
                    return int(text) / 2**20
    pid = inst.pid
    if pid is None:
        return None
    status = _read(Path(f"/proc/{pid}/status"))
    for line in (status or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None
