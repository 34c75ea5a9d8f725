"""Job, trace and cron trigger commands: job [run|status|cancel], jobs, trace, triggers, trigger.

``job run`` starts a sharded job (``POST /v1/jobs``) and long-polls it with a progress bar until
it ends; the other commands show what the server knows (``GET /v1/jobs``, ``/v1/traces``,
``/v1/triggers``) or change a trigger.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from faasbox.cli.app import CliError, JsonOpt, UrlOpt, app, err, out, print_json, ts
from faasbox.cli.tasks import MAX_WAIT_S, read_events
from faasbox.client import Client

JOB_STATUSES = ("running", "succeeded", "failed", "cancelled")
PROGRESS = ("held", "queued", "running", "retry_wait", "succeeded", "failed", "dead",
            "expired", "cancelled")
FAILED = ("failed", "dead", "expired")  # shard statuses that count as failed (not cancelled)
MISFIRE = ("skip", "fire_once", "fire_all")
OVERLAP = ("allow", "skip", "queue", "replace")
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
    table = Table(*PROGRESS, "done", title="shards", title_justify="left")
    p = job["progress"]
    table.add_row(*(str(p[s]) if p[s] else "[dim]0[/]" for s in PROGRESS),
                  f"{p['done']}/{job['shard_count']}")
    return table


def _shards_table(shards: list[dict[str, Any]]) -> Table:
    table = Table("shard", "task", "status", "attempts", "started", "took")
    table.add_column("error", overflow="fold", ratio=1)
    for s in shards:
        took = (s["finished_at"] - s["started_at"]
                if s["finished_at"] is not None and s["started_at"] is not None else None)
        table.add_row(str(s["index"]), s["task_id"], _status(s["status"]), str(s["attempts"]),
                      ts(s["started_at"]), _duration(took),
                      escape(_error_text(s)) if s.get("error") else "")
    return table


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
    job = Client(url).json("GET", f"/v1/jobs/{job_id}", params=params)
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
    table = Table()
    table.add_column("job", no_wrap=True, min_width=32)
    for column in ("function", "status", "shards", "created", "took", "trigger"):
        table.add_column(column)
    table.add_column("error", overflow="fold", ratio=1)
    for j in body["jobs"]:
        table.add_row(j["job_id"], escape(j["function"]), _status(j["status"]),
                      _shard_counts(j),
                      ts(j["created_at"]), _duration(j["duration_s"]),
                      escape(j["trigger"] or ""),
                      escape(_error_text(j)) if j.get("error") else "")
    out.print(table)
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
    table = Table("+s", "function", "source", "status", "cold", "ms", "invocation",
                  title=f"trace {trace_id}", title_justify="left")
    for inv in invocations:
        status = _status(inv["status"])
        if inv.get("error_code"):
            status += f" {escape(inv['error_code'])}"
        table.add_row(f"{inv['started_at'] - first:.3f}",
                      f"{escape(inv['function'])} v{inv['version']}",
                      escape(_source(inv, tasks.get(inv.get("task_id") or ""))), status,
                      "cold" if inv["cold_start"] else "", f"{inv['duration_ms']:.1f}",
                      inv["id"])
    out.print(table)
    waiting = [t for t in body["tasks"] if not t["invocation_ids"]]
    if waiting:
        out.print(f"  {len(waiting)} task(s) without an invocation yet: "
                  + ", ".join(f"{t['task_id']} {_status(t['status'])}" for t in waiting[:5]),
                  highlight=False)
    for job_id in body["jobs"]:
        out.print(f"  job  {job_id}  (faasbox job {job_id})", highlight=False)


# -- triggers ---------------------------------------------------------------------------------
def _next_fire(t: float | None) -> str:
    if t is None:
        return "-"
    left = max(0.0, t - time.time())
    when = (f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min" if left < 5400
            else f"{left / 3600:.1f} h")
    day, clock = ts(t).split(" ")
    return f"{clock if day == ts(time.time()).split(' ')[0] else ts(t)[:-3]} (in {when})"


@app.command("triggers")
def list_triggers(
    function: str | None = typer.Argument(None, help="Only this function's."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List cron triggers with their next fire (local time)."""
    path = f"/v1/functions/{function}/triggers" if function else "/v1/triggers"
    body = Client(url).json("GET", path)
    if as_json:
        print_json(body)
        return
    table = Table()
    for column in ("function", "name", "cron", "timezone", "enabled", "overlap", "misfire",
                   "runs", "next fire", "fires", "skipped"):
        # the identifying columns never shrink; the rest wrap on a narrow terminal
        table.add_column(column, no_wrap=column in ("function", "name", "cron", "next fire"))
    for t in body["triggers"]:
        enabled = "[green]yes[/]" if t["enabled"] else "[red]no[/]"
        runs = f"job of {_shard_count(t['job'])}" if t["job"] else "task"
        table.add_row(escape(t["function"]), escape(t["name"]), escape(t["cron"]),
                      t["timezone"], enabled, t["overlap"], t["misfire"], runs,
                      _next_fire(t["next_fire_at"] if t["enabled"] else None),
                      str(t["fires"]), str(t["skipped"]))
    out.print(table)


def _shard_count(job: dict[str, Any]) -> str:
    shards = job["shards"]
    n = len(shards) if isinstance(shards, list) else shards.get("count")
    return str(n)


trigger_app = typer.Typer(no_args_is_help=True,
                          help="Cron triggers: add, enable, disable, rm"
                          " (`faasbox triggers` lists them).")
app.add_typer(trigger_app, name="trigger")


def _job_template(shards: int | None, params: list[str], max_parallel: int | None,
                  on_failure: str, reduce: str | None) -> dict[str, Any] | None:
    if shards is None:
        if params or max_parallel is not None or reduce is not None:
            raise CliError("--job-param, --job-max-parallel and --job-reduce go with"
                           " --job-shards N")
        return None
    job: dict[str, Any] = {
        "shards": {"count": shards,
                   "params": parse_params(params, "--job-param") if params else None},
        "on_failure": _choice(on_failure, "--job-on-failure", ("stop", "continue"))}
    optional = {"max_parallel": max_parallel, "reduce": reduce}
    job.update({k: v for k, v in optional.items() if v is not None})
    return job


def _event(data: str | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON ({exc})") from None


@trigger_app.command("add")
def add_trigger(
    function: str,
    cron: str = typer.Option(..., "--cron",
                             help="5 fields, or 6 with seconds first (\"*/10 * * * * *\");"
                             " or @hourly, @daily ..."),
    name: str | None = typer.Option(None, "--name", help="Unique per function (default:"
                                    " generated)."),
    tz: str = typer.Option("UTC", "--tz", help="IANA timezone the expression is read in."),
    data: str | None = typer.Option(None, "--data", "-d",
                                    help="The event of every fire as JSON (default: a"
                                    " description of the fire)."),
    misfire: str = typer.Option("fire_once", "--misfire", help=f"{', '.join(MISFIRE)}."),
    overlap: str = typer.Option("allow", "--overlap", help=f"{', '.join(OVERLAP)}."),
    max_catchup: int | None = typer.Option(None, "--max-catchup", min=1, max=1000,
                                           help="Most missed fires run with fire_all."),
    disabled: bool = typer.Option(False, "--disabled", help="Add it disabled."),
    job_shards: int | None = typer.Option(None, "--job-shards", min=1,
                                          help="Each fire starts a job of N shards."),
    job_param: list[str] = typer.Option([], "--job-param",
                                        help="KEY=VALUE of the job's shard event."),
    job_max_parallel: int | None = typer.Option(None, "--job-max-parallel", min=1),
    job_on_failure: str = typer.Option("stop", "--job-on-failure", help="stop or continue."),
    job_reduce: str | None = typer.Option(None, "--job-reduce",
                                          help="A function run on the job's results."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Add a cron trigger: it runs FUNCTION (a task, or a job with --job-shards) on a schedule."""
    body: dict[str, Any] = {
        "cron": cron, "timezone": tz, "enabled": not disabled,
        "misfire": _choice(misfire, "--misfire", MISFIRE),
        "overlap": _choice(overlap, "--overlap", OVERLAP)}
    optional = {"name": name, "event": _event(data), "max_catchup": max_catchup,
                "job": _job_template(job_shards, job_param, job_max_parallel, job_on_failure,
                                     job_reduce)}
    body.update({k: v for k, v in optional.items() if v is not None})
    t = Client(url).json("POST", f"/v1/functions/{function}/triggers", json=body)
    if as_json:
        print_json(t)
        return
    out.print(f"added trigger {escape(t['name'])} to {escape(t['function'])}:"
              f" {escape(t['cron'])} ({t['timezone']})"
              + ("" if t["enabled"] else ", disabled"), highlight=False)
    if t["upcoming"]:
        out.print("  next fires   " + ", ".join(ts(u) for u in t["upcoming"]), highlight=False)


def _set_enabled(function: str, name: str, enabled: bool, url: str, as_json: bool) -> None:
    t = Client(url).json("PATCH", f"/v1/functions/{function}/triggers/{name}",
                         json={"enabled": enabled})
    if as_json:
        print_json(t)
        return
    state = f"enabled; next fire {_next_fire(t['next_fire_at'])}" if enabled else "disabled"
    out.print(f"trigger {escape(name)} of {escape(function)} {state}", highlight=False)


@trigger_app.command("enable")
def enable_trigger(function: str, name: str, url: str = UrlOpt, as_json: bool = JsonOpt,
                   ) -> None:
    """Enable a trigger: it fires again from the next scheduled time."""
    _set_enabled(function, name, True, url, as_json)


@trigger_app.command("disable")
def disable_trigger(function: str, name: str, url: str = UrlOpt, as_json: bool = JsonOpt,
                    ) -> None:
    """Disable a trigger: it keeps its settings and counts but does not fire."""
    _set_enabled(function, name, False, url, as_json)


@trigger_app.command("rm")
def remove_trigger(function: str, name: str, url: str = UrlOpt) -> None:
    """Delete a trigger."""
    Client(url).request("DELETE", f"/v1/functions/{function}/triggers/{name}")
    out.print(f"deleted trigger {escape(name)} of {escape(function)}", highlight=False)
