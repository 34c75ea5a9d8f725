"""Wires the components of one faasbox server together (what ``faasbox server`` runs)."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from faasbox import errors
from faasbox.autoscaler.planner import scaling_options
from faasbox.clock import Clock, SystemClock
from faasbox.codestore import CodeStore, zip_folder
from faasbox.config import Settings
from faasbox.dispatcher import Dispatcher
from faasbox.invoker import Invoker
from faasbox.metrics import Metrics
from faasbox.node import NodeService, SandboxFeatures, detect
from faasbox.registry import Registry
from faasbox.resources import Node, ResourceManager
from faasbox.scheduler import Scheduler
from faasbox.spec import validate_spec, validation_text
from faasbox.stack import StackItem, load_stack
from faasbox.store import SqliteStore
from faasbox.store.sqlite_queue import SqliteTaskQueue
from faasbox.store.sqlite_triggers import SqliteTriggerStore
from faasbox.triggers.chains import Chains
from faasbox.triggers.cron import TriggerSpec, check_trigger_name
from faasbox.triggers.jobs import JobService
from faasbox.triggers.service import TriggerService

log = logging.getLogger(__name__)


class Platform:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        # absolute: instances resolve code paths from their own working directory
        settings = dataclasses.replace(settings, data=settings.data.resolve())
        self.settings = settings
        self.clock = clock or SystemClock()
        data = settings.data
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o711)  # instances may traverse to code/, not list
        self.store = SqliteStore(data / "faasbox.db", settings.sqlite_synchronous)
        self.features: SandboxFeatures = detect(data, settings.sandbox, settings.start_mode)
        self.node = NodeService(data, self.features, settings.sandbox_uid_base,
                                self.features.start_mode)
        self.code = CodeStore(data)
        self.registry = Registry(self.store, self.code, self.node, self.clock)
        self.resources = ResourceManager(
            [Node("local", settings.node_memory_mb, os.cpu_count() or 1)])
        self.scheduler = Scheduler(
            self.registry, self.node, self.resources,
            acquire_timeout_s=settings.acquire_timeout_s,
            reap_interval_s=settings.reap_interval_s,
            clock=self.clock, **scaling_options(settings),
        )
        self.metrics = Metrics(self._instance_states)
        self.invoker = Invoker(self.scheduler, self.store, self.metrics, self.clock)
        self.queue = SqliteTaskQueue(self.store)
        self.dispatcher = Dispatcher(
            self.queue, self.registry, self.scheduler, self.invoker, self.clock,
            dedup_window_s=settings.idempotency_window_s,
            retention_s=settings.task_retention_s,
            sweep_interval_s=settings.reap_interval_s,
        )
        self.trigger_store = SqliteTriggerStore(self.store)
        self.jobs = JobService(self.trigger_store, self.queue, self.dispatcher, self.registry,
                               self.clock, sweep_interval_s=max(1.0, settings.reap_interval_s))
        self.triggers = TriggerService(self.trigger_store, self.queue, self.dispatcher,
                                       self.jobs, self.registry, self.clock)
        self.invoker.after_success = Chains(self.dispatcher).after_success
        self.triggers.on_schedule = self.scheduler.set_known_fires  # pre-warm before fires
        self.scheduler.backlog = self._backlog
        self._lock_fd: int | None = None

    async def _backlog(self, function: str) -> int:
        """Runnable async tasks of a function (the autoscaler's queue depth): queued ones, and
        retries once the earliest is due (approximate: counts are per status)."""
        if not self.dispatcher.stats(function)["ready"]:
            return 0
        counts = await self.queue.counts(function)
        queued, retrying = counts.get("queued", 0), counts.get("retry_wait", 0)
        if retrying and not queued:
            due = await self.queue.next_run_at(function)
            return retrying if due is not None and due <= self.clock.now() else 0
        return queued

    def _instance_states(self) -> list[tuple[str, str]]:
        return [(p.function, i.state) for p in self.scheduler.pools.values()
                for i in p.instances]

    async def start(self) -> None:
        self._lock_data_dir()
        await self.store.open()
        self.scheduler.start()
        await self.dispatcher.start()
        await self.jobs.start()
        await self.triggers.start()
        for name, active, detail in self.features.report():
            log.info("sandbox %-20s %s  %s", name, "on " if active else "off", detail)

    async def close(self) -> None:
        await self.triggers.close()
        await self.jobs.close()
        await self.dispatcher.close()
        await self.scheduler.close()
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
        """Deploy every function of a stack file (``faasbox server --deploy``).

        A function that cannot be deployed (its requirements do not install, it does not load,
        a bad spec or trigger) is logged as one line and the others are deployed; a function
        whose code and spec equal its latest version's keeps that version. Returns a line per
        function and trigger deployed.
        """
        done: list[str] = []
        problems: list[tuple[str, str]] = []
        try:
            items = load_stack(path, problems)
        except errors.FaasboxError as exc:
            log.error("cannot deploy the stack %s: %s", path, one_line(exc.message))
            return done
        for name, message in problems:
            log.error("cannot deploy %s: %s", name, one_line(message))
        for item in items:
            try:
                done += await self._deploy_item(item)
            except Exception as exc:  # one function's failure must not stop the server
                message = exc.message if isinstance(exc, errors.FaasboxError) else str(exc)
                log.error("cannot deploy %s: %s", item.name, one_line(message))
                log.debug("the deploy of %s failed", item.name, exc_info=True)
        return done

    async def _deploy_item(self, item: StackItem) -> list[str]:
        spec = validate_spec(item.spec)
        triggers = {name: _trigger_spec(name, body) for name, body in item.triggers.items()}
        result = await self.registry.deploy(item.name, spec, zip_folder(item.path))
        version = result.version.version
        done = [f"{item.name} unchanged (v{version})" if result.unchanged
                else f"deployed {item.name} v{version}"]
        for name, tspec in triggers.items():
            await self.triggers.put(item.name, name, tspec, create_only=False)
            done.append(f"deployed {item.name} trigger {name} ({tspec.cron})")
        return done


def _trigger_spec(name: str, body: dict[str, Any]) -> TriggerSpec:
    try:
        check_trigger_name(name)
        return TriggerSpec(**body)
    except ValidationError as exc:
        raise errors.InvalidSpec(f"trigger {name!r}: {validation_text(exc)}") from None
    except ValueError as exc:
        raise errors.InvalidSpec(f"trigger {name!r}: {exc}") from None


def one_line(message: str) -> str:
    """A multi-line error message (pip's output) as one line: its first line and its last
    ``ERROR:`` line (or its last line)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    errors_ = [ln for ln in lines[1:] if ln.startswith("ERROR:")]
    return f"{lines[0].rstrip(':')}: {(errors_ or lines)[-1]}"
