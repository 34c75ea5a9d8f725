"""Run every benchmark of ``bench/`` in turn (``make bench``).

Each bench runs as its own subprocess with this interpreter; its JSON lines are passed through
on stdout as they come and its chatter goes to stderr, so ``python bench/run_all.py > run.jsonl``
records one run. The exit code is non-zero when any bench failed (the others still run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import BENCH_DIR, say

# these first, in this order; then any other bench/*.py (a helper module that is not a bench
# is named in NOT_BENCHES or starts with "_"; peers.py runs through `tasks.py --peers`, as it
# installs Redis and a venv of its own on first use)
FIRST = ("invoke", "cold_start", "simulate")
NOT_BENCHES = {"common", "run_all", "peers"}


def benches() -> list[str]:
    found = {p.stem for p in BENCH_DIR.glob("*.py")
             if p.stem not in NOT_BENCHES and not p.stem.startswith("_")}
    return [n for n in FIRST if n in found] + sorted(found - set(FIRST))


def run(name: str) -> int:
    path = BENCH_DIR / f"{name}.py"
    say(f"== {name}: {path}")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
    code = proc.wait()
    say(f"== {name}: exit code {code} after {time.monotonic() - started:.0f} s")
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benches")
    args = ap.parse_args(argv)
    available = benches()
    unknown = set(args.only or ()) - set(available)
    if unknown:
        ap.error(f"no such bench: {', '.join(sorted(unknown))} (have: {', '.join(available)})")
    if "simulate" not in available:
        say("== simulate: no bench/simulate.py, skipped")
    failed = []
    for name in args.only or available:
        if run(name) != 0:
            failed.append(name)
    if failed:
        say(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
