"""A node -> count mapping kept as a few groups of nodes that share a count.

A reservation holds threads (and new pods) per node on every node its change may reach: a
Shared cell of 50 replicas on a fleet of 5,000 nodes holds the same worst case on all
5,000. As plain dicts, two such maps cost about 290 KiB a reservation, so a burst of a few
thousand admitted cells held most of a gigabyte until their pods were bound. Grouped by
count, with each group's node set shared between reservations (`NodeSetInterner`: the
decisions of one burst see the same receiving nodes), a reservation costs a few hundred
bytes. Reading a node is one set lookup a group; iterating is as a dict's.

No cellguard imports: a leaf.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

# A map smaller than this, or with more distinct counts, stays a dict: grouping saves
# nothing there, and a lookup walks every group.
GROUP_FROM = 64
GROUPS_AT_MOST = 8


class NodeCounts(Mapping[str, int]):
    """node -> count, as (count, nodes) groups; the groups' node sets are disjoint."""

    __slots__ = ("_groups", "_size")

    def __init__(self, groups: tuple[tuple[int, frozenset[str]], ...]) -> None:
        self._groups = groups
        self._size = sum(len(nodes) for _count, nodes in groups)

    @property
    def groups(self) -> tuple[tuple[int, frozenset[str]], ...]:
        return self._groups

    def __getitem__(self, node: str) -> int:
        for count, nodes in self._groups:
            if node in nodes:
                return count
        raise KeyError(node)

    def __contains__(self, node: object) -> bool:
        return any(node in nodes for _count, nodes in self._groups)

    def __iter__(self) -> Iterator[str]:
        for _count, nodes in self._groups:
            yield from nodes

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"NodeCounts({dict(self)!r})"


class NodeSetInterner:
    """Gives back an equal node set seen recently instead of a new one (the last `keep`)."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._seen: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()

    def __call__(self, nodes: frozenset[str]) -> frozenset[str]:
        found = self._seen.get(nodes)
        if found is not None:
            self._seen.move_to_end(nodes)
            return found
        self._seen[nodes] = nodes
        if len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        return nodes


def grouped(counts: Mapping[str, int], intern: NodeSetInterner) -> Mapping[str, int]:
    """`counts` as `NodeCounts` when that is smaller, else as it is."""
    if isinstance(counts, NodeCounts) or len(counts) < GROUP_FROM:
        return counts
    by_count: dict[int, list[str]] = {}
    for node, count in counts.items():
        by_count.setdefault(count, []).append(node)
        if len(by_count) > GROUPS_AT_MOST:
            return counts
    return NodeCounts(tuple((count, intern(frozenset(nodes))) for count, nodes in by_count.items()))
