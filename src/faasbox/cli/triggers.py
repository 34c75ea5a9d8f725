"""Trigger commands: triggers, trigger add|enable|disable|rm (cron triggers, docs/cli-jobs.md)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from faasbox.cli.app import CliError, JsonOpt, UrlOpt, app, out, print_json
from faasbox.cli.jobs import _choice, parse_params
from faasbox.client import Client
from faasbox.clock import time_zone

MISFIRE = ("skip", "fire_once", "fire_all")
OVERLAP = ("allow", "skip", "queue", "replace")
WIDE_COLUMNS = 130  # the full triggers table fits from here


def _zone(tz: str) -> ZoneInfo | None:
    try:
        return time_zone(tz)
    except ValueError:
        return None  # local time


def fire_time(t: float, trigger: dict[str, Any]) -> str:
    """A fire time in its trigger's time zone, with the zone: ``02:00 CST`` today, ``Thu 02:00
    CST`` within the week, else ``2026-12-24 02:00 CST``; seconds for a cron with seconds."""
    zone = _zone(trigger["timezone"])
    when = datetime.fromtimestamp(t, zone) if zone else datetime.fromtimestamp(t).astimezone()
    days = (when.date() - datetime.now(when.tzinfo).date()).days
    clock = when.strftime("%H:%M:%S" if len(trigger["cron"].split()) == 6 else "%H:%M")
    day = "" if days == 0 else when.strftime("%a ") if 0 < days < 7 else when.strftime("%F ")
    return f"{day}{clock} {when.tzname()}"


def _next_fire(trigger: dict[str, Any]) -> str:
    t = trigger["next_fire_at"]
    if t is None:
        return "-"
    left = max(0.0, t - time.time())
    when = (f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min" if left < 5400
            else f"{left / 3600:.1f} h" if left < 172800 else f"{left / 86400:.1f} d")
    return f"{fire_time(t, trigger)} (in {when})"


@app.command("triggers")
def list_triggers(
    function: str | None = typer.Argument(None, help="Only this function's."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List cron triggers with their next fire (in the trigger's time zone)."""
    path = f"/v1/functions/{function}/triggers" if function else "/v1/triggers"
    body = Client(url).json("GET", path)
    if as_json:
        print_json(body)
        return
    # on a narrow terminal the policy columns go (`faasbox triggers --json` has everything)
    wide = out.width >= WIDE_COLUMNS
    columns = ["function", "name", "cron", "timezone", "enabled", "overlap", "misfire", "runs",
               "next fire", "fires", "skipped"]
    if not wide:
        columns = [c for c in columns
                   if c not in ("timezone", "overlap", "misfire", "runs", "fires", "skipped")]
    table = Table()
    for column in columns:
        table.add_column(column, no_wrap=column in ("function", "name"))
    for t in body["triggers"]:
        nxt = t["next_fire_at"] if t["enabled"] else None
        cells = {
            "function": escape(t["function"]), "name": escape(t["name"]),
            "cron": escape(t["cron"]) + ("" if wide or t["timezone"] == "UTC"
                                         else f" [dim]{t['timezone']}[/]"),
            "timezone": t["timezone"],
            "enabled": ("[green]yes[/]" if t["enabled"] else "[red]no[/]") if wide
            else ("[green]on[/]" if t["enabled"] else "[red]off[/]"),
            "overlap": t["overlap"], "misfire": t["misfire"],
            "runs": f"job of {_shard_count(t['job'])}" if t["job"] else "task",
            "next fire": "-" if nxt is None else _next_fire(t) if wide else fire_time(nxt, t),
            "fires": str(t["fires"]), "skipped": str(t["skipped"]),
        }
        table.add_row(*(cells[c] for c in columns))
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
        out.print("  next fires   " + ", ".join(fire_time(u, t) for u in t["upcoming"]),
                  highlight=False)


def _set_enabled(function: str, name: str, enabled: bool, url: str, as_json: bool) -> None:
    t = Client(url).json("PATCH", f"/v1/functions/{function}/triggers/{name}",
                         json={"enabled": enabled})
    if as_json:
        print_json(t)
        return
    state = f"enabled; next fire {_next_fire(t)}" if enabled else "disabled"
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
