"""Task policies: a function's (changeable without a deploy) and a job's shards' own."""

from __future__ import annotations

from faasbox.clock import Clock
from faasbox.store.queue import TaskPolicy, TaskQueue, TaskRow
from faasbox.store.triggers import TriggerStore


class Policies:
    def __init__(self, queue: TaskQueue, jobs: TriggerStore, clock: Clock) -> None:
        self.queue = queue
        self.jobs = jobs
        self.clock = clock
        self._functions: dict[str, TaskPolicy] = {}
        self._jobs: dict[str, TaskPolicy] = {}

    async def of_function(self, function: str) -> TaskPolicy:
        policy = self._functions.get(function)
        if policy is None:
            policy = self._functions[function] = await self.queue.get_policy(function)
        return policy

    async def put(self, function: str, policy: TaskPolicy) -> None:
        await self.queue.put_policy(function, policy, self.clock.now())
        self._functions[function] = policy

    async def of_task(self, task: TaskRow) -> TaskPolicy:
        """The retry policy that applies to ``task``: its job's for a shard, else its
        function's."""
        if task.job_id is not None:
            policy = self._jobs.get(task.job_id)
            if policy is None:
                job = await self.jobs.get_job(task.job_id)
                if job is not None and job.spec.get("retry") is not None:
                    policy = self._jobs[task.job_id] = TaskPolicy.model_validate(
                        job.spec["retry"])
            if policy is not None:
                return policy
        return await self.of_function(task.function)

    def forget(self, function: str) -> None:
        """Read ``function``'s policy again on next use (another server changed it)."""
        self._functions.pop(function, None)

    def forget_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
