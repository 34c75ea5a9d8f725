"""The Typer app and what every command shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import typer
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from faasbox import __version__
from faasbox.client import DEFAULT_URL

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="faasbox: deploy Python functions and invoke them, on your own machines.")
out = Console()
err = Console(stderr=True)

UrlOpt = typer.Option(DEFAULT_URL, "--url", envvar="FAASBOX_URL", metavar="URL",
                      help="The server's address.")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def _version(value: bool) -> None:
    if value:
        out.print(f"faasbox {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="FAASBOX_API_KEY", show_envvar=True, metavar="KEY",
        help="The API key (else a `faasbox login` profile, else .faasbox/admin.key for a"
        " local server)."),
    tenant: str | None = typer.Option(
        None, "--tenant", envvar="FAASBOX_TENANT", show_envvar=True, metavar="NAME",
        help="Act on this tenant (admin keys)."),
) -> None:
    """faasbox: deploy Python functions and invoke them, on your own machines."""
    if api_key:
        os.environ["FAASBOX_API_KEY"] = api_key
    if tenant:
        os.environ["FAASBOX_TENANT"] = tenant


KINDS = {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "Path": "PATH"}


def _option_type(param: Any, ctx: Any) -> str | None:
    """What help shows after an option: its metavar, else the kind of value it takes
    (INTEGER, NUMBER, TEXT, PATH), and nothing for a flag."""
    if param.metavar is not None:
        return str(param.metavar)
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    try:
        bare = str(param.bare_type())
    except (AttributeError, AssertionError):
        return None
    inner = bare.removeprefix("list[").removesuffix("]")
    return KINDS.get(inner, inner.upper())


def _plain_help_types() -> None:
    """typer (0.2x) shows every parameter's Python type in help: ``--check <bool>``,
    ``--name <str>``, ``path <path>``. Show what ``_option_type`` says for options instead, and
    nothing more for arguments (their name says it)."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        setattr(option, "display_type_rich", _option_type)  # noqa: B010
    if argument is not None and hasattr(argument, "display_type_rich"):
        setattr(argument, "display_type_rich", lambda param, ctx: None)  # noqa: B010


_plain_help_types()


class CliError(Exception):
    """A mistake in how a command was called; printed as its message."""


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def short_ts(t: float | None) -> str:
    """A time for a table cell: ``14:22:54`` today, else ``12-01 09:30``."""
    if t is None:
        return "-"
    when, now = datetime.fromtimestamp(t), datetime.now()
    return when.strftime("%H:%M:%S" if when.date() == now.date() else "%m-%d %H:%M")


@dataclass(frozen=True)
class Col:
    """A column of a table that fits the terminal (see :func:`fit_table`)."""

    header: str
    drop: int = 0  # 0: always shown; on a narrow terminal the highest numbers go first
    name: bool = False  # a name or an id: never cut, never wrapped
    wrap: int | None = None  # wraps: counts as at most this wide when fitting
    justify: JustifyMethod = "left"


def _cell_len(cell: str | Text) -> int:
    text = cell if isinstance(cell, Text) else Text.from_markup(cell)
    return max((len(line) for line in text.plain.splitlines()), default=0)


def _natural(columns: Sequence[Col], rows: Sequence[Sequence[str | Text]]) -> list[int]:
    natural = []
    for i, col in enumerate(columns):
        size = max([len(col.header), *(_cell_len(row[i]) for row in rows)])
        natural.append(size if col.wrap is None else min(size, col.wrap))
    return natural


def fits(columns: Sequence[Col], rows: Sequence[Sequence[str | Text]],
         width: int | None = None) -> bool:
    """Whether a table of every column fits ``width`` (the terminal's)."""
    width = out.width if width is None else width
    return sum(_natural(columns, rows)) + 3 * len(columns) + 1 <= width


def fit_table(columns: Sequence[Col], rows: Sequence[Sequence[str | Text]],
              width: int | None = None, **options: Any) -> Table:
    """A table as wide as the terminal at most: columns that may go are left out, the least
    important first, until the rest fits; names and ids are shown whole (``--json`` has
    every field)."""
    width = out.width if width is None else width
    natural = _natural(columns, rows)
    shown = list(range(len(columns)))

    def too_wide() -> bool:
        return sum(natural[i] for i in shown) + 3 * len(shown) + 1 > width

    for i in sorted((i for i in shown if columns[i].drop), key=lambda i: -columns[i].drop):
        if not too_wide():
            break
        shown.remove(i)
    table = Table(**options)
    for i in shown:
        col = columns[i]
        if col.name:
            table.add_column(col.header, no_wrap=True, overflow="fold", min_width=natural[i],
                             justify=col.justify)
        else:
            table.add_column(col.header, overflow="fold", justify=col.justify)
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table
