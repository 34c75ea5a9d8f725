"""Task commands: invoke --async (its body), tasks, task [show|cancel], submit.

``submit`` sends a JSON Lines file in batches and then long-polls every task it created,
concurrently and in submission order (tasks run roughly in that order), until all are terminal.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from faasbox.cli.app import (
    CliError,
    Col,
    JsonOpt,
    UrlOpt,
    app,
    err,
    fit_table,
    out,
    print_json,
    short_ts,
    ts,
)
from faasbox.client import ApiError, Client

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired", "dead", "redriven"})
STATUSES = ("queued", "running", "retry_wait", *sorted(TERMINAL))
MAX_WAIT_S = 60.0  # the server's cap on ?wait=
BATCH = 1000  # the server's cap on a tasks:batch request
POLLERS = 8  # threads long-polling at once while ``submit`` waits


# -- invoke --async -----------------------------------------------------------------------------
def invoke_async(client: Client, name: str, payload: bytes, version: str | None, wait: bool,
                 key: str | None) -> None:
    """``faasbox invoke NAME --async [--wait] [--idempotency-key K]``.

    Prints ``{"task_id", "status"}``; with ``wait``, long-polls until the task ends and prints
    its result, or fails with ``<code>: <message>`` when it did not succeed.
    """
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    params = {"version": version} if version else {}
    body = client.json("POST", f"/v1/functions/{name}/tasks", content=payload, params=params,
                       headers=headers)
    if not body["created"]:
        err.print(f"[dim]idempotency key {escape(key or '')!r} was used before:"
                  " this is the task it created[/]", highlight=False)
    if not wait:
        print_json({"task_id": body["task_id"], "status": body["status"]})
        return
    task = wait_for_task(client, body["task_id"])
    if task["status"] != "succeeded":
        raise CliError(f"task {task['task_id']} {task['status']}: {_error_text(task)}")
    sys.stdout.write(orjson.dumps(task.get("result")).decode() + "\n")  # as the sync invoke


def wait_for_task(client: Client, task_id: str, timeout: float | None = None) -> dict[str, Any]:
    """The task once terminal (long-polls up to 60 s per request), or as it is at ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = MAX_WAIT_S if deadline is None else min(MAX_WAIT_S, deadline - time.monotonic())
        params = {"wait": f"{left:.3f}"} if left > 0 else {}
        task: dict[str, Any] = client.json("GET", f"/v1/tasks/{task_id}", params=params)
        if task["status"] in TERMINAL or left <= 0:
            return task
        if deadline is not None and time.monotonic() >= deadline:
            return task


def _error_text(task: dict[str, Any]) -> str:
    error = task.get("error") or {}
    return f"{error.get('code', task['status'])}: {error.get('message', '')}".rstrip(": ")


def _status(status: str) -> str:
    color = {"succeeded": "green", "running": "cyan", "queued": "blue",
             "retry_wait": "yellow"}.get(status, "red")
    return f"[{color}]{status}[/]"


# -- tasks ------------------------------------------------------------------------------------
@app.command("tasks")
def list_tasks(
    function: str | None = typer.Option(None, "--function", "-f", help="Only this function's."),
    status: str | None = typer.Option(None, "--status", "-s",
                                      help=f"Only this status: {', '.join(STATUSES)}."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List tasks, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if function is not None:
        params["function"] = function
    if status is not None:
        params["status"] = status
    body = Client(url).json("GET", "/v1/tasks", params=params)
    if as_json:
        print_json(body)
        return
    columns = [Col("task", name=True), Col("function", name=True), Col("status"),
               Col("attempts", drop=3), Col("created", drop=5), Col("finished", drop=4),
               Col("error", drop=2, wrap=16)]
    rows = [[t["task_id"], escape(t["function"]), _status(t["status"]),
             f"{t['attempts']}/{t['max_attempts']}", short_ts(t["created_at"]),
             short_ts(t["finished_at"]), escape(_error_text(t)) if t.get("error") else ""]
            for t in body["tasks"]]
    out.print(fit_table(columns, rows))
    if "next_cursor" in body:
        err.print(f"[dim]showing the newest {limit}; raise --limit for more[/]")


# -- task [show] ID / task cancel ID -----------------------------------------------------------
class _ShowByDefault(TyperGroup):
    """``faasbox task ID`` means ``faasbox task show ID``; subcommands keep their names."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


task_app = typer.Typer(cls=_ShowByDefault, no_args_is_help=True,
                       help="One task: `faasbox task ID` shows it, `faasbox task cancel ID`.")
app.add_typer(task_app, name="task")


@task_app.command("show")
def show_task(
    task_id: str = typer.Argument(..., metavar="ID"),
    wait: float = typer.Option(0.0, "--wait", "-w", min=0,
                               help="Seconds to wait for the task to end first."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a task: status, attempts, times, invocations, result or error (the default)."""
    client = Client(url)
    task = (wait_for_task(client, task_id, wait) if wait > 0
            else client.json("GET", f"/v1/tasks/{task_id}"))
    if as_json:
        print_json(task)
        return
    version = f"v{task['version']}" if task["version"] is not None else "(latest version)"
    out.print(f"[bold]task {task['task_id']}[/]  {task['function']} {version}"
              f"  {_status(task['status'])}", highlight=False)
    rows = [("attempts", f"{task['attempts']}/{task['max_attempts']}"),
            ("created", ts(task["created_at"])), ("started", ts(task["started_at"])),
            ("finished", ts(task["finished_at"]))]
    if task["status"] == "retry_wait":
        rows.append(("next attempt", ts(task["run_at"])))
    if task["status"] not in TERMINAL:
        rows.append(("expires", ts(task["expires_at"])))
    rows += [("idempotency", task["idempotency_key"] or "-"), ("trace", task["trace_id"] or "-")]
    rows += [("invocation", i) for i in task["invocation_ids"]]
    for label, value in rows:
        out.print(f"  {label:<12} {escape(str(value))}", highlight=False)
    if "result" in task:
        out.print("  result       " + escape(orjson.dumps(task["result"]).decode()),
                  highlight=False)
    if task.get("error"):
        out.print(f"  error        [red]{escape(_error_text(task))}[/]", highlight=False)


@task_app.command("cancel")
def cancel_task(
    task_id: str | None = typer.Argument(None, metavar="[ID]"),
    function: str | None = typer.Option(None, "--function", "-f",
                                        help="Cancel this function's tasks (with --status)."),
    status: list[str] = typer.Option([], "--status", "-s",
                                     help="With --function: only these (queued, retry_wait,"
                                     " held, running); default: all unfinished."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Cancel a queued task, or stop a running one; or every matching task of a function."""
    client = Client(url)
    if task_id is None:
        if function is None:
            raise CliError("give a task ID, or --function (and --status) to cancel many")
        body: dict[str, Any] = {"function": function}
        if status:
            body["status"] = status
        done = client.json("POST", "/v1/tasks:cancel", json=body)
        if as_json:
            print_json(done)
            return
        out.print(f"cancelled {done['cancelled']} tasks of {escape(function)}"
                  f" ({done['queued_cancelled']} queued, {done['running_stopped']} running)",
                  highlight=False)
        return
    task = client.json("POST", f"/v1/tasks/{task_id}/cancel")
    if as_json:
        print_json(task)
        return
    note = "" if task["status"] == "cancelled" else " (it had already ended)"
    out.print(f"task {task['task_id']} {_status(task['status'])}{note}", highlight=False)


# -- submit -----------------------------------------------------------------------------------
def read_events(path: Path) -> list[bytes]:
    """The events of a JSON Lines file (``-``: stdin), each validated; blank lines skipped."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"{path} line {number} is not valid JSON ({exc});"
                           " nothing was submitted") from None
        events.append(line.strip().encode())
    if not events:
        raise CliError(f"{path} holds no events")
    return events


@dataclass
class _Run:
    """What one ``submit`` has sent and seen end (shared with the polling threads)."""

    total: int
    created: int = 0
    submitted: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    task_ids: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def task_ended(self, task: dict[str, Any]) -> None:
        with self.lock:
            self.counts[task["status"]] += 1
            if task["status"] != "succeeded":
                self.failures.append({"task_id": task["task_id"], "status": task["status"],
                                      "error": task.get("error")})

    def counts_text(self) -> str:
        with self.lock:
            return " ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))

    def summary(self, function: str) -> dict[str, Any]:
        wall = (self.ended or time.monotonic()) - self.started
        done = sum(self.counts.values())
        return {"function": function, "tasks": self.total, "created": self.created,
                "duplicates": self.submitted - self.created, "counts": dict(self.counts),
                "succeeded": self.counts["succeeded"], "wall_s": round(wall, 3),
                "tasks_per_s": round(done / wall, 1) if wall > 0 else None,
                "failures": self.failures}


class _Pollers:
    """Threads that long-poll submitted tasks, in submission order (the order they run in),
    each until it ended. A sync client in a few threads costs less CPU per request than an
    async one in this process, and the CPU is shared with the server on one machine."""

    def __init__(self, client: Client, run: _Run, on_end: Callable[[], None],
                 count: int) -> None:
        self.client = client
        self.run = run
        self.on_end = on_end
        self.todo: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.errors: list[ApiError] = []
        self.threads = [threading.Thread(target=self._work, name=f"poll-{i}", daemon=True)
                        for i in range(count)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        while (task_id := self.todo.get()) is not None:
            try:
                task = wait_for_task(self.client, task_id)
            except ApiError as exc:
                self.errors.append(exc)
                return
            self.run.task_ended(task)
            self.on_end()

    def finish(self) -> None:
        """Wait until every task put in ``todo`` ended."""
        for _ in self.threads:
            self.todo.put(None)
        for t in self.threads:
            t.join()
        if self.errors:
            raise self.errors[0]


def _submit_batches(client: Client, name: str, events: list[bytes], key: str | None,
                    version: str | None, run: _Run, todo: queue.SimpleQueue[str | None]) -> None:
    params = {"version": version} if version else {}
    for n, start in enumerate(range(0, len(events), BATCH)):
        headers = {"content-type": "application/json"}
        if key is not None:  # the server makes it "<key>:<batch>:<index in batch>"
            headers["idempotency-key"] = f"{key}:{n}"
        batch = b"[" + b",".join(events[start:start + BATCH]) + b"]"
        try:
            body = client.json("POST", f"/v1/functions/{name}/tasks:batch", content=batch,
                               headers=headers, params=params)
        except ApiError as exc:
            if run.submitted:
                exc.message += (f" ({run.submitted} tasks were submitted before this;"
                                " submit again with the same --idempotency-key to resume)")
            raise
        for t in body["tasks"]:
            run.submitted += 1
            run.created += t["created"]
            run.task_ids.append(t["task_id"])
            todo.put(t["task_id"])


def _print_summary(s: dict[str, Any]) -> None:
    parts = ", ".join(f"{n} {_status(status)}" for status, n in sorted(s["counts"].items()))
    out.print(f"{s['tasks']} tasks of {s['function']}: {parts or 'none ended'}"
              f" in {s['wall_s']:.2f} s ({s['tasks_per_s']} tasks/s)", highlight=False)
    if s["duplicates"]:
        out.print(f"[dim]{s['duplicates']} were already submitted with this idempotency key[/]")
    for f in s["failures"][:5]:
        error = f["error"] or {}
        out.print(f"  [red]{f['status']}[/] {f['task_id']}"
                  f" {escape(str(error.get('code')))}: {escape(str(error.get('message')))}",
                  highlight=False)
    if len(s["failures"]) > 5:
        out.print(f"  ... and {len(s['failures']) - 5} more (all of them with --json)")


@app.command()
def submit(
    name: str,
    file: Path = typer.Option(..., "--file", help="JSON Lines: one event a line; - for stdin."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Submitting again with the same key adds nothing."),
    version: str | None = typer.Option(None, "--version", help="A version number or latest."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until every task ended."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Submit many events as async tasks, show progress and a summary (exit 1 on failures)."""
    events = read_events(file)
    client = Client(url)
    run = _Run(len(events))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=as_json,
                        disable=not wait)
    bar = progress.add_task(f"{name}", total=len(events))

    def on_end() -> None:
        progress.update(bar, advance=1, description=f"{name} {run.counts_text()}")

    with progress:
        pollers = _Pollers(client, run, on_end, POLLERS if wait else 0)
        _submit_batches(client, name, events, idempotency_key, version, run, pollers.todo)
        pollers.finish()
    run.ended = time.monotonic()
    summary = run.summary(name)
    if not wait:
        summary = {k: summary[k] for k in ("function", "tasks", "created", "duplicates")}
        if as_json:
            print_json({**summary, "task_ids": run.task_ids})
        else:
            out.print(f"submitted {summary['tasks']} tasks to {name}"
                      f" ({summary['created']} new)")
        return
    print_json(summary) if as_json else _print_summary(summary)
    failed = run.total - run.counts["succeeded"]
    if failed:
        raise CliError(f"{failed} of {run.total} tasks did not succeed")
