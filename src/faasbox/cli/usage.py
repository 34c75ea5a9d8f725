"""Metering commands: usage, cost, waste (docs/cost.md)."""

from __future__ import annotations

from typing import Any

import typer

from faasbox.cli.app import Col, JsonOpt, UrlOpt, app, fit_table, out, print_json, ts
from faasbox.client import Client

FromOpt = typer.Option(None, "--from", metavar="WHEN",
                       help="Epoch seconds or ISO 8601 (UTC); default: the start of this month.")
ToOpt = typer.Option(None, "--to", metavar="WHEN", help="Epoch seconds or ISO 8601; default: now.")


def money(value: float) -> str:
    if value >= 100:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"


def _period(start: str | None, end: str | None) -> dict[str, str]:
    return {k: v for k, v in (("from", start), ("to", end)) if v is not None}


def _gb_s(value: float) -> str:
    return f"{value:.3f}" if value < 1000 else f"{value:,.0f}"


@app.command("usage")
def usage(
    function: str | None = typer.Option(None, "--function", "-f", metavar="NAME",
                                        help="One function, bucket by bucket."),
    step: str = typer.Option("hour", "--step", metavar="hour|day", help="Bucket size."),
    start: str | None = FromOpt, end: str | None = ToOpt,
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Usage per function: calls, errors, cold starts, throttles, billed GB-s, idle memory."""
    params: dict[str, Any] = {**_period(start, end), "step": step}
    if function:
        params["function"] = function
    body = Client(url).json("GET", "/v1/usage", params=params)
    if as_json:
        print_json(body)
        return
    cols = [Col("function" if not function else "start", name=True),
            Col("calls", justify="right"), Col("errors", justify="right"),
            Col("cold", justify="right", drop=3), Col("throttled", justify="right", drop=4),
            Col("GB-s", justify="right"), Col("p99 ms", justify="right", drop=2),
            Col("idle GB-s", justify="right", drop=1), Col("CPU s", justify="right", drop=5)]

    def row(label: str, u: dict[str, Any]) -> list[str]:
        p99 = u["duration_ms_p99"]
        return [label, str(u["invocations"]), str(u["errors"]), str(u["cold_starts"]),
                str(u["throttles"]), _gb_s(u["gb_s"]), "-" if p99 is None else f"{p99:g}",
                _gb_s(u["instances"]["idle_gb_s"]), f"{u['instances']['cpu_s']:.2f}"]

    if function:
        buckets = body["functions"][0]["buckets"] if body["functions"] else []
        rows = [row(ts(b["start"])[:16 if step == "hour" else 10], b) for b in buckets]
    else:
        rows = [row(f["function"], f["total"]) for f in body["functions"]]
    if not rows:
        out.print(f"no usage from {ts(body['from'])} to {ts(body['to'])}")
        return
    out.print(f"usage of {body['tenant']} from {ts(body['from'])} to {ts(body['to'])}")
    out.print(fit_table(cols, rows, box=None, header_style="bold"))


@app.command("cost")
def cost(start: str | None = FromOpt, end: str | None = ToOpt,
         url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """The period's cost under pay-per-use, reserved and spot pricing, and the cheapest."""
    body = Client(url).json("GET", "/v1/cost", params=_period(start, end))
    if as_json:
        print_json(body)
        return
    cols = [Col("function", name=True), Col("GB-s", justify="right", drop=2),
            Col("requests", justify="right", drop=3), Col("pay-per-use", justify="right"),
            Col("reserved", justify="right"), Col("spot", justify="right"),
            Col("cheapest", name=True, drop=1)]

    def row(label: str, c: dict[str, Any]) -> list[str]:
        m = c["models"]
        return [label, _gb_s(c["gb_s"]), str(c["requests"]), money(m["pay_per_use"]["cost"]),
                money(m["reserved"]["cost"]), money(m["spot"]["cost"]),
                c["cheapest"].replace("_", "-")]

    rows = [row(f["function"], f) for f in body["functions"]]
    rows.append(row("[bold]all[/]", body["total"]))
    book = body["price_book"]
    out.print(f"cost of {body['tenant']} from {ts(body['from'])} to {ts(body['to'])}"
              f" ({book['currency']})")
    out.print(fit_table(cols, rows, box=None, header_style="bold"))
    reserved = body["total"]["models"]["reserved"]
    out.print(f"reserved: {reserved['reserved_gb']:g} GB at ${book['reserved_gb_month']:g}"
              f"/GB-month pays above {book['reserved_break_even_utilisation']:.0%}"
              " utilisation; spot: interruptible tasks at"
              f" {book['spot_discount']:.0%} off", highlight=False)


@app.command("waste")
def waste(start: str | None = FromOpt, end: str | None = ToOpt,
          url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """What the functions pay for and do not use, with recommendations and savings."""
    body = Client(url).json("GET", "/v1/waste", params=_period(start, end))
    if as_json:
        print_json(body)
        return
    if not body["findings"]:
        out.print("no waste found")
        return
    cols = [Col("function", name=True), Col("kind", name=True),
            Col("saving/month", justify="right"), Col("recommendation", wrap=40),
            Col("finding", wrap=30, drop=1)]
    rows = [[f["function"], f["kind"], money(f["saving_per_month"]), f["recommendation"],
             f["detail"]] for f in body["findings"]]
    out.print(f"waste of {body['tenant']} from {ts(body['from'])} to {ts(body['to'])}:"
              f" {money(body['saving_per_month'])}/month to save")
    out.print(fit_table(cols, rows, box=None, header_style="bold"))
