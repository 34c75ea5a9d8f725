"""Scheduling: instance pools (:mod:`.instances`), slot hand-out to invocations
(:mod:`.slots`) and the scaling loop (:mod:`.scaling`)."""

from faasbox.scheduler.instances import InstancePools, Pool
from faasbox.scheduler.scaling import ScalingLoop
from faasbox.scheduler.slots import Scheduler

__all__ = ["InstancePools", "Pool", "ScalingLoop", "Scheduler"]
