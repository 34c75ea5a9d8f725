"""Wires the components of one faasbox server together (what ``faasbox server`` runs)."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from faasbox import errors
from faasbox.autoscaler import ScalerConfig, make_policy
from faasbox.clock import Clock, SystemClock
from faasbox.codestore import CodeStore, zip_folder
from faasbox.config import Settings
from faasbox.dispatcher import Dispatcher, Policies, TaskLifecycle
from faasbox.events import (
    Events,
    FunctionDeleted,
    FunctionDeployed,
    InvocationFinished,
    ScheduleChanged,
    SlotReleased,
    TaskFinished,
)
from faasbox.invoker import Invoker
from faasbox.metrics import Metrics
from faasbox.node import NodeService, SandboxFeatures, detect
from faasbox.registry import Registry
from faasbox.resources import Node, ResourceManager
from faasbox.scheduler import InstancePools, ScalingLoop, Scheduler
from faasbox.spec import FunctionSpec
from faasbox.stack import load_stack
from faasbox.store import SqliteStore
from faasbox.store.sqlite_queue import SqliteTaskQueue
from faasbox.store.sqlite_triggers import SqliteTriggerStore
from faasbox.triggers.chains import Chains
from faasbox.triggers.cron import TriggerSpec, check_trigger_name
from faasbox.triggers.jobs import JobService
from faasbox.triggers.service import TriggerService

log = logging.getLogger(__name__)


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
        data.chmod(0o711)  # instances may traverse to code/, not list
        self.store = SqliteStore(data / "faasbox.db", settings.sqlite_synchronous)
        self.features: SandboxFeatures = detect(data, settings.sandbox, settings.start_mode)
        self.node = NodeService(data, self.features, settings.sandbox_uid_base,
                                self.features.start_mode)
        self.code = CodeStore(data)
        self.registry = Registry(self.store, self.code, self.node, self.events, self.clock)
        self.resources = ResourceManager(
            [Node("local", settings.node_memory_mb, os.cpu_count() or 1)])
        self.instances = InstancePools(self.registry, self.node, self.resources, self.clock,
                                       **scaling_options(settings))
        self.scheduler = Scheduler(self.instances, self.events, self.clock,
                                   acquire_timeout_s=settings.acquire_timeout_s)
        self.metrics = Metrics(self.instances.states)
        self.invoker = Invoker(self.scheduler, self.store, self.metrics, self.events, self.clock)
        self.queue = SqliteTaskQueue(self.store)
        self.trigger_store = SqliteTriggerStore(self.store)
        self.policies = Policies(self.queue, self.trigger_store, self.clock)
        self.tasks = TaskLifecycle(self.queue, self.registry, self.invoker, self.policies,
                                   self.events, self.clock)
        self.dispatcher = Dispatcher(
            self.queue, self.registry, self.scheduler, self.tasks, self.policies, self.clock,
            dedup_window_s=settings.idempotency_window_s,
            retention_s=settings.task_retention_s,
            sweep_interval_s=settings.reap_interval_s,
        )
        self.scaling = ScalingLoop(self.instances, self.scheduler, self.registry, self.clock,
                                   interval_s=settings.reap_interval_s,
                                   backlog=self.dispatcher.backlog)
        self.jobs = JobService(self.trigger_store, self.queue, self.dispatcher, self.tasks,
                               self.registry, self.clock,
                               sweep_interval_s=max(1.0, settings.reap_interval_s))
        self.triggers = TriggerService(self.trigger_store, self.queue, self.dispatcher,
                                       self.tasks, self.jobs, self.registry, self.events,
                                       self.clock)
        self._subscribe()
        self._lock_fd: int | None = None

    def _subscribe(self) -> None:
        on = self.events.subscribe
        on(InvocationFinished, Chains(self.dispatcher).on_invocation)
        on(TaskFinished, self.jobs.on_task_finished)
        on(TaskFinished, self.triggers.on_task_finished)
        on(SlotReleased, self.dispatcher.on_slot_released)
        on(ScheduleChanged, self.scaling.on_schedule)  # pre-warm before fires
        on(FunctionDeployed, self.node.on_function_deployed)
        on(FunctionDeleted, self.triggers.on_function_deleted)
        on(FunctionDeleted, self.on_function_deleted)

    def on_function_deleted(self, event: FunctionDeleted) -> None:
        self.instances.drop(event.function)
        self.node.function_deleted(event.function)

    async def start(self) -> None:
        self._lock_data_dir()
        await self.store.open()
        self.scaling.start()
        await self.dispatcher.start()
        await self.jobs.start()
        await self.triggers.start()
        for name, active, detail in self.features.report():
            log.info("sandbox %-20s %s  %s", name, "on " if active else "off", detail)

    async def close(self) -> None:
        await self.triggers.close()
        await self.jobs.close()
        await self.dispatcher.close()
        await self.scaling.close()
        await self.instances.close()
        await self.events.drain()
        await self.node.close()
        await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_data_dir(self) -> None:
        """One server per data dir: the queue's leases assume it."""
        path = self.settings.data / "server.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.Unavailable(
                f"another faasbox server is using {self.settings.data}") from None
        self._lock_fd = fd

    async def deploy_stack(self, path: Path) -> list[str]:
        """Deploy every function of a stack file (``faasbox server --deploy``)."""
        done = []
        for item in load_stack(path):
            spec = FunctionSpec(**item.spec)
            result = await self.registry.deploy(item.name, spec, zip_folder(item.path))
            done.append(f"{item.name} v{result.version.version}")
            for trigger, body in item.triggers.items():
                try:
                    tspec = TriggerSpec(**body)
                    check_trigger_name(trigger)
                except ValueError as exc:
                    raise errors.InvalidSpec(f"{item.name} trigger {trigger!r}: {exc}") from None
                await self.triggers.put(item.name, trigger, tspec, create_only=False)
                done.append(f"{item.name} trigger {trigger} ({tspec.cron})")
        return done


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
