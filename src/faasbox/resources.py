"""Node capacity and memory reservations (the ResourceManager).

Every instance reserves its ``memory_mb`` on a node before it starts and gives it back when it
stops; what does not fit is refused, so the scheduler can evict an idle instance or wait.

A service group carves a pool of memory out of a node (:meth:`ResourceManager.carve`): the
node counts the whole pool as reserved, so instances outside the group can never use it, and
the group's instances reserve from the pool only (``reserve(..., within=pool)``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class Node:
    name: str
    memory_mb: int
    cores: int
    reserved_mb: int = 0
    parent: Node | None = None  # set on a pool carved out of a node (a service group's)
    reservations: int = 0  # instances holding memory here

    @property
    def free_mb(self) -> int:
        return self.memory_mb - self.reserved_mb


class ResourceManager:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.pools: dict[str, Node] = {}  # carved pools by name (service groups)

    def fits_anywhere(self, memory_mb: int) -> bool:
        """Whether an instance of this size could ever be placed (ignoring what is in use)."""
        return any(n.memory_mb >= memory_mb for n in self.nodes.values())

    def reserve(self, memory_mb: int, within: Node | None = None) -> Node | None:
        """Place ``memory_mb`` on the node with the least free memory that still fits it
        (best fit keeps large holes for large instances), or in the pool ``within``; None
        when nothing fits now."""
        if within is not None:
            if self.pools.get(within.name) is not within or within.free_mb < memory_mb:
                return None
            within.reserved_mb += memory_mb
            within.reservations += 1
            return within
        fitting = [n for n in self.nodes.values() if n.free_mb >= memory_mb]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: n.free_mb)
        node.reserved_mb += memory_mb
        node.reservations += 1
        return node

    def release(self, node: Node, memory_mb: int) -> None:
        node.reserved_mb = max(0, node.reserved_mb - memory_mb)
        node.reservations = max(0, node.reservations - 1)

    # -- carved pools (service groups) ------------------------------------------------------
    def carvable_mb(self) -> int:
        """The largest pool that could ever be carved: a node's memory minus its pools."""
        return max((n.memory_mb - self._carved_mb(n) for n in self.nodes.values()), default=0)

    def _carved_mb(self, node: Node) -> int:
        return sum(p.memory_mb for p in self.pools.values() if p.parent is node)

    def carve(self, name: str, memory_mb: int) -> Node | None:
        """Reserve ``memory_mb`` of a node's free memory as the pool ``name`` (best fit);
        None when no node has that much free now."""
        if name in self.pools:
            raise ValueError(f"pool {name!r} exists")
        fitting = [n for n in self.nodes.values() if n.free_mb >= memory_mb]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: n.free_mb)
        node.reserved_mb += memory_mb
        pool = self.pools[name] = Node(name, memory_mb, node.cores, parent=node)
        return pool

    def resize(self, pool: Node, memory_mb: int) -> bool:
        """Grow or shrink a pool; False when its node has not the free memory to grow it or
        its instances hold more than the new size."""
        assert pool.parent is not None and self.pools.get(pool.name) is pool
        delta = memory_mb - pool.memory_mb
        if (delta > 0 and pool.parent.free_mb < delta) or pool.reserved_mb > memory_mb:
            return False
        pool.parent.reserved_mb += delta
        pool.memory_mb = memory_mb
        return True

    def uncarve(self, pool: Node) -> None:
        """Give a pool's memory back to its node (its instances must be gone)."""
        if self.pools.get(pool.name) is pool and pool.parent is not None:
            del self.pools[pool.name]
            pool.parent.reserved_mb = max(0, pool.parent.reserved_mb - pool.memory_mb)

    def describe(self) -> list[dict[str, int | str]]:
        return [
            {"name": n.name, "memory_mb": n.memory_mb, "reserved_mb": n.reserved_mb,
             "cores": n.cores, "service_groups_mb": self._carved_mb(n)}
            for n in self.nodes.values()
        ]
