"""``faasbox top``: a live view of every function's instances, demand and autoscaler."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from faasbox.cli.app import Col, JsonOpt, UrlOpt, app, fit_table, out, print_json
from faasbox.client import ApiError, Client


def render(status: dict[str, Any], error: str | None = None) -> Group:
    """One frame: a header line and a table with a row per function (the columns that fit
    the terminal)."""
    nodes = status.get("nodes", [])
    reserved = sum(n["reserved_mb"] for n in nodes)
    total = sum(n["memory_mb"] for n in nodes)
    stamp = datetime.fromtimestamp(status.get("time", time.time())).strftime("%H:%M:%S")
    head = Text.assemble(
        ("faasbox top ", "bold"), f"{stamp}  ",
        f"memory {reserved}/{total} MB reserved  ",
        f"keep-alive policy {status.get('keepalive_policy', '?')}",
    )
    # on a narrow terminal the columns with the highest ``drop`` go first
    columns = [Col("function", name=True), Col("ver", drop=4), Col("starting", drop=3),
               Col("idle"), Col("busy"), Col("in-flight", drop=2), Col("waiting", drop=9),
               Col("queue", drop=5), Col("desired"), Col("actual"), Col("min/max", drop=8),
               Col("cold/min", drop=10), Col("mode", drop=6), Col("why", drop=7, wrap=12)]
    rows: list[list[str | Text]] = []
    for f in status.get("functions", []):
        inst = f["instances"]
        actual = inst["starting"] + inst["idle"] + inst["busy"]
        want = max(f["hold"], f["target"])  # the autoscaler's count or the warm floor
        actual_cell = Text(str(actual), style="yellow" if actual < want else "")
        mode = Text("panic", style="bold red") if f["panic"] else Text("stable", style="green")
        rows.append([
            Text(f["name"]), str(f["version"]), str(inst["starting"]), str(inst["idle"]),
            str(inst["busy"]), str(f["in_flight"]), str(f["waiting"]), str(f["queue_depth"]),
            str(want), actual_cell, f"{f['min_instances']}/{f['max_instances']}",
            str(f["cold_starts_per_min"]), mode, Text(f["reason"]),
        ])
    table = fit_table(columns, rows)
    parts: list[Any] = [head, table]
    if error:
        parts.append(Text(f"error: {error}", style="red"))
    return Group(*parts)


@app.command()
def top(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    interval: float = typer.Option(1.0, "--interval", "-n", min=0.2,
                                   help="Seconds between refreshes."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Live view of every function's instances, demand and autoscaler.

    Instances by state, calls in flight, queue depth, desired vs actual, cold starts a minute.

    On a narrow terminal the less important columns are left out (--json has everything).
    """
    client = Client(url, timeout=10.0)
    status = client.json("GET", "/v1/status")
    if as_json:
        print_json(status)
        return
    if once:
        out.print(render(status))
        return
    with Live(render(status), console=out, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    status, error = client.json("GET", "/v1/status"), None
                except ApiError as exc:
                    error = exc.message
                live.update(render(status, error), refresh=True)
        except KeyboardInterrupt:
            pass
