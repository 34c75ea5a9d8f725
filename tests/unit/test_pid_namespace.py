"""runtime/confine.py's pid namespaces, in processes forked by the test (needs root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces need root")


def _in_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a test must not unshare in pytest's own)."""
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=30)


def test_a_child_forked_inside_is_pid_1_and_the_next_one_is_not() -> None:
    out = _in_child("""
import os
from faasbox.runtime import confine
own = os.stat("/proc/self/ns/pid").st_ino
r, w = os.pipe()
with confine.pid_namespace_for_child():
    pid = os.fork()
    if pid == 0:
        os.write(w, b"%d %d" % (os.getpid(), os.getppid()))
        os._exit(0)
os.waitpid(pid, 0)
print(os.read(r, 64).decode())
# the zygote is back in its own namespace: a second namespace can be made, and a plain fork
# lands beside it
with confine.pid_namespace_for_child():
    again = os.fork()
    if again == 0:
        os._exit(0 if os.getpid() == 1 else 1)
print(os.waitstatus_to_exitcode(os.waitpid(again, 0)[1]))
plain = os.fork()
if plain == 0:
    os._exit(0 if os.stat("/proc/self/ns/pid").st_ino == own and os.getpid() != 1 else 1)
print(os.waitstatus_to_exitcode(os.waitpid(plain, 0)[1]))
""")
    assert out.returncode == 0, out.stderr
    # pid 1, and its parent is outside its namespace (getppid gives 0)
    assert out.stdout.split() == ["1", "0", "0", "0"], out.stdout


def test_a_spawned_instance_is_waited_for_and_its_end_passed_on() -> None:
    """become_pid_one: the child goes on as pid 1; the first process exits as it did."""
    # a fault's signal is forced on it; one a pid 1 sends itself with no handler is ignored
    # (SIGKILL: it goes on and exits 0; abort() then faults: SIGSEGV)
    for code, expect in (("os._exit(7)", 7), ("import ctypes; ctypes.string_at(0)", -11),
                         ("os.kill(os.getpid(), 9)", 0), ("os.abort()", -11)):
        out = _in_child(f"""
import os
from faasbox.runtime import confine
confine.become_pid_one()
assert os.getpid() == 1 and os.getppid() == 0
{code}
""")
        assert out.returncode == expect, (code, out.returncode, out.stderr)


def test_the_probe_finds_pid_namespaces() -> None:
    out = _in_child("import json; from faasbox.runtime import confine; "
                    "print(json.dumps(confine.probe()))")
    assert out.returncode == 0, out.stderr
    assert '"pid namespace": null' in out.stdout

