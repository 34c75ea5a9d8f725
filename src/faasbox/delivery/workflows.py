"""Workflows: a chain of steps, where a step is a function or a group of functions run in
parallel (Celery's chain, group and chord).

::

    {"chain": ["fetch", {"map": "resize", "callback": "collect"}, "publish"],
     "on_failure": "alert", "input": {...}}

- A step is a function name (or ``{"function": name}``); ``{"group": [names]}`` runs every
  function of the list on the step's input; ``{"map": name}`` runs the function once per item
  of the step's input (a JSON array). A group's output is the list of its results, in order;
  with ``"callback"`` (a chord) the callback runs once all of the group succeeded, on that list.
- The output of a step is the input of the next; the workflow's result is the last output.
- A step's tasks are ordinary durable tasks (``source = workflow``, retried per their
  function's policy) under the keys ``wf:<id>:<stage>:<member>``. The workflow advances when
  they end (:class:`~faasbox.events.TaskFinished`), and every running workflow is reconciled
  from its tasks at start and by a periodic sweep, so a restarted server resumes it where it
  was.
- A task that ends badly fails the workflow: its other unfinished tasks are cancelled and the
  ``on_failure`` function gets ``{"workflow_id", "stage", "task_id", "function", "error"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from faasbox import background, errors
from faasbox.clock import Clock
from faasbox.dispatcher import Dispatcher
from faasbox.events import TaskFinished
from faasbox.invoker import new_id, new_task_id, new_trace_id
from faasbox.payload import MAX_EVENT
from faasbox.registry import Registry
from faasbox.spec import NAME_RE, validation_text
from faasbox.store.queue import TERMINAL, NewTask, TaskFilter, TaskQueue
from faasbox.store.relational.delivery import SqlDeliveryStore, WorkflowRow
from faasbox.tenancy.names import display, qualify

log = logging.getLogger(__name__)

MAX_STEPS = 32
MAX_GROUP = 1000
MAX_MAP = 10_000  # tasks one map stage may make (one per item of its input)
MAX_RESULT = 64 * 2**20  # the last stage's output, the workflow's result
SWEEP_S = 2.0


def _fn(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"function"}:
        value = value["function"]
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a function name")
    return value


class WorkflowSpec(BaseModel):
    """A workflow: its steps and what runs when it fails (a definition, or a run's body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: list[Any] = Field(min_length=1, max_length=MAX_STEPS, description="the steps:"
                             " \"fn\", {\"group\": [fn, ...]}, {\"map\": fn}; a group or map"
                             " may have a \"callback\": fn (a chord)")
    on_failure: str | None = Field(None, description="a function run when the workflow fails")

    @field_validator("chain")
    @classmethod
    def _steps(cls, v: list[Any]) -> list[Any]:
        stages(v)
        return v

    @field_validator("on_failure")
    @classmethod
    def _failure(cls, v: str | None) -> str | None:
        return None if v is None else _fn(v)


def first_stage_tasks(spec: WorkflowSpec, event: bytes) -> int:
    """How many tasks the workflow's first stage makes from ``event`` (for admission)."""
    first = stages(spec.chain)[0]
    if first["kind"] != "map":
        return len(first["functions"])
    items = orjson.loads(event)
    return len(items) if isinstance(items, list) else 1


def stages(chain: list[Any]) -> list[dict[str, Any]]:
    """The steps as stages: ``{"kind": single|group|map, "functions": [...]}``; a chord's
    callback is a single stage of its own after its group."""
    out: list[dict[str, Any]] = []
    for i, step in enumerate(chain):
        where = f"step {i}"
        if isinstance(step, str) or (isinstance(step, dict) and set(step) == {"function"}):
            out.append({"kind": "single", "functions": [_fn(step)]})
            continue
        if not isinstance(step, dict):
            raise ValueError(f"{where}: a step is a function name, {{\"group\": [...]}} or"
                             " {\"map\": name}")
        unknown = set(step) - {"group", "map", "callback"}
        if unknown or ("group" in step) == ("map" in step):
            raise ValueError(f"{where}: a step has one of group or map, and maybe callback")
        if "group" in step:
            members = step["group"]
            if not isinstance(members, list) or not 0 < len(members) <= MAX_GROUP:
                raise ValueError(f"{where}: a group is a list of 1-{MAX_GROUP} functions")
            out.append({"kind": "group", "functions": [_fn(m) for m in members]})
        else:
            out.append({"kind": "map", "functions": [_fn(step["map"])]})
        if step.get("callback") is not None:
            out.append({"kind": "single", "functions": [_fn(step["callback"])],
                        "callback": True})
    return out


def parse_spec(body: dict[str, Any]) -> WorkflowSpec:
    try:
        return WorkflowSpec.model_validate(body)
    except ValidationError as exc:
        raise errors.InvalidSpec(validation_text(exc)) from None


class WorkflowNotFound(errors.NotFound):
    code = "workflow_not_found"


class Workflows:
    def __init__(self, store: SqlDeliveryStore, queue: TaskQueue, dispatcher: Dispatcher,
                 registry: Registry, clock: Clock) -> None:
        self.store = store
        self.queue = queue
        self.dispatcher = dispatcher
        self.registry = registry
        self.clock = clock
        self._dirty: set[str] = set()
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        self._dirty.update(await self.store.running_workflows())
        self._loop = asyncio.create_task(self._advance_loop(), name="workflows")
        self._kick.set()

    async def close(self) -> None:
        await background.stop(self._loop)

    # -- starting ---------------------------------------------------------------------------
    async def run(self, tenant: str, spec: WorkflowSpec, event: bytes, name: str | None = None,
                  idempotency_key: str | None = None, trace_id: str | None = None,
                  ) -> tuple[WorkflowRow, bool]:
        plan = stages(spec.chain)
        for fn in {f for s in plan for f in s["functions"]} | (
                {spec.on_failure} if spec.on_failure else set()):
            await self.registry.get(qualify(tenant, fn))  # 404 for an unknown function
        row = WorkflowRow(
            id=new_id(), tenant=tenant, name=name,
            spec={"chain": spec.chain, "on_failure": spec.on_failure, "stages": plan},
            status="running", stage=0, stage_input=event, created_at=self.clock.now(),
            trace_id=trace_id or new_trace_id(),
            idempotency_key=None if idempotency_key is None else f"{tenant}:{idempotency_key}")
        row, created = await self.store.create_workflow(row)
        if created:
            await self.advance(row.id)
        return row, created

    async def get(self, tenant: str, workflow_id: str) -> WorkflowRow:
        row = await self.store.workflow(workflow_id)
        if row is None or row.tenant != tenant:
            raise WorkflowNotFound(f"no workflow {workflow_id!r}")
        return row

    async def cancel(self, tenant: str, workflow_id: str) -> WorkflowRow:
        row = await self.get(tenant, workflow_id)
        if await self.store.end_workflow(row.id, "cancelled", self.clock.now(),
                                         error_code="cancelled",
                                         error_message="the workflow was cancelled"):
            await self._cancel_tasks(row.id)
        return await self.get(tenant, workflow_id)

    # -- progress ---------------------------------------------------------------------------
    def on_task_finished(self, event: TaskFinished) -> None:
        if event.task.workflow_id is not None:
            self._dirty.add(event.task.workflow_id)
            self._kick.set()

    async def _advance_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_S):  # keeps a cancel (3.11)
                    await self._kick.wait()
            self._kick.clear()
            if not self._dirty:
                with contextlib.suppress(Exception):
                    self._dirty.update(await self.store.running_workflows())
            dirty, self._dirty = self._dirty, set()
            for workflow_id in dirty:
                try:
                    await self.advance(workflow_id)
                except Exception:
                    log.exception("advancing workflow %s failed", workflow_id)

    async def advance(self, workflow_id: str) -> None:
        lock = self._locks.setdefault(workflow_id, asyncio.Lock())
        try:
            async with lock:
                await self._advance(workflow_id)
        finally:
            if not lock.locked():
                self._locks.pop(workflow_id, None)

    async def _advance(self, workflow_id: str) -> None:
        wf = await self.store.workflow(workflow_id)
        if wf is None or wf.terminal:
            return
        plan: list[dict[str, Any]] = wf.spec["stages"]
        while True:
            # the current stage only, and its results only once they are all in and counted
            mine = await self.store.workflow_tasks(workflow_id, wf.stage, results=False)
            if not mine:
                started = await self._start_stage(wf, plan[wf.stage])
                if started:
                    return
                mine = []  # an empty map: its output is []
            bad = next((t for t in mine if t[3] in TERMINAL and t[3] != "succeeded"), None)
            if bad is not None:
                await self._fail(wf, bad)
                return
            if any(t[3] not in TERMINAL for t in mine):
                return
            last = wf.stage + 1 == len(plan)
            limit = MAX_RESULT if last else MAX_EVENT
            size = await self.store.workflow_results_size(workflow_id, wf.stage)
            if mine and size <= limit:
                mine = await self.store.workflow_tasks(workflow_id, wf.stage)
                ordered = [t[4] or b"null" for t in sorted(mine, key=lambda t: t[2] or 0)]
                out_bytes = (ordered[0] if plan[wf.stage]["kind"] == "single" and ordered
                             else orjson.dumps([orjson.Fragment(r) for r in ordered]))
                size = len(out_bytes)
            elif not mine:
                out_bytes = b"[]"
            if size > limit:
                what = "the workflow's result" if last else "a step's input"
                await self.store.end_workflow(
                    wf.id, "failed", self.clock.now(), error_code="step_output_too_large",
                    error_message=f"the output of stage {wf.stage} is {size} bytes;"
                    f" {what} is at most {limit}")
                return
            if last:
                await self.store.end_workflow(wf.id, "succeeded", self.clock.now(),
                                              result=out_bytes)
                return
            if not await self.store.advance_workflow(wf.id, wf.stage + 1, out_bytes):
                return
            wf.stage += 1
            wf.stage_input = out_bytes

    async def _start_stage(self, wf: WorkflowRow, stage: dict[str, Any]) -> bool:
        """Enqueue the tasks of the workflow's current stage; False when it has none."""
        if stage["kind"] == "map":
            items = orjson.loads(wf.stage_input)
            if not isinstance(items, list):
                await self.store.end_workflow(
                    wf.id, "failed", self.clock.now(), error_code="map_input_not_a_list",
                    error_message=f"stage {wf.stage} maps {stage['functions'][0]} over its"
                    " input, which is not a JSON array")
                return True
            if len(items) > MAX_MAP:
                await self.store.end_workflow(
                    wf.id, "failed", self.clock.now(), error_code="map_input_too_large",
                    error_message=f"stage {wf.stage} maps {stage['functions'][0]} over"
                    f" {len(items)} items; a map takes at most {MAX_MAP}")
                return True
            members = [(stage["functions"][0], orjson.dumps(item)) for item in items]
        else:
            members = [(fn, wf.stage_input) for fn in stage["functions"]]
        if not members:
            return False
        by_function: dict[str, list[NewTask]] = {}
        for index, (fn, event) in enumerate(members):
            by_function.setdefault(qualify(wf.tenant, fn), []).append(NewTask(
                new_task_id(), event, f"wf:{wf.id}:{wf.stage}:{index}", wf.trace_id,
                source="workflow", shard_index=index, shard_count=len(members),
                workflow_id=wf.id, workflow_step=wf.stage))
        for function, new in by_function.items():
            await self.dispatcher.enqueue(function, new)
        return True

    async def _fail(self, wf: WorkflowRow, bad: tuple[Any, ...]) -> None:
        task_id, stage, _, status, _, code, message, function = bad
        text = f"{display(function)} {status}: {code}: {message}"
        if not await self.store.end_workflow(wf.id, "failed", self.clock.now(),
                                             error_code="step_failed", error_message=text):
            return
        await self._cancel_tasks(wf.id)
        failure = wf.spec.get("on_failure")
        if failure:
            event = orjson.dumps({"workflow_id": wf.id, "name": wf.name, "stage": stage,
                                  "task_id": task_id, "function": display(function),
                                  "error": {"status": status, "code": code,
                                            "message": message}})
            [(row, _)] = await self.dispatcher.enqueue(qualify(wf.tenant, failure), [NewTask(
                new_task_id(), event, f"wf:{wf.id}:on_failure", wf.trace_id, source="workflow")])
            await self.store.set_failure_task(wf.id, row.id)

    async def _cancel_tasks(self, workflow_id: str) -> None:
        ids = tuple(t[0] for t in await self.store.workflow_tasks(workflow_id, results=False)
                    if t[3] not in TERMINAL)
        if ids:
            await self.queue.cancel_where(TaskFilter(ids=ids, statuses=(
                "held", "queued", "retry_wait")), self.clock.now())

    # -- views ------------------------------------------------------------------------------
    async def view(self, wf: WorkflowRow) -> dict[str, Any]:
        tasks = await self.store.workflow_tasks(wf.id, results=False)
        plan = wf.spec["stages"]
        counts: dict[str, int] = {}
        shown = []
        for i, stage in enumerate(plan):
            mine = [t for t in tasks if t[1] == i]
            for t in mine:
                counts[t[3]] = counts.get(t[3], 0) + 1
            if not mine:
                state = "pending" if i >= wf.stage else "succeeded"
            elif all(t[3] == "succeeded" for t in mine):
                state = "succeeded"
            elif any(t[3] in TERMINAL and t[3] != "succeeded" for t in mine):
                state = "failed"
            else:
                state = "running"
            shown.append({"stage": i, "kind": stage["kind"], "functions": stage["functions"],
                          "callback": bool(stage.get("callback")), "status": state,
                          "tasks": [{"task_id": t[0], "function": display(t[7]),
                                     "member": t[2], "status": t[3]} for t in mine]})
        view: dict[str, Any] = {
            "workflow_id": wf.id, "name": wf.name, "status": wf.status,
            "chain": wf.spec["chain"], "on_failure": wf.spec.get("on_failure"),
            "stage": wf.stage,
            "progress": {"stages": len(plan),
                         "stages_done": sum(1 for s in shown if s["status"] == "succeeded"),
                         "tasks": counts},
            "stages": shown, "created_at": wf.created_at, "finished_at": wf.finished_at,
            "trace_id": wf.trace_id, "failure_task_id": wf.failure_task}
        if wf.status == "succeeded" and wf.result is not None:
            view["result"] = orjson.loads(wf.result)
        if wf.error_code is not None:
            view["error"] = {"code": wf.error_code, "message": wf.error_message}
        return view
