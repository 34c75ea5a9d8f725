"""Job, trace and cron trigger commands: job [run|status|cancel], jobs, trace, triggers, trigger.

``job run`` starts a sharded job (``POST /v1/jobs``) and long-polls it with a progress bar until
it ends; the other commands show what the server knows (``GET /v1/jobs``, ``/v1/traces``,
``/v1/triggers``) or change a trigger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from faasbox.cli.app import (
    CliError,
    Col,
    JsonOpt,
    UrlOpt,
    app,
    err,
    fit_table,
    fits,
    out,
    print_json,
    short_ts,
    ts,
)
from faasbox.cli.tasks import MAX_WAIT_S, read_events
from faasbox.client import Client

JOB_STATUSES = ("running", "succeeded", "failed", "cancelled")
PROGRESS = ("held", "queued", "running", "retry_wait", "succeeded", "failed", "dead",
            "expired", "cancelled")
FAILED = ("failed", "dead", "expired")  # shard statuses that count as failed (not cancelled)
REFRESH_S = 0.5  # long-poll period while a progress bar is shown


# -- helpers ----------------------------------------------------------------------------------
def parse_params(pairs: list[str], flag: str) -> dict[str, Any]:
    """``k=v`` pairs; a value is JSON when it parses (``n=3``, ``tags=["a"]``), else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            params[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            params[key] = value
    return params


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CliError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _status(status: str) -> str:
    color = {"succeeded": "green", "running": "cyan", "queued": "blue", "held": "blue",
             "retry_wait": "yellow"}.get(status, "red")
    return f"[{color}]{status}[/]"


def _error_text(view: dict[str, Any]) -> str:
    error = view.get("error") or {}
    return f"{error.get('code', view['status'])}: {error.get('message') or ''}".rstrip(": ")


def _failed(job: dict[str, Any]) -> int:
    return sum(job["progress"][s] for s in FAILED)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def _dumps(value: Any) -> str:
    return escape(orjson.dumps(value).decode())


def _rows(rows: list[tuple[str, Any]]) -> None:
    for label, value in rows:
        out.print(f"  {label:<12} {value}", highlight=False)


# -- job run ----------------------------------------------------------------------------------
def _shards(count: int | None, file: Path | None, params: list[str]) -> Any:
    if (count is None) == (file is None):
        raise CliError("give either --shards N or --file shards.jsonl")
    if file is not None:
        if params:
            raise CliError("--param goes with --shards N (with --file each line is an event)")
        return [orjson.Fragment(e) for e in read_events(file)]
    return {"count": count, "params": parse_params(params, "--param") if params else None}


def wait_for_job(client: Client, job_id: str, progress: Progress | None = None,
                 ) -> dict[str, Any]:
    """Long-poll the job until it ended (without its results), updating ``progress``."""
    bar = None if progress is None else progress.add_task(job_id[:8], total=None, state="")
    wait = MAX_WAIT_S if progress is None else REFRESH_S
    while True:
        job: dict[str, Any] = client.json("GET", f"/v1/jobs/{job_id}",
                                          params={"wait": wait, "results": "false"})
        if progress is not None and bar is not None:
            p = job["progress"]
            state = f"running {p['running']}  failed {_failed(job)}"
            if p["done"] == job["shard_count"] and job["status"] == "running" and job["reduce"]:
                state = f"reducing with {job['reduce']}"
            progress.update(bar, description=job["function"], total=job["shard_count"],
                            completed=p["done"], state=state)
        if job["status"] != "running":
            return job


def _print_run_summary(job: dict[str, Any]) -> None:
    p = job["progress"]
    out.print(f"job {job['job_id']}  {escape(job['function'])}  {_status(job['status'])}"
              f" in {_duration(job['duration_s'])}", highlight=False)
    counts = f"{p['succeeded']} succeeded, {_failed(job)} failed"
    if p["cancelled"]:
        counts += f", {p['cancelled']} cancelled"
    if p["done"] < job["shard_count"]:
        counts += f", {job['shard_count'] - p['done']} not run"
    rows: list[tuple[str, Any]] = [("shards", f"{counts} (of {job['shard_count']})")]
    if job["reduce"]:
        rows.append(("reduce", escape(job["reduce"])))
    if "result" in job:
        rows.append(("result", _dumps(job["result"])))
    if job.get("error"):
        rows.append(("error", f"[red]{escape(_error_text(job))}[/]"))
    rows.append(("trace", job["trace_id"]))
    _rows(rows)


def _job_body(name: str, shards: Any, max_parallel: int | None, on_failure: str,
              retries: int | None, reduce: str | None, version: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"function": name, "shards": shards,
                            "on_failure": _choice(on_failure, "--on-failure",
                                                  ("stop", "continue"))}
    optional = {"version": version, "max_parallel": max_parallel, "reduce": reduce,
                "retry": None if retries is None else {"max_attempts": retries + 1}}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


class _StatusByDefault(TyperGroup):
    """``faasbox job ID`` means ``faasbox job status ID``; subcommands keep their names."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["status", *args]
        return super().parse_args(ctx, args)


job_app = typer.Typer(cls=_StatusByDefault, no_args_is_help=True,
                      help="Sharded jobs: `faasbox job run NAME --shards N`, `faasbox job ID`,"
                      " `faasbox job cancel ID`.")
app.add_typer(job_app, name="job")


@job_app.command("run")
def run_job(
    name: str,
    shards: int | None = typer.Option(None, "--shards", min=1,
                                      help="N shards that all get the --param values."),
    file: Path | None = typer.Option(None, "--file",
                                     help="JSON Lines: one shard event a line; - for stdin."),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="KEY=VALUE of the shards' event (JSON or a string)."),
    max_parallel: int | None = typer.Option(None, "--max-parallel", min=1,
                                            help="Most shards queued or running at once."),
    on_failure: str = typer.Option("stop", "--on-failure",
                                   help="stop: a failed shard fails the job at once;"
                                   " continue: run every shard first."),
    retries: int | None = typer.Option(None, "--retries", min=0, max=99,
                                       help="Retries of a failed shard (default: 2)."),
    reduce: str | None = typer.Option(None, "--reduce",
                                      help="A function run once on every shard's result."),
    version: int | None = typer.Option(None, "--version", min=1, help="Pin a version."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Running again with the same key starts nothing new."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job ended."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a sharded job, show its progress and a summary (exit 1 unless it succeeded)."""
    body = _job_body(name, _shards(shards, file, param), max_parallel, on_failure, retries,
                     reduce, version)
    headers = {"content-type": "application/json"}
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    client = Client(url)
    started = client.json("POST", "/v1/jobs", content=orjson.dumps(body), headers=headers)
    if not started["created"]:
        err.print(f"[dim]idempotency key {escape(idempotency_key or '')!r} was used before:"
                  " this is the job it started[/]", highlight=False)
    if not wait:
        if as_json:
            print_json(started)
        else:
            out.print(f"job {started['job_id']} started: {started['shard_count']} shards of"
                      f" {escape(name)} (trace {started['trace_id']})", highlight=False)
        return
    job = _wait_with_progress(client, started["job_id"], as_json)
    if as_json:
        print_json(client.json("GET", f"/v1/jobs/{job['job_id']}"))
    else:
        _print_run_summary(job)
    if job["status"] != "succeeded":
        raise CliError(f"job {job['job_id']} {job['status']}: {_error_text(job)}")


def _wait_with_progress(client: Client, job_id: str, as_json: bool) -> dict[str, Any]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=err,
                        transient=as_json, disable=as_json)
    try:
        with progress:
            return wait_for_job(client, job_id, None if as_json else progress)
    except KeyboardInterrupt:
        raise CliError(f"stopped waiting; job {job_id} keeps running (`faasbox job {job_id}`"
                       f" shows it, `faasbox job cancel {job_id}` stops it)") from None


# -- job status / cancel ----------------------------------------------------------------------
def _progress_table(job: dict[str, Any]) -> Table:
    p = job["progress"]
    statuses = list(PROGRESS)
    row = [str(p[s]) if p[s] else "[dim]0[/]" for s in PROGRESS]
    columns = [Col(s) for s in statuses]
    if not fits([*columns, Col("done")], [[*row, "done"]]):  # narrow: the statuses shards have
        statuses = [s for s in PROGRESS if p[s]]
        row, columns = [str(p[s]) for s in statuses], [Col(s) for s in statuses]
    return fit_table([*columns, Col("done")], [[*row, f"{p['done']}/{job['shard_count']}"]],
                     title="shards", title_justify="left")


def _shards_table(shards: list[dict[str, Any]]) -> Table:
    columns = [Col("shard"), Col("task", name=True), Col("status"), Col("attempts", drop=2),
               Col("started", drop=4), Col("took", drop=3), Col("error", drop=1, wrap=16)]
    rows = []
    for s in shards:
        took = (s["finished_at"] - s["started_at"]
                if s["finished_at"] is not None and s["started_at"] is not None else None)
        rows.append([str(s["index"]), s["task_id"], _status(s["status"]), str(s["attempts"]),
                     short_ts(s["started_at"]), _duration(took),
                     escape(_error_text(s)) if s.get("error") else ""])
    return fit_table(columns, rows)


def print_job(job: dict[str, Any]) -> None:
    version = f"v{job['version']}" if job["version"] is not None else "(latest version)"
    out.print(f"[bold]job {job['job_id']}[/]  {escape(job['function'])} {version}"
              f"  {_status(job['status'])}", highlight=False)
    rows: list[tuple[str, Any]] = [
        ("created", ts(job["created_at"])), ("started", ts(job.get("started_at"))),
        ("finished", ts(job["finished_at"])), ("duration", _duration(job["duration_s"])),
        ("parallel", job["max_parallel"] or "all shards"), ("on failure", job["on_failure"]),
        ("reduce", escape(job["reduce"] or "-")), ("trigger", escape(job["trigger"] or "-")),
        ("trace", job["trace_id"] or "-")]
    if "result" in job:
        rows.append(("result", _dumps(job["result"])))
    if job.get("error"):
        rows.append(("error", f"[red]{escape(_error_text(job))}[/]"))
    _rows(rows)
    out.print(_progress_table(job))
    for i, result in enumerate(job.get("results", [])):
        out.print(f"  [dim]{i:>5}[/] {_dumps(result)}", highlight=False)
    if "shards" in job:
        out.print(_shards_table(job["shards"]))


@job_app.command("status")
def job_status(
    job_id: str = typer.Argument(..., metavar="ID"),
    results: bool = typer.Option(False, "--results", help="Print every shard's result."),
    shards: bool = typer.Option(False, "--shards", help="A table of the shards."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a job: status, times, shard progress, result or error (the default)."""
    params = {"results": str(results).lower(), "shards": str(shards).lower()}
    client = Client(url)
    job = client.json("GET", f"/v1/jobs/{job_id}", params=params)
    while job.get("results_next") is not None:  # the server gives results a page at a time
        page = client.json("GET", f"/v1/jobs/{job_id}", params={
            "results": "true", "results_from": str(job["results_next"])})
        job["results"].extend(page["results"])
        job["results_next"] = page["results_next"]
    print_json(job) if as_json else print_job(job)


@job_app.command("cancel")
def cancel_job(
    job_id: str = typer.Argument(..., metavar="ID"),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Cancel a job: its queued shards at once, its running ones stopped."""
    job = Client(url).json("POST", f"/v1/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
        return
    note = "" if job["status"] == "cancelled" else " (it had already ended)"
    out.print(f"job {job['job_id']} {_status(job['status'])}{note}", highlight=False)


# -- jobs -------------------------------------------------------------------------------------
@app.command("jobs")
def list_jobs(
    function: str | None = typer.Option(None, "--function", "-f", help="Only this function's."),
    status: str | None = typer.Option(None, "--status", "-s",
                                      help=f"Only this status: {', '.join(JOB_STATUSES)}."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("function", function), ("status", status)) if v})
    body = Client(url).json("GET", "/v1/jobs", params=params)
    if as_json:
        print_json(body)
        return
    columns = [Col("job", name=True), Col("function", name=True), Col("status"),
               Col("shards"), Col("created", drop=5), Col("took", drop=4),
               Col("trigger", name=True, drop=3), Col("error", drop=2, wrap=16)]
    rows = [[j["job_id"], escape(j["function"]), _status(j["status"]), _shard_counts(j),
             short_ts(j["created_at"]), _duration(j["duration_s"]), escape(j["trigger"] or ""),
             escape(_error_text(j)) if j.get("error") else ""] for j in body["jobs"]]
    out.print(fit_table(columns, rows))
    if "next_cursor" in body:
        err.print(f"[dim]showing the newest {limit}; raise --limit for more[/]")


def _shard_counts(job: dict[str, Any]) -> str:
    text = f"{job['progress']['done']}/{job['shard_count']}"
    if _failed(job):
        text += f" [red]{_failed(job)} failed[/]"
    if job["progress"]["cancelled"]:
        text += f" {job['progress']['cancelled']} cancelled"
    return text


# -- trace ------------------------------------------------------------------------------------
def _source(inv: dict[str, Any], task: dict[str, Any] | None) -> str:
    if task is None:
        return str(inv["trigger"])
    text = str(task["source"])
    if task.get("shard", {}).get("index") is not None:
        text += f" {task['shard']['index']}/{task['shard']['count']}"
    if task.get("trigger"):
        text += f" ({task['trigger']})"
    return text


@app.command()
def trace(
    trace_id: str = typer.Argument(..., metavar="ID"),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show everything one trace caused: its invocations in order, tasks and jobs."""
    body = Client(url).json("GET", f"/v1/traces/{trace_id}")
    if as_json:
        print_json(body)
        return
    tasks = {t["task_id"]: t for t in body["tasks"]}
    invocations = body["invocations"]
    first = invocations[0]["started_at"] if invocations else 0.0
    columns = [Col("+s", justify="right"), Col("function", name=True),
               Col("source", drop=2, wrap=12), Col("status"), Col("cold", drop=4),
               Col("ms", drop=3, justify="right"), Col("invocation", name=True, drop=5)]
    rows = []
    for inv in invocations:
        status = _status(inv["status"])
        if inv.get("error_code"):
            status += f" {escape(inv['error_code'])}"
        rows.append([f"{inv['started_at'] - first:.3f}",
                     f"{escape(inv['function'])} v{inv['version']}",
                     escape(_source(inv, tasks.get(inv.get("task_id") or ""))), status,
                     "cold" if inv["cold_start"] else "", f"{inv['duration_ms']:.1f}",
                     inv["id"]])
    out.print(fit_table(columns, rows, title=f"trace {trace_id}", title_justify="left"))
    waiting = [t for t in body["tasks"] if not t["invocation_ids"]]
    if waiting:
        out.print(f"  {len(waiting)} task(s) without an invocation yet: "
                  + ", ".join(f"{t['task_id']} {_status(t['status'])}" for t in waiting[:5]),
                  highlight=False)
    for job_id in body["jobs"]:
        out.print(f"  job  {job_id}", highlight=False)
    if body["jobs"]:
        out.print("  [dim](`faasbox job ID` shows a job)[/]", highlight=False)


# -- triggers ---------------------------------------------------------------------------------
