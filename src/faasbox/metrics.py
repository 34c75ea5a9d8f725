"""Prometheus metrics, on a registry owned by one server (no global state)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from faasbox.tenancy.names import display, tenant_of


def labels(function: str) -> tuple[str, str]:
    """The ``tenant`` and ``function`` labels of a qualified function name."""
    return tenant_of(function), display(function)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
           300, 900)


class _InstanceCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily("faasbox_instances", "Instances by function and state",
                                   labels=["tenant", "function", "state"])
        for (function, state), n in sorted(Tally(self._states()).items()):
            family.add_metric([tenant_of(function), display(function), state], n)
        yield family


class _StoreCollector(Collector):
    def __init__(self, commits: Callable[[], int], sweeps: Callable[[], int]) -> None:
        self._commits = commits
        self._sweeps = sweeps

    def collect(self) -> Iterable[Any]:
        yield CounterMetricFamily("faasbox_store_commits", "Transactions the store's writer"
                                  " committed (a group of writes each)", value=self._commits())
        yield CounterMetricFamily("faasbox_task_sweeps", "Sweeps for lost leases and expired"
                                  " tasks", value=self._sweeps())


class _TaskCollector(Collector):
    """Queue depth, oldest-task age and retained tasks by status, from a snapshot the
    ``/metrics`` route refreshes from the store before it renders."""

    def __init__(self) -> None:
        self.depth: dict[str, tuple[int, float]] = {}
        self.states: dict[tuple[str, str], int] = {}
        self.paused: set[str] = set()
        self.now = 0.0

    def collect(self) -> Iterable[Any]:
        depth = GaugeMetricFamily("faasbox_task_queue_depth", "Runnable and waiting tasks",
                                  labels=["tenant", "function"])
        age = GaugeMetricFamily("faasbox_task_queue_oldest_age_seconds",
                                "Age of the oldest runnable or waiting task",
                                labels=["tenant", "function"])
        paused = GaugeMetricFamily("faasbox_task_queue_paused", "1 while a queue is paused",
                                   labels=["tenant", "function"])
        for function, (n, oldest) in sorted(self.depth.items()):
            depth.add_metric(list(labels(function)), n)
            age.add_metric(list(labels(function)), max(0.0, self.now - oldest))
        for function in sorted(self.paused):
            paused.add_metric(list(labels(function)), 1)
        states = GaugeMetricFamily("faasbox_tasks_finished", "Finished tasks kept (task"
                                   " retention) by final state", labels=["tenant", "function",
                                                                        "state"])
        for (function, state), n in sorted(self.states.items()):
            states.add_metric([*labels(function), state], n)
        yield from (depth, age, paused, states)


class Metrics:
    def __init__(self, instance_states: Callable[[], Iterable[tuple[str, str]]],
                 store_commits: Callable[[], int] = lambda: 0,
                 sweeps: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store_commits, sweeps))
        self.invocations = Counter(
            "faasbox_invocations", "Invocations by function and status",
            ["tenant", "function", "status"], registry=self.registry)
        self.cold_starts = Counter(
            "faasbox_cold_starts", "Invocations that started an instance",
            ["tenant", "function"], registry=self.registry)
        self.throttles = Counter(
            "faasbox_throttles", "Invocations refused with 429", ["tenant", "function"],
            registry=self.registry)
        self.duration = Histogram(
            "faasbox_invocation_duration_seconds", "Handler duration", ["tenant", "function"],
            buckets=BUCKETS, registry=self.registry)
        self.registry.register(_InstanceCollector(instance_states))
        self.deliveries = Counter(
            "faasbox_deliveries", "Destination deliveries by type and outcome (webhook"
            " attempts: delivered, retry, failed)", ["type", "outcome"], registry=self.registry)
        self.redrives = Counter(
            "faasbox_redrives", "Tasks redriven", ["tenant", "function"], registry=self.registry)
        self.tasks = _TaskCollector()
        self.registry.register(self.tasks)
        # metering (docs/cost.md); jobs by state are read from the store at each scrape
        self.gb_seconds = Counter(
            "faasbox_gb_seconds", "Billed GB-seconds", ["tenant", "function"],
            registry=self.registry)
        self.cold_start_latency = Histogram(
            "faasbox_cold_start_seconds", "Time to start an instance for a cold start",
            ["tenant", "function"], buckets=BUCKETS, registry=self.registry)
        self.jobs = Gauge("faasbox_jobs", "Jobs by state", ["tenant", "function", "state"],
                          registry=self.registry)
