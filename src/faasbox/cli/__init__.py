"""The ``faasbox`` command. Talks to the server over HTTP; ``server`` and ``doctor`` run here."""

from __future__ import annotations

from faasbox import errors
from faasbox.cli import commands as _commands  # noqa: F401  (registers the commands)
from faasbox.cli import delivery as _delivery  # noqa: F401
from faasbox.cli import groups as _groups  # noqa: F401
from faasbox.cli import jobs as _jobs  # noqa: F401
from faasbox.cli import tasks as _tasks  # noqa: F401
from faasbox.cli import tenancy as _tenancy  # noqa: F401
from faasbox.cli import top as _top  # noqa: F401
from faasbox.cli import triggers as _triggers  # noqa: F401
from faasbox.cli import usage as _usage  # noqa: F401
from faasbox.cli.app import CliError, app, err
from faasbox.client import ApiError


def main() -> None:
    # an error is one line, whatever the terminal's width (it wraps it, not us)
    try:
        app()
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except (CliError, errors.FaasboxError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except OSError as exc:
        err.print(f"[red]error:[/] {exc.strerror or exc}: {exc.filename or ''}",
                  highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
