"""Async task dispatch: leasing queued tasks onto instances (:mod:`.leasing`), the life of a
leased task (:mod:`.lifecycle`) and the policies that govern retries (:mod:`.policies`)."""

from faasbox.dispatcher.leasing import LEASE_BATCH, Dispatcher
from faasbox.dispatcher.lifecycle import TaskLifecycle
from faasbox.dispatcher.policies import Policies

__all__ = ["LEASE_BATCH", "Dispatcher", "Policies", "TaskLifecycle"]
