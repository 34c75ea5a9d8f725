"""The Typer app and what every command shares."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

import orjson
import typer
from rich.console import Console

from faasbox.client import DEFAULT_URL

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="faasbox: deploy Python functions and invoke them, on your own machines.")
out = Console()
err = Console(stderr=True)

UrlOpt = typer.Option(DEFAULT_URL, "--url", envvar="FAASBOX_URL", help="The server's address.")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


class CliError(Exception):
    """A mistake in how a command was called; printed as its message."""


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@app.callback()
def _options(
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="FAASBOX_API_KEY", show_envvar=True,
        help="The API key (else a `faasbox login` profile, else .faasbox/admin.key for a"
        " local server)."),
    tenant: str | None = typer.Option(
        None, "--tenant", envvar="FAASBOX_TENANT", show_envvar=True,
        help="Act on this tenant (admin keys)."),
) -> None:
    """faasbox: deploy Python functions and invoke them, on your own machines."""
    if api_key:
        os.environ["FAASBOX_API_KEY"] = api_key
    if tenant:
        os.environ["FAASBOX_TENANT"] = tenant
