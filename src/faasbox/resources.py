"""Node capacity and memory reservations (the ResourceManager).

Every instance reserves its ``memory_mb`` on a node before it starts and gives it back when it
stops; what does not fit is refused, so the scheduler can evict an idle instance or wait.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Node:
    name: str
    memory_mb: int
    cores: int
    reserved_mb: int = 0

    @property
    def free_mb(self) -> int:
        return self.memory_mb - self.reserved_mb


class ResourceManager:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}

    def fits_anywhere(self, memory_mb: int) -> bool:
        """Whether an instance of this size could ever be placed (ignoring what is in use)."""
        return any(n.memory_mb >= memory_mb for n in self.nodes.values())

    def reserve(self, memory_mb: int) -> Node | None:
        """Place ``memory_mb`` on the node with the least free memory that still fits it
        (best fit keeps large holes for large instances); None when nothing fits now."""
        fitting = [n for n in self.nodes.values() if n.free_mb >= memory_mb]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: n.free_mb)
        node.reserved_mb += memory_mb
        return node

    def release(self, node: Node, memory_mb: int) -> None:
        node.reserved_mb = max(0, node.reserved_mb - memory_mb)

    def describe(self) -> list[dict[str, int | str]]:
        return [
            {"name": n.name, "memory_mb": n.memory_mb, "reserved_mb": n.reserved_mb,
             "cores": n.cores}
            for n in self.nodes.values()
        ]
