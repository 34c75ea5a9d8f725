"""Every command that README.md and docs/*.md show runs, as written, against a live server.

The ```console blocks of each document are parsed: a line starting with ``$ `` is a command
(continued over the next lines while it ends in ``\\`` or a quote is open), the lines after it
up to the next ``$ `` are its documented output; a console block without any ``$`` line lists
commands only, one a line. Each document's commands run in order in one bash session (so shell
variables captured by one command serve the next ones) in the repository root, against a real
server with the example stack (examples/faasbox.yaml) deployed: the CLI through FAASBOX_URL,
curl with ``localhost:8080`` / ``127.0.0.1:8080`` pointed at the server and an HTTP error
status counting as a failure (``--fail-with-body``).

A command must exit 0, unless its documented output has an ``error:`` line (the CLI's way of
failing): then it must fail, and print that line (ids and ``…`` match anything). Only the
commands of SKIP do not run; each says why.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Server, open_tempdir

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_ACTIVATE = REPO / ".venv" / "bin" / "activate"

# The commands that cannot run inside a test, by their first words, and why.
SKIP: dict[str, str] = {
    "make run": "starts a server that runs until Ctrl-C (the test's own server stands in for it)",
    "make test": "runs the whole test suite, this test included",
    "make lint": "ruff and mypy over the whole tree: the lint step, run on its own",
    "make bench": "the benchmarks run for minutes and must not run inside the test suite",
}
if not VENV_ACTIVATE.exists():  # e.g. tests run from an environment installed elsewhere
    SKIP["source .venv/bin/activate"] = "there is no .venv here (the CLI is on PATH already)"

ERROR_ID = re.compile(r"[0-9a-f]{32}")
SESSION_TIMEOUT_S = 280

pytestmark = [pytest.mark.xdist_group("docs"), pytest.mark.timeout(SESSION_TIMEOUT_S + 20)]


@dataclass
class Command:
    doc: str
    line: int
    text: str
    output: list[str] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        # the CLI's "error: ..." line, or an API error body shown as a curl's output
        return [line for line in self.output if line.startswith(("error:", '{"error":'))]

    @property
    def skip_reason(self) -> str | None:
        words = " ".join(shlex.split(self.text, comments=True))
        for prefix, reason in SKIP.items():
            if words == prefix or words.startswith(prefix + " "):
                return reason
        return None


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # a quote is still open
        return False
    return True


def console_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """The ```console blocks of a document: (line number of the first line, its lines)."""
    blocks: list[tuple[int, list[str]]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence[3:].strip() == "console":
            indent = len(lines[i]) - len(lines[i].lstrip())
            start, i = i + 2, i + 1
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            blocks.append((start, body))
        i += 1
    return blocks


def commands(path: Path) -> list[Command]:
    doc = str(path.relative_to(REPO))
    found: list[Command] = []
    for start, body in console_blocks(path):
        if not any(line.startswith("$ ") for line in body):  # a list of commands
            found += [Command(doc, start + k, line) for k, line in enumerate(body)
                      if line.strip() and not line.lstrip().startswith("#")]
            continue
        k = 0
        while k < len(body):
            if not body[k].startswith("$ "):
                if found and found[-1].doc == doc and found[-1].line >= start:
                    found[-1].output.append(body[k])
                k += 1
                continue
            cmd = Command(doc, start + k, body[k][2:])
            while not _complete(cmd.text) and k + 1 < len(body):
                k += 1
                cmd.text += "\n" + body[k]
            found.append(cmd)
            k += 1
    return found


@functools.cache
def curl_fail_flag() -> str:
    help_text = subprocess.run(["curl", "--help", "all"], capture_output=True, text=True).stdout
    return "--fail-with-body" if "--fail-with-body" in help_text else "--fail"


def session_script(cmds: list[Command], port: int, out: Path, key_file: Path) -> str:
    lines = ["set -o pipefail", f"cd {shlex.quote(str(REPO))}",
             f'curl() {{ command curl {curl_fail_flag()} "$@"; }}']
    for i, cmd in enumerate(cmds):
        if cmd.skip_reason is not None:
            continue
        text = cmd.text
        for host in ("localhost:8080", "127.0.0.1:8080"):
            text = text.replace(host, f"127.0.0.1:{port}")
        text = text.replace(".faasbox/admin.key", str(key_file))
        lines += ["{", text, f"}} >{out}/{i}.out 2>{out}/{i}.err </dev/null",
                  f"__rc=$?; echo $__rc >{out}/{i}.rc; (exit $__rc)"]
    return "\n".join(lines) + "\n"


def error_pattern(line: str) -> re.Pattern[str]:
    """A documented ``error:`` line as a pattern: ids and elisions (…) match any word."""
    words = [r"\S+" if "…" in w or ERROR_ID.search(w) else re.escape(w) for w in line.split()]
    return re.compile(r"\s+".join(words))


def check(cmd: Command, rc: int | None, stdout: str, stderr: str) -> str | None:
    """What is wrong with one command's run, or None."""
    if rc is None:
        return "did not run to its end (the session stopped or timed out here)"
    if "Traceback (most recent call last)" in stderr:
        return "printed a traceback"
    if not cmd.error_lines:
        return None if rc == 0 else f"exited {rc}"
    if rc == 0:
        return "exited 0, but the doc shows it failing"
    printed = " ".join((stdout + "\n" + stderr).split())
    missing = [e for e in cmd.error_lines if not error_pattern(e).search(printed)]
    return f"did not print {missing}" if missing else None


@pytest.fixture(scope="module")
def docs_server() -> Iterator[Server]:
    """A server with the example stack deployed, as `make run` starts it."""
    if shutil.which("jq") is None or shutil.which("curl") is None:
        pytest.skip("the documented commands use jq and curl: install them to run this test")
    srv = Server(open_tempdir() / "data").start()
    try:
        deployed = subprocess.run(
            [sys.executable, "-m", "faasbox", "deploy", "-f", "examples/faasbox.yaml"],
            cwd=REPO, env={**os.environ, **srv.cli_env()}, capture_output=True,
            text=True, timeout=SESSION_TIMEOUT_S)
        assert deployed.returncode == 0, deployed.stderr
        yield srv
    finally:
        srv.stop()


def test_the_docs_show_commands() -> None:
    by_doc = {path.name: commands(path) for path in DOCS}
    assert len(by_doc["README.md"]) >= 20 and len(by_doc["cli-jobs.md"]) >= 20
    for cmd in (c for cmds in by_doc.values() for c in cmds):
        # what a reader cannot run as written: an elided id or a placeholder to fill in
        assert "…" not in cmd.text and not re.search(r"\b[A-Z]+_ID\b", cmd.text), (
            f"{cmd.doc}:{cmd.line}: {cmd.text}")


@pytest.mark.parametrize("path", [p for p in DOCS if commands(p)],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run_as_written(docs_server: Server, path: Path) -> None:
    cmds = commands(path)
    out = open_tempdir()
    script = session_script(cmds, docs_server.port, out, docs_server.data / "admin.key")
    # as a reader who followed the README: the admin key exported (the CLI would also find it
    # in the server's data dir, FAASBOX_DATA)
    env = {**os.environ, "FAASBOX_URL": docs_server.url,
           "FAASBOX_API_KEY": docs_server.admin_key, "FAASBOX_DATA": str(docs_server.data),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        subprocess.run(["bash", "--noprofile", "--norc"], input=script, text=True, env=env,
                       cwd=REPO, capture_output=True, timeout=SESSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass  # the commands that did not end are reported below
    failures = []
    for i, cmd in enumerate(cmds):
        if cmd.skip_reason is not None:
            continue
        rc_file = out / f"{i}.rc"
        rc = int(rc_file.read_text()) if rc_file.exists() else None
        stdout = (out / f"{i}.out").read_text() if (out / f"{i}.out").exists() else ""
        stderr = (out / f"{i}.err").read_text() if (out / f"{i}.err").exists() else ""
        problem = check(cmd, rc, stdout, stderr)
        if problem is not None:
            failures.append(f"{cmd.doc}:{cmd.line}: $ {cmd.text}\n  {problem}\n"
                            f"  stdout: {stdout[-800:]!r}\n  stderr: {stderr[-800:]!r}")
    assert not failures, "\n".join(failures)
