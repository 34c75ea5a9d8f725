"""Delivery: task deliveries, webhook secrets, task operations (redrive, cancel and purge by
filter, pause and resume), topics and workflows (docs/delivery.md, docs/tasks.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from faasbox import errors
from faasbox.api.auth import ScopedRoute, function_of, principal_of, tenant_of
from faasbox.api.body import trace_id_of
from faasbox.api.responses import V1, error_responses
from faasbox.api.tasks import _task
from faasbox.delivery.destinations import deliveries_view
from faasbox.delivery.topics import check_topic
from faasbox.delivery.webhooks import SIGNATURE_HEADER
from faasbox.delivery.workflows import (
    MAX_MAP,
    WorkflowNotFound,
    WorkflowSpec,
    first_stage_tasks,
    parse_spec,
)
from faasbox.payload import EventTooLarge, encode_event
from faasbox.platform import Platform
from faasbox.spec import check_name
from faasbox.store.queue import STATUSES, TERMINAL, TaskFilter
from faasbox.tenancy.names import display, qualify

router = APIRouter(route_class=ScopedRoute, responses=error_responses(*V1))

MAX_IDS = 10_000


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


def _audit(request: Request, action: str, target: str,
           detail: dict[str, Any] | None = None) -> None:
    _platform(request).tenancy.record(principal_of(request), tenant_of(request), action,
                                      target, detail)


# -- deliveries and webhook secrets ---------------------------------------------------------
@router.get("/v1/tasks/{task_id}/deliveries", tags=["delivery"],
            summary="The deliveries of a task's destinations, with every attempt",
            responses=error_responses(404, 422))
async def task_deliveries(task_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    await _task(p, request, task_id)
    return {"task_id": task_id,
            "deliveries": deliveries_view(await p.delivery_store.of_task(task_id))}


def _secret_view(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "secret": secret, "header": SIGNATURE_HEADER,
            "scheme": "t=<unix seconds>,v1=<hex HMAC-SHA256 over '<t>.<body>'>"}


@router.get("/v1/webhook-secret", tags=["delivery"],
            summary="The tenant's webhook signing secret (made at first use)",
            responses=error_responses(400, 422))
async def webhook_secret(request: Request,
                         name: str = Query("default", description="the secret_ref")) -> dict[
                             str, Any]:
    p = _platform(request)
    _check_ref(name)
    return _secret_view(name, await p.delivery_store.secret(tenant_of(request), name,
                                                            p.clock.now()))


@router.post("/v1/webhook-secret:rotate", tags=["delivery"],
             summary="Replace a webhook secret (deliveries are signed with the new one at once)",
             responses=error_responses(400, 422))
async def rotate_webhook_secret(request: Request,
                                name: str = Query("default")) -> dict[str, Any]:
    p = _platform(request)
    _check_ref(name)
    secret = await p.delivery_store.secret(tenant_of(request), name, p.clock.now(),
                                           rotate=True)
    _audit(request, "webhook_secret.rotate", name)
    return _secret_view(name, secret)


def _check_ref(name: str) -> None:
    try:
        check_name(name)
    except errors.InvalidSpec:
        raise errors.InvalidRequest(f"invalid secret name {name!r}") from None


# -- task operations ------------------------------------------------------------------------
class TaskSelection(BaseModel):
    """Which of the tenant's tasks a batch operation acts on."""

    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(None, description="only this function's tasks")
    status: str | list[str] | None = Field(None, description="one status or a list")
    since: float | None = Field(None, description="finished (or, unfinished, created) at or"
                                " after this Unix time")
    before: float | None = Field(None, description="finished (created) before this time")
    ids: list[str] | None = Field(None, max_length=MAX_IDS, description="only these tasks")


def _filter(request: Request, body: TaskSelection, default: tuple[str, ...]) -> TaskFilter:
    if body.function is not None:
        check_name(body.function)  # 422: a name, not 5 MB of anything for the audit log
    statuses = tuple([body.status] if isinstance(body.status, str) else body.status or default)
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise errors.InvalidRequest(f"unknown status {bad[0]!r}")
    return TaskFilter(
        tenant=tenant_of(request),
        function=None if body.function is None else function_of(request, body.function),
        statuses=statuses, since=body.since, before=body.before,
        ids=None if body.ids is None else tuple(body.ids))


@router.post("/v1/tasks:redrive", tags=["tasks"],
             summary="Submit dead-lettered tasks again (fresh attempts, linked to the original)",
             responses=error_responses(400, 422))
async def redrive(body: TaskSelection, request: Request) -> dict[str, Any]:
    p = _platform(request)
    where = _filter(request, body, ("dead",))
    tenant = tenant_of(request)
    pairs = await p.operations.redrive(where, lambda n: p.admit_tasks(tenant, n))
    _audit(request, "task.redrive", body.function or "*",
           {"count": len(pairs), "status": list(where.statuses)})
    return {"redriven": len(pairs),
            "tasks": [{"task_id": new.id, "redrive_of": old.id,
                       "function": display(new.function)} for old, new in pairs]}


@router.post("/v1/tasks:cancel", tags=["tasks"],
             summary="Cancel the tasks that match (queued ones at once, running ones stopped)",
             responses=error_responses(400, 422))
async def cancel_many(body: TaskSelection, request: Request) -> dict[str, Any]:
    p = _platform(request)
    if body.function is None and body.ids is None:
        raise errors.InvalidRequest("name a function or a list of ids")
    where = _filter(request, body, ())
    cancelled, stopped = await p.operations.cancel(where)
    _audit(request, "task.cancel_many", body.function or "*",
           {"cancelled": cancelled, "stopped": stopped})
    return {"cancelled": cancelled + stopped, "queued_cancelled": cancelled,
            "running_stopped": stopped}


@router.post("/v1/tasks:purge", tags=["tasks"],
             summary="Delete finished tasks that match (e.g. the dead-letter set)",
             responses=error_responses(400, 422))
async def purge(body: TaskSelection, request: Request) -> dict[str, Any]:
    p = _platform(request)
    where = _filter(request, body, ("dead",))
    if not set(where.statuses) <= TERMINAL:
        raise errors.InvalidRequest(f"purge takes finished statuses: {', '.join(sorted(TERMINAL))}")
    n = await p.operations.purge(where)
    _audit(request, "task.purge", body.function or "*",
           {"count": n, "status": list(where.statuses)})
    return {"purged": n}


@router.post("/v1/functions/{name}/queue:pause", tags=["tasks"],
             summary="Pause a function's async queue: submits are accepted, nothing runs",
             responses=error_responses(404, 422))
async def pause(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    await p.operations.pause(qualified)
    _audit(request, "queue.pause", name)
    return {"function": name, "paused": True}


@router.post("/v1/functions/{name}/queue:resume", tags=["tasks"],
             summary="Resume a paused queue", responses=error_responses(404, 422))
async def resume(name: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    qualified = function_of(request, name)
    await p.registry.get(qualified)
    await p.operations.resume(qualified)
    _audit(request, "queue.resume", name)
    return {"function": name, "paused": False}


# -- topics ---------------------------------------------------------------------------------
class TopicBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class SubscriptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: str
    filter: dict[str, Any] | None = Field(None, description="field (dotted path): value;"
                                          " a message matches when every field is equal")


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Any = Field(description="the event each subscriber's task gets")
    message_id: str | None = Field(None, description="publishing the same id again adds"
                                   " nothing (default: a new id)")


def _topic(request: Request, name: str) -> str:
    check_topic(name)
    return qualify(tenant_of(request), name)


async def _topic_view(p: Platform, topic: str) -> dict[str, Any]:
    created = await p.delivery_store.topic(topic)
    if created is None:
        raise errors.NotFound(f"no topic {display(topic)!r}")
    return {"name": display(topic), "created_at": created, "subscriptions": [
        {"function": display(s.function), "filter": s.filter, "created_at": s.created_at}
        for s in await p.delivery_store.subscriptions(topic)]}


@router.post("/v1/topics", status_code=201, tags=["topics"], summary="Create a topic",
             responses=error_responses(400, 409, 422))
async def create_topic(body: TopicBody, request: Request) -> dict[str, Any]:
    p = _platform(request)
    topic = _topic(request, body.name)
    if not await p.topics.create(topic):
        raise errors.Conflict(f"topic {body.name!r} already exists")
    _audit(request, "topic.create", body.name)
    return await _topic_view(p, topic)


@router.get("/v1/topics", tags=["topics"], summary="The tenant's topics")
async def list_topics(request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"topics": [{"name": display(n), "created_at": c}
                       for n, c in await p.delivery_store.topics(tenant_of(request))]}


@router.get("/v1/topics/{topic}", tags=["topics"], summary="A topic and its subscriptions",
            responses=error_responses(400, 404, 422))
async def get_topic(topic: str, request: Request) -> dict[str, Any]:
    return await _topic_view(_platform(request), _topic(request, topic))


@router.delete("/v1/topics/{topic}", status_code=204, tags=["topics"],
               summary="Delete a topic and its subscriptions",
               responses=error_responses(400, 404, 422))
async def delete_topic(topic: str, request: Request) -> Response:
    p = _platform(request)
    if not await p.delivery_store.delete_topic(_topic(request, topic)):
        raise errors.NotFound(f"no topic {topic!r}")
    _audit(request, "topic.delete", topic)
    return Response(status_code=204)


@router.post("/v1/topics/{topic}/subscriptions", status_code=201, tags=["topics"],
             summary="Subscribe a function (again: replaces its filter)",
             responses=error_responses(400, 404, 422))
async def subscribe(topic: str, body: SubscriptionBody, request: Request,
                    response: Response) -> dict[str, Any]:
    p = _platform(request)
    qualified = _topic(request, topic)
    function = function_of(request, body.function)
    await p.registry.get(function)
    if not await p.topics.subscribe(qualified, function, body.filter):
        response.status_code = 200
    _audit(request, "topic.subscribe", topic, {"function": body.function,
                                               "filter": body.filter or {}})
    return await _topic_view(p, qualified)


@router.delete("/v1/topics/{topic}/subscriptions/{function}", status_code=204,
               tags=["topics"], summary="Unsubscribe a function",
               responses=error_responses(400, 404, 422))
async def unsubscribe(topic: str, function: str, request: Request) -> Response:
    p = _platform(request)
    if not await p.delivery_store.unsubscribe(_topic(request, topic),
                                              function_of(request, function)):
        raise errors.NotFound(f"{function!r} does not subscribe to {topic!r}")
    _audit(request, "topic.unsubscribe", topic, {"function": function})
    return Response(status_code=204)


@router.post("/v1/topics/{topic}/publish", status_code=202, tags=["topics"],
             summary="Publish a message: one durable task per matching subscriber",
             responses=error_responses(400, 404, 413, 422))
async def publish(topic: str, body: PublishBody, request: Request,
                  traceparent: str | None = Header(None)) -> dict[str, Any]:
    p = _platform(request)
    try:
        message = encode_event(body.message, "message")
    except EventTooLarge as exc:
        raise errors.PayloadTooLarge(str(exc)) from None
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    tenant = tenant_of(request)
    # one task per matching subscriber: within the tenant's rate and queue, as for tasks
    message_id, tasks = await p.topics.publish(_topic(request, topic), message, body.message_id,
                                               trace_id_of(traceparent),
                                               lambda n: p.admit_tasks(tenant, n))
    return {"message_id": message_id, "tasks": tasks}


# -- workflows ------------------------------------------------------------------------------
class WorkflowRun(BaseModel):
    """``POST /v1/workflows``: a definition's name, or the steps themselves."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="a stored definition to run")
    chain: list[Any] | None = Field(None, description="the steps (without a name)")
    on_failure: str | None = None
    input: Any = Field(None, description="the first step's event")


@router.post("/v1/workflows", status_code=202, tags=["workflows"],
             summary="Start a workflow (a chain of functions, groups and chords)",
             responses=error_responses(400, 404, 413, 422))
async def run_workflow(
    body: WorkflowRun, request: Request, response: Response,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
    traceparent: str | None = Header(None),
) -> dict[str, Any]:
    p = _platform(request)
    tenant = tenant_of(request)
    if (body.name is None) == (body.chain is None):
        raise errors.InvalidRequest("give a definition's name or a chain")
    if body.name is not None:
        stored = await p.delivery_store.definition(qualify(tenant, check_name(body.name)))
        if stored is None:
            raise WorkflowNotFound(f"no workflow definition {body.name!r}")
        spec = parse_spec({**stored, **({"on_failure": body.on_failure}
                                        if body.on_failure else {})})
    else:
        spec = parse_spec({"chain": body.chain, "on_failure": body.on_failure})
    try:
        event = encode_event(body.input, "input")
    except EventTooLarge as exc:
        raise errors.PayloadTooLarge(str(exc)) from None
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    p.admit_tasks(tenant, min(first_stage_tasks(spec, event), 1 + MAX_MAP))
    row, created = await p.workflows.run(tenant, spec, event, body.name, idempotency_key,
                                         trace_id_of(traceparent))
    if not created:
        response.status_code = 200
    return {**await p.workflows.view(await p.workflows.get(tenant, row.id)),
            "created": created}


@router.get("/v1/workflows", tags=["workflows"], summary="Workflows, newest first",
            responses=error_responses(422))
async def list_workflows(request: Request,
                         limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
    p = _platform(request)
    rows = await p.delivery_store.workflows(tenant_of(request), limit)
    return {"workflows": [{"workflow_id": w.id, "name": w.name, "status": w.status,
                           "stage": w.stage, "stages": len(w.spec["stages"]),
                           "created_at": w.created_at, "finished_at": w.finished_at}
                          for w in rows]}


@router.get("/v1/workflows/{workflow_id}", tags=["workflows"],
            summary="A workflow: status, progress by stage, result or error",
            responses=error_responses(404, 422))
async def get_workflow(workflow_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    return await p.workflows.view(await p.workflows.get(tenant_of(request), workflow_id))


@router.post("/v1/workflows/{workflow_id}/cancel", tags=["workflows"],
             summary="Cancel a running workflow and its unfinished tasks",
             responses=error_responses(404, 422))
async def cancel_workflow(workflow_id: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    row = await p.workflows.cancel(tenant_of(request), workflow_id)
    _audit(request, "workflow.cancel", workflow_id)
    return await p.workflows.view(row)


@router.put("/v1/workflow-definitions/{workflow}", tags=["workflows"],
            summary="Store a workflow definition by name (the stack file's workflows:)",
            responses=error_responses(400, 422))
async def put_definition(workflow: str, spec: WorkflowSpec, request: Request,
                         ) -> dict[str, Any]:
    p = _platform(request)
    check_name(workflow)
    body = spec.model_dump()
    await p.delivery_store.put_definition(qualify(tenant_of(request), workflow), body,
                                          p.clock.now())
    _audit(request, "workflow_definition.put", workflow)
    return {"name": workflow, **body}


@router.get("/v1/workflow-definitions", tags=["workflows"],
            summary="The tenant's workflow definitions")
async def list_definitions(request: Request) -> dict[str, Any]:
    p = _platform(request)
    return {"definitions": [{"name": display(n), **spec} for n, spec in
                            await p.delivery_store.definitions(tenant_of(request))]}


@router.get("/v1/workflow-definitions/{workflow}", tags=["workflows"],
            summary="A workflow definition", responses=error_responses(404, 422))
async def get_definition(workflow: str, request: Request) -> dict[str, Any]:
    p = _platform(request)
    spec = await p.delivery_store.definition(qualify(tenant_of(request), workflow))
    if spec is None:
        raise WorkflowNotFound(f"no workflow definition {workflow!r}")
    return {"name": workflow, **spec}


@router.delete("/v1/workflow-definitions/{workflow}", status_code=204, tags=["workflows"],
               summary="Delete a workflow definition", responses=error_responses(404, 422))
async def delete_definition(workflow: str, request: Request) -> Response:
    p = _platform(request)
    if not await p.delivery_store.delete_definition(qualify(tenant_of(request), workflow)):
        raise WorkflowNotFound(f"no workflow definition {workflow!r}")
    _audit(request, "workflow_definition.delete", workflow)
    return Response(status_code=204)


