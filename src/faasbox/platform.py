"""Wires the components of one faasbox server together (what ``faasbox server`` runs)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from faasbox import background, errors
from faasbox.autoscaler import ScalerConfig, make_policy
from faasbox.clock import Clock, SystemClock
from faasbox.cluster import Cluster
from faasbox.codestore import CodeStore
from faasbox.config import Settings, lock_data_dir
from faasbox.delivery.destinations import DestinationService
from faasbox.delivery.operations import TaskOperations
from faasbox.delivery.topics import Topics
from faasbox.delivery.webhooks import Webhooks
from faasbox.delivery.workflows import Workflows
from faasbox.dispatcher import Dispatcher, Policies, TaskLifecycle
from faasbox.events import (
    CancelRequested,
    ControlChanged,
    Events,
    FunctionDeleted,
    FunctionDeployed,
    InstanceRetired,
    InvocationFinished,
    InvocationThrottled,
    ScheduleChanged,
    SlotReleased,
    TaskFinished,
    TasksEnqueued,
)
from faasbox.invoker import Invoker
from faasbox.metering.cost import PriceBook
from faasbox.metering.reports import Reports
from faasbox.metering.rollup import Meter
from faasbox.metrics import Metrics, labels
from faasbox.node import NodeService, SandboxFeatures, detect
from faasbox.node.builds import BuildSandbox
from faasbox.registry import Registry
from faasbox.resources import Node, ResourceManager
from faasbox.scheduler import InstancePools, ScalingLoop, Scheduler
from faasbox.spec import FunctionSpec
from faasbox.store import SqlStore
from faasbox.store.queue import TaskRow
from faasbox.store.relational.cluster import SqlClusterStore
from faasbox.store.relational.delivery import SqlDeliveryStore
from faasbox.store.relational.queue import SqlTaskQueue
from faasbox.store.relational.tenancy import SqlTenancyStore
from faasbox.store.relational.triggers import SqlTriggerStore
from faasbox.store.relational.usage import UsageStore
from faasbox.store.url import database_for
from faasbox.tenancy.admission import Admission
from faasbox.tenancy.groups import ServiceGroups
from faasbox.tenancy.model import EffectiveLimits, Principal
from faasbox.tenancy.names import qualify, tenant_of
from faasbox.tenancy.service import Tenancy
from faasbox.triggers.jobs import JobService
from faasbox.triggers.service import TriggerService

log = logging.getLogger(__name__)

RESYNC_S = 10.0


class Platform:
    """Every component of one server, built in dependency order; they talk back through
    :class:`~faasbox.events.Events`, whose subscriptions are all made here."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        # absolute: instances resolve code paths from their own working directory
        settings = dataclasses.replace(settings, data=settings.data.resolve())
        self.settings = settings
        self.clock = clock or SystemClock()
        self.events = Events()
        data = settings.data
        data.mkdir(parents=True, exist_ok=True)
        # before anything touches instances, cgroups or scratch: a second server on this data
        # dir stops here, with no side effect
        self._lock_fd: int | None = None
        self._lock_data_dir()
        data.chmod(0o711)  # instances may traverse to code/, not list (without a mount ns)
        self.store = SqlStore(database_for(settings.store_url, data,
                                           settings.sqlite_synchronous))
        self.store.db.claim()
        # the workers of one `faasbox server --workers` share one code cache and admin key
        self.home = Path(settings.shared_dir).resolve() if settings.shared_dir else data
        self.features: SandboxFeatures = detect(self.home, settings.sandbox, settings.start_mode)
        self.node = NodeService(data, self.features, settings.sandbox_uid_base,
                                self.features.start_mode, settings.template_spares,
                                home=self.home)
        self.builds = BuildSandbox(self.node.env)
        self.code = CodeStore(self.home, private=self.features.mount_ns, pip=self.builds.pip)
        self.registry = Registry(self.store, self.code, self.node, self.events, self.clock)
        self.resources = ResourceManager(
            [Node("local", settings.node_memory_mb, os.cpu_count() or 1)])
        self.tenancy = Tenancy(SqlTenancyStore(self.store), default_limits(settings),
                               self.clock, self.events)
        self.admission = Admission(self.tenancy, self.clock)
        self.instances = InstancePools(
            self.registry, self.node, self.resources, self.clock, **scaling_options(settings),
            tenant_memory_mb=lambda tenant: self.tenancy.limits(tenant).max_memory_mb,
            events=self.events)
        self.groups = ServiceGroups(self.tenancy.store, self.tenancy, self.registry,
                                    self.instances, self.node, self.clock)
        self.scheduler = Scheduler(self.instances, self.events, self.clock,
                                   acquire_timeout_s=settings.acquire_timeout_s)
        self.metrics = Metrics(self.instances.states, lambda: self.store.db.commits,
                               lambda: self.dispatcher.sweeps)
        self.invoker = Invoker(self.scheduler, self.admission, self.store, self.metrics,
                               self.events, self.clock)
        self.queue = SqlTaskQueue(self.store)
        self.trigger_store = SqlTriggerStore(self.store)
        self.policies = Policies(self.queue, self.trigger_store, self.clock)
        self.tasks = TaskLifecycle(self.queue, self.registry, self.invoker, self.policies,
                                   self.events, self.clock)
        self.cluster = Cluster(self.store.db, SqlClusterStore(self.store), self.clock,
                               f"http://{settings.host}:{settings.port}",
                               settings.server_timeout_s, self._server_info)
        self.dispatcher = Dispatcher(
            self.queue, self.registry, self.scheduler, self.tasks, self.policies,
            self.admission, self.events, self.clock, self.cluster,
            dedup_window_s=settings.idempotency_window_s,
            retention_s=settings.task_retention_s,
            sweep_interval_s=settings.reap_interval_s,
        )
        self.scaling = ScalingLoop(self.instances, self.scheduler, self.registry, self.clock,
                                   interval_s=settings.reap_interval_s,
                                   backlog=self.dispatcher.backlog)
        self.jobs = JobService(self.trigger_store, self.queue, self.dispatcher, self.tasks,
                               self.registry, self.events, self.clock,
                               sweep_interval_s=max(1.0, settings.reap_interval_s))
        if self.cluster.shared:  # a task or job may end on another server: long polls re-read
            self.tasks.recheck_s = self.jobs.recheck_s = 1.0
        self.triggers = TriggerService(self.trigger_store, self.queue, self.dispatcher,
                                       self.tasks, self.jobs, self.registry, self.events,
                                       self.clock, admit=self.admit_tasks)
        self._delivery(settings)
        self.meter = Meter(UsageStore(self.store), self.instances, self.clock,
                           flush_s=settings.metering_flush_s,
                           retention_days=settings.usage_retention_days)
        self.reports = Reports(self.meter, self.registry, price_book(settings), self.clock)
        self._subscribe()
        self._resync: asyncio.Task[None] | None = None

    def _delivery(self, settings: Settings) -> None:
        """Destinations, webhooks, topics, workflows and task operations (delivery/)."""
        self.delivery_store = SqlDeliveryStore(self.store)
        deliveries = self.metrics.deliveries
        self.webhooks = Webhooks(
            self.delivery_store, self.clock, timeout_s=settings.webhook_timeout_s,
            max_age_s=settings.webhook_max_age_s,
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_cap_s=settings.webhook_backoff_cap_s,
            concurrency=settings.webhook_concurrency, per_host=settings.webhook_per_host,
            allow_private=settings.webhook_allow_private,
            on_outcome=lambda outcome: deliveries.labels("webhook", outcome).inc())
        self.topics = Topics(self.delivery_store, self.dispatcher, self.clock)
        self.destinations = DestinationService(
            self.delivery_store, self.queue, self.dispatcher, self.policies, self.topics,
            self.webhooks, self.clock, executed_version=self._executed_version,
            on_delivery=lambda kind, outcome: deliveries.labels(kind, outcome).inc(),
            retention_s=settings.task_retention_s)
        self.operations = TaskOperations(
            self.queue, self.dispatcher, self.tasks, self.policies, self.events, self.clock,
            on_redrive=lambda f, n: self.metrics.redrives.labels(*labels(f)).inc(n))
        self.workflows = Workflows(self.delivery_store, self.queue, self.dispatcher,
                                   self.registry, self.clock)

    async def _executed_version(self, task: TaskRow) -> int | None:
        """The version the last attempt of ``task`` ran (None: it never ran)."""
        if not task.invocation_ids:
            return None
        record = await self.store.get_invocation(task.invocation_ids[-1])
        return None if record is None else record.version

    async def refresh_task_metrics(self) -> None:
        snapshot = self.metrics.tasks
        snapshot.depth = await self.queue.depth()
        snapshot.states = await self.delivery_store.task_states()
        snapshot.paused = set(self.dispatcher.paused)
        snapshot.now = self.clock.now()

    async def _drop_delivery(self, event: FunctionDeleted) -> None:
        self.dispatcher.paused.discard(event.function)
        await self.delivery_store.drop_function(event.function)

    def _subscribe(self) -> None:
        on = self.events.subscribe
        # on_success chains and destinations: before the task is marked succeeded
        on(InvocationFinished, self.destinations.on_invocation)
        on(TaskFinished, self.destinations.on_task_finished)  # on_failure destinations
        on(TaskFinished, self.workflows.on_task_finished)
        on(FunctionDeleted, self._drop_delivery)
        on(TaskFinished, self.jobs.on_task_finished)
        on(TaskFinished, self.triggers.on_task_finished)
        on(SlotReleased, self.dispatcher.on_slot_released)
        on(ScheduleChanged, self.scaling.on_schedule)  # pre-warm before fires
        on(FunctionDeployed, self.node.on_function_deployed)
        on(FunctionDeleted, self.triggers.on_function_deleted)
        on(FunctionDeleted, self.on_function_deleted)
        on(FunctionDeployed, lambda e: self.admission.set_reservation(e.row.function, e.row.spec))
        on(TasksEnqueued, lambda e: self.admission.queued_delta(tenant_of(e.function), e.count))
        on(TaskFinished, lambda e: self.admission.queued_delta(tenant_of(e.task.function), -1))
        # metering: usage rollups (docs/cost.md)
        on(InvocationFinished, self.meter.on_invocation)
        on(InvocationThrottled, self.meter.on_throttle)
        on(InstanceRetired, self.meter.on_instance_retired)
        # several servers on one store: what changed here, the others hear (cluster.py)
        publish = self.cluster.publish
        on(TasksEnqueued, lambda e: publish("tasks", e.function))
        on(CancelRequested, lambda e: publish("cancel", e.task_id))
        on(ControlChanged, lambda e: publish("control", orjson.dumps(
            [e.tenant, e.action, e.target]).decode()))
        heard = self.cluster.on
        heard("tasks", lambda function: self.dispatcher.notify(function, self.clock.now()))
        heard("cancel", self.tasks.interrupt)
        heard("control", self._control_changed)
        self.cluster.every_poll(self._poll_cluster)

    async def _control_changed(self, key: str) -> None:
        """Another server changed the control plane: drop what this one cached of it."""
        tenant, action, target = orjson.loads(key)
        kind = action.split(".", 1)[0]
        if kind in ("tenant", "key"):
            await self.tenancy.load()
        elif kind in ("function", "task_policy", "queue"):
            function = qualify(tenant, target)
            self.registry.forget(function)
            self.policies.forget(function)
            if action == "function.delete":
                self.on_function_deleted(FunctionDeleted(function))
                await self.triggers.reload()
            elif action == "function.deploy":
                with contextlib.suppress(errors.NotFound):
                    row = await self.registry.resolve(function, None)
                    self.admission.set_reservation(function, row.spec)
            elif kind == "queue":
                self.dispatcher.paused = await self.queue.paused()
                self.dispatcher.notify(function, self.clock.now())
        elif kind == "trigger":
            await self.triggers.reload()

    async def _poll_cluster(self, _: str) -> None:
        """What a lost message would have said: runnable tasks, triggers, keys, pauses."""
        await self.dispatcher.refresh()
        await self.triggers.reload()
        await self.tenancy.load()
        self.dispatcher.paused = await self.queue.paused()
        self.registry.forget_all()

    def _server_info(self) -> dict[str, Any]:
        nodes = self.resources.nodes.values()
        return {"memory_mb": sum(n.memory_mb for n in nodes),
                "reserved_mb": sum(n.reserved_mb for n in nodes),
                "instances": len(self.instances.states()),
                "running_tasks": len(self.tasks.running),
                "store_ok": self.cluster.store_ok}

    def on_function_deleted(self, event: FunctionDeleted) -> None:
        self.instances.drop(event.function)
        self.node.function_deleted(event.function)
        self.admission.set_reservation(event.function, None)

    # -- tenancy ----------------------------------------------------------------------------
    async def check_deploy(self, function: str, spec: FunctionSpec) -> None:
        """A deploy within its tenant's limits, or 422 naming the limit (before any work)."""
        tenant = tenant_of(function)
        limits = self.tenancy.limits(tenant)
        if spec.memory_mb > limits.max_function_memory_mb:
            raise errors.LimitExceeded(
                "memory_limit_exceeded", f"memory_mb {spec.memory_mb} is over the tenant's"
                f" max_function_memory_mb ({limits.max_function_memory_mb})")
        if spec.timeout_s > limits.max_function_timeout_s:
            raise errors.LimitExceeded(
                "timeout_limit_exceeded", f"timeout_s {spec.timeout_s:g} is over the tenant's"
                f" max_function_timeout_s ({limits.max_function_timeout_s:g})")
        if await self.store.get_function(function) is None:
            count = len(await self.registry.functions(tenant))
            if count >= limits.max_functions:
                raise errors.LimitExceeded(
                    "max_functions_exceeded", f"tenant {tenant!r} has {count} functions, its"
                    f" max_functions")
        self.admission.check_reservation(function, spec)
        self.groups.check_function(function, spec)

    def admit_tasks(self, tenant: str, n: int) -> None:
        """Submitting ``n`` tasks: within the tenant's rate and queue, or 429."""
        self.admission.check_queue(tenant, n)
        self.admission.take(tenant, n)

    def tenant_usage(self, tenant: str) -> dict[str, Any]:
        return {"running": self.admission.running[tenant],
                "queued_tasks": self.admission.queued[tenant],
                "memory_mb": self.instances.memory[tenant]}

    async def delete_tenant(self, tenant: str, by: Principal) -> None:
        self.tenancy.get(tenant)
        if await self.registry.functions(tenant):
            raise errors.Conflict(f"tenant {tenant!r} still has functions; delete them first")
        await self.tenancy.delete_tenant(tenant, by)
        # what its functions left (records, tasks, jobs, triggers, policies) goes too: a new
        # tenant given the name must not inherit it (the audit log keeps what happened)
        await self.store.purge_tenant(tenant)
        await self.meter.usage.purge_tenant(tenant)
        await self.groups.delete_tenant(tenant, by)  # no function uses them

    async def _resync_loop(self) -> None:
        """Recount unfinished tasks per tenant now and then: tasks that end outside the
        dispatcher (expired, cancelled with their job, purged) are not counted down."""
        while True:
            await self.clock.sleep(RESYNC_S)
            try:
                await self._resync_queued()
            except Exception:
                log.exception("recounting queued tasks failed")

    async def _resync_queued(self) -> None:
        counts: Counter[str] = Counter()
        for function, n in (await self.queue.unfinished()).items():
            counts[tenant_of(function)] += n
        self.admission.queued.clear()
        self.admission.queued.update(counts)

    async def start(self) -> None:
        if self._lock_fd is None:  # closed and started again
            self._lock_data_dir()
        self.store.db.claim()
        await self.store.open()
        await self.tenancy.load()
        await self.groups.load()
        if not self.settings.insecure_no_auth:
            path = await self.tenancy.bootstrap(self.home)
            log.info("the admin key of the default tenant is in %s", path)
        await self.cluster.start()  # a heartbeat before any lease is recovered
        for fn in await self.registry.functions():
            row = await self.registry.resolve(fn.name, None)
            self.admission.set_reservation(fn.name, row.spec)
        await self._resync_queued()
        self._resync = asyncio.create_task(self._resync_loop(), name="queue-recount")
        self.scaling.start()
        await self.operations.start()  # paused queues, before anything is leased
        self.meter.start()
        await self.dispatcher.start()
        await self.jobs.start()
        await self.triggers.start()
        await self.webhooks.start()
        await self.destinations.start()
        await self.workflows.start()
        for name, active, detail in self.features.report():
            log.info("sandbox %-20s %s  %s", name, "on " if active else "off", detail)

    async def close(self) -> None:
        await background.stop(self._resync)
        await self.workflows.close()
        await self.destinations.close()
        await self.webhooks.close()
        await self.triggers.close()
        await self.jobs.close()
        await self.dispatcher.close()
        await self.cluster.close()
        await self.scaling.close()
        await self.instances.close()
        await self.groups.close()  # the groups' cgroups, now their instances are gone
        await self.events.drain()
        await self.meter.close()
        await self.node.close()
        await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_data_dir(self) -> None:
        self._lock_fd = lock_data_dir(self.settings.data)


def scaling_options(settings: Settings) -> dict[str, Any]:
    """The instance pools' scaling keyword arguments from the server settings."""
    args: dict[str, float] = {}
    for pair in filter(None, (p.strip() for p in settings.keepalive_args.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"keepalive_args takes k=v,k=v, not {settings.keepalive_args!r}")
        args[key.strip()] = float(value)
    scaler = ScalerConfig(
        target_utilization=settings.target_utilization,
        stable_window_s=settings.stable_window_s, panic_window_s=settings.panic_window_s,
        scale_to_zero_grace_s=settings.scale_to_zero_grace_s,
        tick_s=settings.reap_interval_s,
    )
    return {"policy": make_policy(settings.keepalive_policy, **args), "scaler": scaler,
            "lead_margin_s": settings.prewarm_lead_s}


def price_book(settings: Settings) -> PriceBook:
    return PriceBook(gb_s=settings.price_gb_s,
                     per_million_requests=settings.price_per_million_requests,
                     reserved_gb_month=settings.price_reserved_gb_month,
                     spot_discount=settings.price_spot_discount)


def default_limits(settings: Settings) -> EffectiveLimits:
    return EffectiveLimits(
        max_concurrency=settings.tenant_max_concurrency,
        rate_per_s=settings.tenant_rate_per_s, burst=settings.tenant_burst,
        max_queued_tasks=settings.tenant_max_queued_tasks,
        max_functions=settings.tenant_max_functions,
        max_memory_mb=settings.tenant_max_memory_mb,
        max_function_memory_mb=settings.tenant_max_function_memory_mb,
        max_function_timeout_s=settings.tenant_max_function_timeout_s)
