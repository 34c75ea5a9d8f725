"""Function commands: server, deploy, invoke, ls, describe, logs, rm, doctor."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from faasbox.cli.app import (
    CliError,
    Col,
    JsonOpt,
    UrlOpt,
    app,
    err,
    fit_table,
    out,
    print_json,
    ts,
)
from faasbox.cli.tasks import invoke_async
from faasbox.client import ApiError, Client
from faasbox.codestore import zip_folder
from faasbox.errors import FaasboxError
from faasbox.stack import load_stack, load_workflows


@app.command()
def server(
    host: str = typer.Option("127.0.0.1", envvar="FAASBOX_HOST", help="Address to listen on."),
    port: int = typer.Option(8080, envvar="FAASBOX_PORT", help="Port to listen on."),
    data: Path = typer.Option(Path(".faasbox"), envvar="FAASBOX_DATA",
                              help="Data directory (database, code, scratch)."),
    deploy: Path | None = typer.Option(None, "--deploy", envvar="FAASBOX_DEPLOY",
                                       help="A stack file to deploy at start."),
    store_url: str = typer.Option(
        "", "--store-url", envvar="FAASBOX_STORE_URL", show_default=False,
        help="The store: sqlite:///PATH (a file that several servers on this machine may"
             " share; default: faasbox.db in the data directory, this server's alone) or"
             " postgresql://USER:PASSWORD@HOST:PORT/DB (several servers on one database)."),
    log_level: str = typer.Option("info", envvar="FAASBOX_LOG_LEVEL"),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", envvar="FAASBOX_INSECURE_NO_AUTH",
        help="Serve without API keys (loopback addresses only)."),
    workers: int = typer.Option(
        1, "--workers", envvar="FAASBOX_WORKERS",
        help="Server processes on this port (one per core uses the machine; they share one"
             " store, by default sqlite:///DATA/faasbox.db)."),
    listen_fd: int = typer.Option(-1, "--listen-fd", hidden=True),
    ready_fd: int = typer.Option(-1, "--ready-fd", hidden=True),
    shared_dir: Path | None = typer.Option(None, "--shared-dir", hidden=True),
) -> None:
    """Run the faasbox server (API, scheduler and local node): in this process, or in
    --workers processes on one port."""
    import logging

    import uvicorn

    from faasbox.api import create_app
    from faasbox.api.auth import is_loopback
    from faasbox.config import Settings
    from faasbox.platform import Platform

    if workers < 1:
        raise CliError(f"--workers must be at least 1, not {workers}")
    if insecure_no_auth and not is_loopback(host):
        raise CliError(f"--insecure-no-auth serves anyone who reaches the port: it is refused"
                       f" on {host}, which is not a loopback address")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if not is_loopback(host):
        logging.getLogger("faasbox").warning(
            "listening on %s, beyond this machine: every request needs an API key"
            " (bearer auth)%s", host,
            "" if os.environ.get("FAASBOX_SERVER_NAMES") else
            "; any Host name is accepted (set FAASBOX_SERVER_NAMES to restrict it)")
    elif insecure_no_auth:
        logging.getLogger("faasbox").warning("auth is OFF (--insecure-no-auth): any local"
                                             " process can deploy and invoke")
    settings = Settings.from_env(host=host, port=port, data=data, log_level=log_level,
                                 insecure_no_auth=insecure_no_auth or None,
                                 store_url=store_url or None,
                                 shared_dir=str(shared_dir) if shared_dir else None)
    if workers > 1:
        from faasbox.workers import Supervisor

        try:
            code = Supervisor(workers, host, port, data, settings.store_url, log_level,
                              insecure_no_auth, deploy, settings.node_memory_mb).run()
        except FaasboxError as exc:
            raise CliError(exc.message) from None
        raise typer.Exit(code)
    if listen_fd >= 0:
        from faasbox.workers import watch_supervisor

        watch_supervisor(int(os.environ.get("FAASBOX_SUPERVISOR_PID", "0")))
    platform = Platform(settings)
    api = create_app(platform, deploy, on_ready=_ready_signal(ready_fd))
    config = uvicorn.Config(api, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    # a worker of --workers accepts from its supervisor's socket
    sockets = None
    if listen_fd >= 0:
        os.set_inheritable(listen_fd, False)  # not for the instances it starts
        sockets = [socket.socket(fileno=listen_fd)]
    uvicorn.Server(config).run(sockets=sockets)


def _ready_signal(fd: int) -> Callable[[], None] | None:
    """A worker's word to its supervisor that it serves (a byte on a pipe)."""
    if fd < 0:
        return None
    os.set_inheritable(fd, False)  # not for the instances it starts

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")
            os.close(fd)

    return ready


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _code(folder: Path) -> str:
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder")
    return base64.b64encode(zip_folder(folder)).decode()


def _deploy_one(client: Client, name: str, code: str, spec: dict[str, Any],
                check: bool) -> dict[str, Any]:
    """PUT: the version gets ``spec`` whole (fields left out take their defaults)."""
    body = {**spec, "code_zip": code, "check": check}
    result: dict[str, Any] = client.json("PUT", f"/v1/functions/{name}", json=body)
    return result


def _patch_one(client: Client, name: str, code: str, changes: dict[str, Any],
               check: bool) -> dict[str, Any]:
    """PATCH: the new code with only ``changes`` made to the latest version's spec."""
    body = {**changes, "code_zip": code, "check": check}
    result: dict[str, Any] = client.json("PATCH", f"/v1/functions/{name}", json=body)
    return result


def _exists(client: Client, name: str) -> bool:
    try:
        client.json("GET", f"/v1/functions/{name}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _deployed_line(r: dict[str, Any]) -> str:
    if r.get("unchanged"):
        return f"{r['name']} unchanged (v{r['latest_version']})"
    return (f"[green]deployed[/] {r['name']} version {r['latest_version']}"
            f" (code {r['code_sha256'][:12]})")


@app.command()
def deploy(
    path: Path | None = typer.Argument(None, metavar="PATH", show_default=False,
                                       help="The function's folder."),
    file: Path | None = typer.Option(None, "-f", "--file", metavar="STACK",
                                     help="A faasbox.yaml stack file: replaces each"
                                     " function's whole spec."),
    name: str | None = typer.Option(None, "--name", metavar="NAME",
                                    help="Function name (default: the folder's)."),
    handler: str | None = typer.Option(None, "--handler", metavar="MODULE:FUNCTION",
                                       help="The handler (a new function's default:"
                                       " main:handler)."),
    memory: int | None = typer.Option(None, "--memory", metavar="MB",
                                      help="Memory in MB (128-10240)."),
    timeout: float | None = typer.Option(None, "--timeout", metavar="S",
                                         help="Timeout in seconds."),
    concurrency: int | None = typer.Option(None, "--concurrency", metavar="N",
                                           help="Invocations one instance serves at once."),
    min_instances: int | None = typer.Option(None, "--min", metavar="N",
                                             help="Instances kept warm."),
    max_instances: int | None = typer.Option(None, "--max", metavar="N",
                                             help="Most instances."),
    idle_ttl: float | None = typer.Option(None, "--idle-ttl", metavar="S",
                                          help="Seconds idle before stop."),
    env: list[str] = typer.Option([], "--env", metavar="KEY=VALUE",
                                  help="Repeatable; replaces the whole environment."),
    service_group: str | None = typer.Option(
        None, "--service-group", metavar="NAME", help="Run only in this service group of the"
        " tenant ('' leaves it)."),
    reset: bool = typer.Option(False, "--reset",
                               help="Replace the whole spec: what is not given takes its"
                               " default."),
    check: bool = typer.Option(True, "--check/--no-check", help="Load-check before deploying."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Deploy a function folder, or every function of a stack file.

    An existing function keeps the settings not given; --reset or -f replace the whole spec.

    Code and settings equal to the latest version's make no new version.
    """
    client = Client(url)
    results = []
    if file is not None:
        for item in load_stack(file):
            results.append(_deploy_one(client, item.name, _code(item.path), item.spec, check))
            for trigger, body in item.triggers.items():
                client.json("PUT", f"/v1/functions/{item.name}/triggers/{trigger}", json=body)
                if not as_json:
                    out.print(f"[green]trigger[/] {item.name}/{trigger}: {body.get('cron')}")
        _deploy_workflows(client, file, as_json)
    elif path is not None:
        given: dict[str, Any] = {"env": _parse_env(env)} if env else {}
        if service_group is not None:
            given["service_group"] = service_group or None
        for key, value in [("handler", handler), ("memory_mb", memory), ("timeout_s", timeout),
                           ("concurrency", concurrency), ("min_instances", min_instances),
                           ("max_instances", max_instances), ("idle_ttl_s", idle_ttl)]:
            if value is not None:
                given[key] = value
        fn, code = name or path.resolve().name, _code(path)
        if not reset and _exists(client, fn):
            results.append(_patch_one(client, fn, code, given, check))
        else:
            spec = {"handler": "main:handler", **given}
            results.append(_deploy_one(client, fn, code, spec, check))
    else:
        raise CliError("give a function folder or -f faasbox.yaml")
    if as_json:
        print_json({"functions": results})
        return
    for r in results:
        out.print(_deployed_line(r), highlight=False)


def _deploy_workflows(client: Client, file: Path, quiet: bool) -> None:
    """The workflow definitions of a stack file (its ``workflows:``)."""
    for flow, body in load_workflows(file).items():
        client.json("PUT", f"/v1/workflow-definitions/{flow}", json=body)
        if not quiet:
            out.print(f"[green]workflow[/] {flow}", highlight=False)


@app.command()
def invoke(
    name: str,
    data: str | None = typer.Option(None, "--data", "-d", help="The event as JSON."),
    file: Path | None = typer.Option(None, "--file", help="Read the event from a file."),
    version: str | None = typer.Option(None, "--version", help="A version number or latest."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show timing headers."),
    run_async: bool = typer.Option(False, "--async", help="Queue it as a task; print its id."),
    wait: bool = typer.Option(False, "--wait", help="With --async: wait, print the result."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key",
                                               help="With --async: at most one task per key."),
    url: str = UrlOpt,
) -> None:
    """Invoke a function and print its JSON result."""
    if data is not None and file is not None:
        raise CliError("give --data or --file, not both")
    if not run_async and (wait or idempotency_key is not None):
        raise CliError("--wait and --idempotency-key go with --async")
    payload = file.read_bytes() if file is not None else (data or "null").encode()
    params = {"version": version} if version else {}
    client = Client(url)
    if run_async:
        return invoke_async(client, name, payload, version, wait, idempotency_key)
    resp = client.request("POST", f"/v1/functions/{name}/invoke", content=payload,
                          params=params, headers={"content-type": "application/json"})
    if verbose:
        for h in ("request-id", "trace-id", "version", "cold-start", "duration-ms", "billed-ms"):
            value = resp.headers.get(f"x-faasbox-{h}")
            if value is not None:
                err.print(f"[dim]{h}: {value}[/]")
    sys.stdout.write(resp.text + "\n")


@app.command("ls")
def list_functions(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """List functions."""
    body = Client(url).json("GET", "/v1/functions")
    if as_json:
        print_json(body)
        return
    columns = [Col("name", name=True), Col("version"), Col("handler", drop=2),
               Col("memory"), Col("timeout", drop=1), Col("min/max"), Col("updated", drop=3)]
    rows = []
    for f in body["functions"]:
        s = f["spec"]
        rows.append([escape(f["name"]), str(f["latest_version"]), escape(s["handler"]),
                     f"{s['memory_mb']} MB", f"{s['timeout_s']:g} s",
                     f"{s['min_instances']}/{s['max_instances']}", ts(f["updated_at"])])
    out.print(fit_table(columns, rows))


@app.command()
def describe(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """Show a function's spec, versions and instances."""
    client = Client(url)
    body = client.json("GET", f"/v1/functions/{name}")
    body["versions"] = client.json("GET", f"/v1/functions/{name}/versions")["versions"]
    if as_json:
        print_json(body)
        return
    out.print(f"[bold]{escape(body['name'])}[/]  latest version {body['latest_version']}"
              f"  code {body['code_sha256'][:12]}", highlight=False)
    for key, value in body["spec"].items():
        out.print(f"  {key:<14} {escape(_spec_value(key, value))}", highlight=False)
    rows = [[i["id"], str(i["version"]), i["state"], f"{i['age_s']:.0f}", str(i["calls_served"]),
             "-" if i["rss_mb"] is None else str(i["rss_mb"])] for i in body["instances"]]
    if rows:
        out.print(fit_table([Col("instance", name=True), Col("version"), Col("state"),
                             Col("age s"), Col("calls"), Col("rss MB")], rows))
    else:
        out.print("  no instances running")
    out.print("versions: " + ", ".join(str(v["version"]) for v in body["versions"]))


UNITS = {"memory_mb": " MB", "timeout_s": " s", "idle_ttl_s": " s"}


def _spec_value(key: str, value: Any) -> str:
    """A spec field as a person reads it: ``256 MB``, ``A=1, B=2``, ``-`` for none."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, float):
        value = f"{value:g}"
    if key in UNITS:
        return f"{value}{UNITS[key]}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_window(w) if isinstance(w, dict) else str(w) for w in value)
    return str(value)


def _window(w: dict[str, Any]) -> str:
    """A provisioned window: ``10 instances 09:00-17:00 Europe/Berlin mon-fri``."""
    return (f"{w.get('instances')} instances {w.get('start')}-{w.get('end')}"
            f" {w.get('timezone')} {w.get('days')}")


def _print_record(r: dict[str, Any]) -> None:
    status = "[green]ok[/]" if r["status"] == "succeeded" else f"[red]{r['status']}[/]"
    cold = " cold" if r["cold_start"] else ""
    out.print(f"[dim]{ts(r['started_at'])}[/] {r['id'][:12]} v{r['version']} {status}"
              f" {r['duration_ms']:.1f} ms{cold}"
              + (f" [red]{r['error_code']}: {r['error_message']}[/]" if r["error_code"] else ""),
              highlight=False)
    if r["logs"]:
        out.print(r["logs"].rstrip("\n"), markup=False, highlight=False)


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new invocations."),
    limit: int = typer.Option(20, "--limit", "-n"),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print recent invocations of a function with their logs."""
    client = Client(url)
    client.json("GET", f"/v1/functions/{name}")
    recent = client.json("GET", "/v1/invocations",
                         params={"function": name, "limit": limit})["invocations"][::-1]
    for r in recent:
        print_json(r) if as_json else _print_record(r)
    since = recent[-1]["started_at"] if recent else time.time()
    while follow:
        time.sleep(1.0)
        new = client.json("GET", "/v1/invocations",
                          params={"function": name, "since": since})["invocations"]
        for r in new:
            print_json(r) if as_json else _print_record(r)
            since = r["started_at"]


@app.command()
def rm(name: str, url: str = UrlOpt) -> None:
    """Delete a function and stop its instances."""
    Client(url).request("DELETE", f"/v1/functions/{name}")
    out.print(f"deleted {name}")


@app.command()
def doctor(
    data: Path = typer.Option(Path(".faasbox"), envvar="FAASBOX_DATA"),
    sandbox: str = typer.Option("auto", envvar="FAASBOX_SANDBOX"),
    start_mode: str = typer.Option("auto", envvar="FAASBOX_START_MODE",
                                   help="auto, template, forkserver or spawn."),
    as_json: bool = JsonOpt,
) -> None:
    """Show which isolation features are active on this machine."""
    from faasbox.node.sandbox import detect

    data.mkdir(parents=True, exist_ok=True)
    feats = detect(data, sandbox, start_mode)
    rows = feats.report()
    if as_json:
        print_json({"sandbox": [{"feature": f, "active": a, "detail": d} for f, a, d in rows]})
        return
    table = Table("feature", "active", "detail")
    for feature, active, detail in rows:
        table.add_row(feature, "[green]yes[/]" if active else "[yellow]no[/]", detail)
    out.print(table)


@app.command()
def simulate(
    trace: Path | None = typer.Option(
        None, "--trace", help="An Azure Functions 2019 trace folder (default: the dev sample"
        " shipped with faasbox)."),
    policy: str = typer.Option("faasbox", "--policy", help="fixed, hybrid or faasbox."),
    seed: int = typer.Option(0, "--seed"),
    spread: str = typer.Option("uniform", "--spread", help="uniform or random."),
    limit: int | None = typer.Option(None, "--limit", help="Replay only the first N functions."),
) -> None:
    """Replay a trace through a keep-alive policy on a virtual clock; print JSON."""
    from faasbox.autoscaler import POLICIES
    from faasbox.simulator import DEV_TRACE
    from faasbox.simulator import simulate as run_simulation

    trace = DEV_TRACE if trace is None else trace
    if policy not in POLICIES:
        raise CliError(f"unknown policy {policy!r}; choose from {', '.join(sorted(POLICIES))}")
    if not (trace / "inv.csv").is_file():
        raise CliError(f"{trace} has no inv.csv: not a trace folder")
    print_json(run_simulation(trace, policy=policy, seed=seed, spread=spread, limit=limit))
