"""Tenancy commands: tenant, key, login, whoami, audit."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.table import Table

from faasbox.cli.app import CliError, JsonOpt, UrlOpt, app, out, print_json, ts
from faasbox.client import Client, config_path, read_profiles

tenant_app = typer.Typer(no_args_is_help=True, help="Tenants: create, list, show, update, rm.")
key_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")


def _limits(pairs: list[str]) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--limit takes NAME=VALUE, got {pair!r}")
        limits[key] = None if value in ("", "default") else json.loads(value)
    return limits


def _tenant_table(tenants: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("tenant", no_wrap=True)
    table.add_column("weight", justify="right")
    table.add_column("limits (set)", overflow="fold")
    for t in tenants:
        limits = ", ".join(f"{k}={v}" for k, v in t["limits"].items()) or "defaults"
        table.add_row(t["name"], f"{t['weight']:g}", limits)
    return table


@tenant_app.command("create")
def tenant_create(
    name: str,
    weight: float = typer.Option(1.0, "--weight", help="Share of contended capacity."),
    limit: list[str] = typer.Option([], "--limit", help="NAME=VALUE, repeatable"
                                    " (e.g. max_concurrency=20)."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Create a tenant (admin)."""
    body = Client(url).json("POST", "/v1/tenants", json={
        "name": name, "weight": weight, "limits": _limits(limit)})
    if as_json:
        print_json(body)
    else:
        out.print(f"[green]created[/] tenant {body['name']} (weight {body['weight']:g})")


@tenant_app.command("ls")
def tenant_ls(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """List tenants (admin)."""
    body = Client(url).json("GET", "/v1/tenants")
    if as_json:
        print_json(body)
    else:
        out.print(_tenant_table(body["tenants"]))


@tenant_app.command("show")
def tenant_show(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """A tenant's weight, limits in force and usage now (admin)."""
    body = Client(url).json("GET", f"/v1/tenants/{name}")
    if as_json:
        print_json(body)
        return
    out.print(f"[bold]{body['name']}[/]  weight {body['weight']:g}")
    set_limits = body["limits"]
    for key, value in body["effective_limits"].items():
        mark = "" if key in set_limits else "  (default)"
        out.print(f"  {key:<24} {value}{mark}")
    usage = body.get("usage", {})
    out.print("  usage: " + ", ".join(f"{k} {v}" for k, v in usage.items()))


@tenant_app.command("update")
def tenant_update(
    name: str,
    weight: float | None = typer.Option(None, "--weight"),
    limit: list[str] = typer.Option([], "--limit", help="NAME=VALUE; VALUE 'default' unsets."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Change a tenant's weight or limits (admin)."""
    patch: dict[str, Any] = {}
    if weight is not None:
        patch["weight"] = weight
    if limit:
        patch["limits"] = _limits(limit)
    if not patch:
        raise CliError("give --weight or --limit")
    body = Client(url).json("PATCH", f"/v1/tenants/{name}", json=patch)
    if as_json:
        print_json(body)
    else:
        out.print(f"[green]updated[/] tenant {name}")


@tenant_app.command("rm")
def tenant_rm(name: str, url: str = UrlOpt) -> None:
    """Delete a tenant that has no functions left; its keys are revoked (admin)."""
    Client(url).request("DELETE", f"/v1/tenants/{name}")
    out.print(f"[green]deleted[/] tenant {name}")


@key_app.command("create")
def key_create(
    tenant: str,
    scope: str = typer.Option("developer", "--scope", help="admin, developer or invoke."),
    function: list[str] = typer.Option([], "--function", help="Invoke keys: a function it"
                                       " may call (repeatable; default all)."),
    description: str = typer.Option("", "--description"),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Create an API key; the key is printed once (admin)."""
    body = Client(url).json("POST", f"/v1/tenants/{tenant}/keys", json={
        "scope": scope, "functions": function or None, "description": description})
    if as_json:
        print_json(body)
        return
    out.print(f"[green]created[/] {body['scope']} key {body['key_id']} for tenant {tenant}."
              " It is shown only now:")
    print(body["key"])


@key_app.command("ls")
def key_ls(tenant: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """A tenant's live keys, without secrets (admin)."""
    body = Client(url).json("GET", f"/v1/tenants/{tenant}/keys")
    if as_json:
        print_json(body)
        return
    table = Table(box=None, header_style="bold")
    for col in ("key id", "scope", "functions", "created", "description"):
        table.add_column(col, no_wrap=col in ("key id", "scope"), overflow="fold")
    for k in body["keys"]:
        table.add_row(k["key_id"], k["scope"], ", ".join(k["functions"] or []) or "all",
                      ts(k["created_at"]), k["description"])
    out.print(table)


@key_app.command("revoke")
def key_revoke(tenant: str, key_id: str, url: str = UrlOpt) -> None:
    """Revoke a key: refused from the next request on (admin)."""
    Client(url).request("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}")
    out.print(f"[green]revoked[/] key {key_id}")


@app.command()
def login(
    url: str = UrlOpt,
    api_key: str | None = typer.Option(
        None, "--api-key", help="The key to keep for this URL (else read from stdin, or asked"
        " for without echo: a key on the command line shows in ps and the shell's history)."),
    profile: str = typer.Option("default", "--profile", help="Profile name."),
) -> None:
    """Check a key against a server and keep it in ~/.config/faasbox/config.toml."""
    if api_key is None:
        api_key = (typer.prompt("API key", hide_input=True) if sys.stdin.isatty()
                   else sys.stdin.readline()).strip()
        if not api_key:
            raise CliError("no API key given (--api-key, stdin, or the prompt)")
    me = Client(url, api_key=api_key).json("GET", "/v1/whoami")
    profiles = read_profiles()
    profiles[profile] = {"url": url.rstrip("/"), "api_key": api_key}
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, values in profiles.items():
        lines.append(f"[profiles.{json.dumps(name)}]")
        lines.extend(f"{k} = {json.dumps(str(v))}" for k, v in values.items())
        lines.append("")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    out.print(f"[green]logged in[/] to {url} as a {me['scope']} key of tenant {me['tenant']}"
              f" (profile {profile} in {path})")


@app.command()
def whoami(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """The tenant and scope of the key in use."""
    me = Client(url).json("GET", "/v1/whoami")
    if as_json:
        print_json(me)
    else:
        out.print(f"tenant {me['tenant']}, {me['scope']} key {me['key_id']}")


@app.command()
def audit(
    limit: int = typer.Option(50, "--limit", "-n"),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Control-plane changes, newest first (admin: every tenant; developer: its own)."""
    body = Client(url).json("GET", "/v1/audit", params={"limit": limit})
    if as_json:
        print_json(body)
        return
    table = Table(box=None, header_style="bold")
    table.add_column("time", no_wrap=True)
    table.add_column("tenant", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("target", overflow="fold")
    for row in body["audit"]:
        table.add_row(ts(row["at"]), row["tenant"], row["key_id"] or "-", row["action"],
                      row["target"])
    out.print(table)
