"""Service group commands: group create|ls|show|update|rm (docs/tenancy.md, "Service groups")."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from faasbox.cli.app import CliError, Col, JsonOpt, UrlOpt, app, fit_table, out, print_json, ts
from faasbox.cli.triggers import fire_time
from faasbox.client import Client

group_app = typer.Typer(no_args_is_help=True, help="Service groups: dedicated capacity of a"
                        " tenant (create, ls, show, update, rm).")
app.add_typer(group_app, name="group")

WindowOpt = typer.Option([], "--window", metavar="'CRON,SECONDS,N'",
                         help="A window of N extra warm instances for SECONDS from each time"
                         " CRON fires (repeatable), e.g. '0 2 * * *,3600,4'.")


def parse_windows(windows: list[str], timezone: str) -> list[dict[str, Any]]:
    """``CRON,SECONDS,N`` options as schedule windows."""
    out_ = []
    for text in windows:
        parts = text.rsplit(",", 2)
        if len(parts) != 3:
            raise CliError(f"--window takes 'CRON,SECONDS,N' (e.g. '0 2 * * *,3600,4'),"
                           f" not {text!r}")
        cron, seconds, count = (p.strip() for p in parts)
        try:
            out_.append({"cron": cron, "duration_s": float(seconds), "instances": int(count),
                         "timezone": timezone})
        except ValueError:
            raise CliError(f"--window {text!r}: SECONDS is a number and N a whole"
                           " number") from None
    return out_


def _cpus(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


@group_app.command("create")
def group_create(
    name: str,
    memory: int = typer.Option(..., "--memory", metavar="MB", help="Memory carved out of the"
                               " node for the group."),
    cpus: float | None = typer.Option(None, "--cpus", metavar="N", help="CPU limit in cores"
                                      " (default: none)."),
    min_instances: int = typer.Option(0, "--min", metavar="N", help="Instances kept warm."),
    max_instances: int = typer.Option(10, "--max", metavar="N", help="Most instances of all"
                                      " its functions."),
    window: list[str] = WindowOpt,
    timezone: str = typer.Option("UTC", "--timezone", metavar="ZONE",
                                 help="Time zone of the windows' cron expressions."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Create a service group (admin; --tenant names its tenant)."""
    body = Client(url).json("POST", "/v1/service-groups", json={
        "name": name, "memory_mb": memory, "cpus": cpus, "min_instances": min_instances,
        "max_instances": max_instances, "schedule": parse_windows(window, timezone)})
    if as_json:
        print_json(body)
        return
    out.print(f"[green]created[/] service group {escape(body['name'])} of tenant"
              f" {escape(body['tenant'])}: {body['memory_mb']} MB, cpus {_cpus(body['cpus'])},"
              f" {body['min_instances']}-{body['max_instances']} instances", highlight=False)
    out.print(f"  isolation: {escape(body['isolation'])}", highlight=False)


@group_app.command("ls")
def group_ls(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """List the tenant's service groups."""
    body = Client(url).json("GET", "/v1/service-groups")
    if as_json:
        print_json(body)
        return
    rows = []
    for g in body["service_groups"]:
        usage = g["usage"]
        rows.append([escape(g["name"]), str(g["memory_mb"]), _cpus(g["cpus"]),
                     f"{g['min_instances']}-{g['max_instances']}",
                     f"{usage['instances']} ({usage['busy']} busy)",
                     f"{usage['memory_mb']}/{g['memory_mb']}", str(len(g["schedule"])),
                     escape(g["isolation"])])
    if not rows:
        out.print("no service groups")
        return
    out.print(fit_table([Col("group", name=True), Col("MB", justify="right"),
                         Col("cpus", justify="right"), Col("instances"), Col("running"),
                         Col("MB used", drop=2), Col("windows", drop=3),
                         Col("isolation", drop=1, wrap=40)], rows, box=None,
                        header_style="bold"))


@group_app.command("show")
def group_show(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """A service group: its functions, usage, warm floor, upcoming fires and isolation."""
    body = Client(url).json("GET", f"/v1/service-groups/{name}")
    if as_json:
        print_json(body)
        return
    usage = body["usage"]
    out.print(f"[bold]{escape(body['name'])}[/]  tenant {escape(body['tenant'])}"
              f"  created {ts(body['created_at'])}", highlight=False)
    lines = [
        ("memory", f"{body['memory_mb']} MB ({usage['memory_mb']} MB used)"),
        ("cpus", _cpus(body["cpus"])),
        ("instances", f"{usage['instances']} of {body['max_instances']} ({usage['busy']} busy,"
                      f" {usage['idle']} idle, {usage['starting']} starting)"),
        ("warm floor", f"{body['warm_floor']['now']} now (min_instances"
                       f" {body['min_instances']}; with open windows"
                       f" {body['warm_floor']['base']})"),
        ("functions", ", ".join(body["functions"]) or "-"),
        ("isolation", body["isolation"]),
    ]
    if body.get("problem"):
        lines.append(("problem", body["problem"]))
    for key, value in lines:
        out.print(f"  {key:<11} {escape(value)}", highlight=False)
    for spec, state in zip(body["schedule"], body["windows"], strict=False):
        zone = {"timezone": spec["timezone"], "cron": spec["cron"]}
        when = "open now" if state["open"] else f"opens {fire_time(state['next_open'], zone)}"
        out.print(f"  window      {escape(spec['cron'])} ({spec['timezone']}): +"
                  f"{spec['instances']} for {spec['duration_s']:g} s, {when}", highlight=False)
    for fire in body["next_fires"][:5]:
        out.print(f"  fire        {escape(fire['function'])} at {ts(fire['at'])}:"
                  f" {fire['instances']} warm before", highlight=False)


@group_app.command("update")
def group_update(
    name: str,
    memory: int | None = typer.Option(None, "--memory", metavar="MB"),
    cpus: float | None = typer.Option(None, "--cpus", metavar="N", help="0 removes the limit."),
    min_instances: int | None = typer.Option(None, "--min", metavar="N"),
    max_instances: int | None = typer.Option(None, "--max", metavar="N"),
    window: list[str] = WindowOpt,
    no_windows: bool = typer.Option(False, "--no-windows", help="Remove every window."),
    timezone: str = typer.Option("UTC", "--timezone", metavar="ZONE"),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Change a service group (admin); --window replaces all its windows."""
    patch: dict[str, Any] = {}
    for key, value in [("memory_mb", memory), ("min_instances", min_instances),
                       ("max_instances", max_instances)]:
        if value is not None:
            patch[key] = value
    if cpus is not None:
        patch["cpus"] = cpus or None
    if window or no_windows:
        patch["schedule"] = parse_windows(window, timezone)
    if not patch:
        raise CliError("give --memory, --cpus, --min, --max, --window or --no-windows")
    body = Client(url).json("PATCH", f"/v1/service-groups/{name}", json=patch)
    if as_json:
        print_json(body)
    else:
        out.print(f"[green]updated[/] service group {escape(name)}", highlight=False)


@group_app.command("rm")
def group_rm(name: str, url: str = UrlOpt) -> None:
    """Delete a service group that no function uses (admin); its memory goes back."""
    Client(url).request("DELETE", f"/v1/service-groups/{name}")
    out.print(f"[green]deleted[/] service group {escape(name)}", highlight=False)
