"""Instances on a node: starting, sandboxing, talking to and stopping worker processes."""

from faasbox.node.calls import InvokeResult
from faasbox.node.instance import Instance
from faasbox.node.sandbox import SandboxFeatures, detect
from faasbox.node.service import NodeService

__all__ = ["Instance", "InvokeResult", "NodeService", "SandboxFeatures", "detect"]
