"""Delivery commands (docs/delivery.md, docs/tasks.md): task redrive|purge|deliveries,
queue show|pause|resume, topic ..., workflow ..., webhook-secret."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.markup import escape

from faasbox.cli.app import CliError, JsonOpt, UrlOpt, app, out, print_json, ts
from faasbox.cli.tasks import _status, task_app
from faasbox.client import Client


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None


def _selection(function: str | None, status: list[str], since: float | None,
               ids: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if function is not None:
        body["function"] = function
    if status:
        body["status"] = status
    if since is not None:
        body["since"] = since
    if ids:
        body["ids"] = ids
    return body


# -- task redrive / purge / deliveries ------------------------------------------------------
@task_app.command("redrive")
def redrive(
    ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Only these tasks."),
    function: str | None = typer.Option(None, "--function", "-f", help="Only this function's."),
    status: list[str] = typer.Option([], "--status", "-s",
                                     help="dead (the default), failed or expired."),
    since: float | None = typer.Option(None, "--since", metavar="SECONDS",
                                       help="Only tasks that ended in the last SECONDS."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Submit dead-lettered tasks again: fresh attempts, linked to the originals."""
    body = _selection(function, status, None if since is None else time.time() - since,
                      ids or [])
    done = Client(url).json("POST", "/v1/tasks:redrive", json=body)
    if as_json:
        print_json(done)
        return
    out.print(f"redrove {done['redriven']} tasks", highlight=False)
    for t in done["tasks"][:20]:
        out.print(f"  {t['redrive_of']} -> {t['task_id']}  {escape(t['function'])}",
                  highlight=False)


@task_app.command("purge")
def purge(
    ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Only these tasks."),
    function: str | None = typer.Option(None, "--function", "-f", help="Only this function's."),
    status: list[str] = typer.Option([], "--status", "-s",
                                     help="Finished statuses; default: dead."),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Delete finished tasks (by default the dead-letter set) for good."""
    done = Client(url).json("POST", "/v1/tasks:purge",
                            json=_selection(function, status, None, ids or []))
    print_json(done) if as_json else out.print(f"purged {done['purged']} tasks")


@task_app.command("deliveries")
def task_deliveries(
    task_id: str = typer.Argument(..., metavar="ID"),
    url: str = UrlOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The deliveries of a task's destinations, with every attempt."""
    body = Client(url).json("GET", f"/v1/tasks/{task_id}/deliveries")
    if as_json:
        print_json(body)
        return
    if not body["deliveries"]:
        out.print("no deliveries")
    for d in body["deliveries"]:
        out.print(f"{d['condition']:<8} {d['type']:<9} {escape(d['target'])}  {d['status']}"
                  f"  ({d['attempts']} attempts)", highlight=False)
        for a in d["attempt_log"]:
            out.print(f"    #{a['attempt']} {ts(a['at'])}  {a['status_code'] or '-'}"
                      f"  {a['duration_ms']:.0f} ms  {escape(a['error'] or '')}",
                      highlight=False)


# -- queue ----------------------------------------------------------------------------------
queue_app = typer.Typer(no_args_is_help=True,
                        help="A function's async queue: show, pause, resume.")
app.add_typer(queue_app, name="queue")


def _queue_line(body: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(body["counts"].items())) or "empty"
    state = "[yellow]paused[/]" if body["paused"] else "[green]running[/]"
    return f"{escape(body['function'])}: {state}; {counts}"


@queue_app.command("show")
def queue_show(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """The queue of a function: paused or not, tasks by status, oldest waiting."""
    body = Client(url).json("GET", f"/v1/functions/{name}/queue")
    if as_json:
        print_json(body)
        return
    out.print(_queue_line(body), highlight=False)
    if body.get("oldest_age_s") is not None:
        out.print(f"  {body['depth']} waiting, the oldest for {body['oldest_age_s']:.1f} s")


@queue_app.command("pause")
def queue_pause(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """Pause: submits are accepted, nothing is dispatched (survives a restart)."""
    body = Client(url).json("POST", f"/v1/functions/{name}/queue:pause")
    print_json(body) if as_json else out.print(f"{escape(name)}: queue paused")


@queue_app.command("resume")
def queue_resume(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """Resume a paused queue."""
    body = Client(url).json("POST", f"/v1/functions/{name}/queue:resume")
    print_json(body) if as_json else out.print(f"{escape(name)}: queue resumed")


# -- topics ---------------------------------------------------------------------------------
topic_app = typer.Typer(no_args_is_help=True,
                        help="Topics: create, ls, show, subscribe, unsubscribe, publish, rm.")
app.add_typer(topic_app, name="topic")


def _show_topic(body: dict[str, Any]) -> None:
    out.print(f"[bold]topic {escape(body['name'])}[/]", highlight=False)
    for s in body["subscriptions"]:
        flt = orjson.dumps(s["filter"]).decode() if s["filter"] else "(every message)"
        out.print(f"  {escape(s['function'])}  {escape(flt)}", highlight=False)


@topic_app.command("create")
def topic_create(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """Create a topic."""
    body = Client(url).json("POST", "/v1/topics", json={"name": name})
    print_json(body) if as_json else out.print(f"topic {escape(name)} created")


@topic_app.command("ls")
def topic_ls(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """List topics."""
    body = Client(url).json("GET", "/v1/topics")
    if as_json:
        print_json(body)
        return
    for t in body["topics"]:
        out.print(escape(t["name"]), highlight=False)


@topic_app.command("show")
def topic_show(name: str, url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """A topic and its subscriptions."""
    body = Client(url).json("GET", f"/v1/topics/{name}")
    print_json(body) if as_json else _show_topic(body)


@topic_app.command("subscribe")
def topic_subscribe(
    name: str, function: str,
    flt: str | None = typer.Option(None, "--filter", metavar="JSON",
                                   help='Fields that must be equal, e.g. \'{"region": "eu"}\'.'),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Subscribe a function to a topic (again: replace its filter)."""
    body = Client(url).json("POST", f"/v1/topics/{name}/subscriptions", json={
        "function": function, "filter": _json_arg(flt, "--filter")})
    print_json(body) if as_json else _show_topic(body)


@topic_app.command("unsubscribe")
def topic_unsubscribe(name: str, function: str, url: str = UrlOpt) -> None:
    """Remove a function's subscription."""
    Client(url).request("DELETE", f"/v1/topics/{name}/subscriptions/{function}")
    out.print(f"{escape(function)} no longer subscribes to {escape(name)}", highlight=False)


@topic_app.command("publish")
def topic_publish(
    name: str,
    data: str = typer.Option("null", "--data", "-d", help="The message as JSON."),
    message_id: str | None = typer.Option(None, "--id", help="Publishing an id again adds"
                                          " nothing."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Publish a message: one task per matching subscriber."""
    body: dict[str, Any] = {"message": _json_arg(data, "--data")}
    if message_id is not None:
        body["message_id"] = message_id
    done = Client(url).json("POST", f"/v1/topics/{name}/publish", json=body)
    if as_json:
        print_json(done)
        return
    out.print(f"message {done['message_id']}: {len(done['tasks'])} tasks", highlight=False)
    for t in done["tasks"]:
        out.print(f"  {escape(t['function'])}  {t['task_id']}", highlight=False)


@topic_app.command("rm")
def topic_rm(name: str, url: str = UrlOpt) -> None:
    """Delete a topic and its subscriptions."""
    Client(url).request("DELETE", f"/v1/topics/{name}")
    out.print(f"topic {escape(name)} deleted", highlight=False)


# -- workflows ------------------------------------------------------------------------------
workflow_app = typer.Typer(no_args_is_help=True,
                           help="Workflows: run, show, ls, cancel, define.")
app.add_typer(workflow_app, name="workflow")


def _show_workflow(wf: dict[str, Any]) -> None:
    name = f" ({escape(wf['name'])})" if wf.get("name") else ""
    p = wf["progress"]
    out.print(f"[bold]workflow {wf['workflow_id']}[/]{name}  {_status(wf['status'])}"
              f"  {p['stages_done']}/{p['stages']} stages", highlight=False)
    for s in wf["stages"]:
        done = sum(1 for t in s["tasks"] if t["status"] == "succeeded")
        label = s["kind"] + (" (callback)" if s["callback"] else "")
        out.print(f"  {s['stage']}. {label:<16} {escape(', '.join(sorted(set(s['functions']))))}"
                  f"  {_status(s['status'])}  {done}/{len(s['tasks'])}", highlight=False)
    if "result" in wf:
        out.print("  result  " + escape(orjson.dumps(wf["result"]).decode()), highlight=False)
    if wf.get("error"):
        out.print(f"  error   [red]{escape(wf['error']['code'])}:"
                  f" {escape(wf['error']['message'] or '')}[/]", highlight=False)


def _wait_workflow(client: Client, workflow_id: str, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    while True:
        wf: dict[str, Any] = client.json("GET", f"/v1/workflows/{workflow_id}")
        if wf["status"] != "running" or (deadline and time.monotonic() > deadline):
            return wf
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


@workflow_app.command("run")
def workflow_run(
    name: str | None = typer.Argument(None, help="A stored definition (deploy -f)."),
    chain: str | None = typer.Option(None, "--chain", metavar="JSON",
                                     help='The steps, e.g. \'["a", {"map": "b", "callback":'
                                     ' "c"}]\'.'),
    file: Path | None = typer.Option(None, "--file", help="A JSON file with chain and"
                                     " on_failure."),
    on_failure: str | None = typer.Option(None, "--on-failure", metavar="FUNCTION"),
    data: str = typer.Option("null", "--input", "-d", help="The first step's input (JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until it ends; exit 1 unless it"
                              " succeeded."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """Start a workflow: a stored one by name, or the steps given."""
    body: dict[str, Any] = {"input": _json_arg(data, "--input")}
    if file is not None:
        body.update(_json_arg(file.read_text(), str(file)))
    if chain is not None:
        body["chain"] = _json_arg(chain, "--chain")
    if name is not None:
        body["name"] = name
    if on_failure is not None:
        body["on_failure"] = on_failure
    client = Client(url)
    wf = client.json("POST", "/v1/workflows", json=body)
    if wait:
        wf = _wait_workflow(client, wf["workflow_id"], None)
    print_json(wf) if as_json else _show_workflow(wf)
    if wait and wf["status"] != "succeeded":
        raise CliError(f"workflow {wf['workflow_id']} {wf['status']}")


@workflow_app.command("show")
def workflow_show(
    workflow_id: str = typer.Argument(..., metavar="ID"),
    wait: float = typer.Option(0.0, "--wait", "-w", min=0, help="Seconds to wait for the end."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """A workflow's status and progress by stage, its result or error."""
    wf = _wait_workflow(Client(url), workflow_id, wait)
    print_json(wf) if as_json else _show_workflow(wf)


@workflow_app.command("ls")
def workflow_ls(url: str = UrlOpt, as_json: bool = JsonOpt) -> None:
    """Workflows, newest first."""
    body = Client(url).json("GET", "/v1/workflows")
    if as_json:
        print_json(body)
        return
    for w in body["workflows"]:
        out.print(f"{w['workflow_id']}  {escape(w['name'] or '-'):<16} {_status(w['status'])}"
                  f"  stage {w['stage'] + 1}/{w['stages']}  {ts(w['created_at'])}",
                  highlight=False)


@workflow_app.command("cancel")
def workflow_cancel(workflow_id: str = typer.Argument(..., metavar="ID"), url: str = UrlOpt,
                    ) -> None:
    """Cancel a running workflow and its unfinished tasks."""
    wf = Client(url).json("POST", f"/v1/workflows/{workflow_id}/cancel")
    _show_workflow(wf)


@workflow_app.command("define")
def workflow_define(
    name: str,
    chain: str = typer.Option(..., "--chain", metavar="JSON", help="The steps."),
    on_failure: str | None = typer.Option(None, "--on-failure", metavar="FUNCTION"),
    url: str = UrlOpt,
) -> None:
    """Store a workflow definition by name (a stack file's workflows: do it too)."""
    Client(url).json("PUT", f"/v1/workflow-definitions/{name}", json={
        "chain": _json_arg(chain, "--chain"), "on_failure": on_failure})
    out.print(f"workflow {escape(name)} defined", highlight=False)


# -- webhook secret -------------------------------------------------------------------------
@app.command("webhook-secret")
def webhook_secret(
    name: str = typer.Option("default", "--name", help="The secret_ref."),
    rotate: bool = typer.Option(False, "--rotate", help="Replace it with a new one."),
    url: str = UrlOpt, as_json: bool = JsonOpt,
) -> None:
    """The secret webhook deliveries are signed with (docs/delivery.md shows how to verify)."""
    client = Client(url)
    body = (client.json("POST", "/v1/webhook-secret:rotate", params={"name": name}) if rotate
            else client.json("GET", "/v1/webhook-secret", params={"name": name}))
    print_json(body) if as_json else out.print(body["secret"], highlight=False)
