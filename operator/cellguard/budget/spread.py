"""Where new pods of a cell can land under the hostname spread constraint.

The operator gives every cell's pods a topology spread over `kubernetes.io/hostname` with
maxSkew 1 and DoNotSchedule, so each new pod goes to a node that has the fewest pods of
the cell among the eligible nodes: the scheduler water-fills. Which of several tied nodes
gets a pod is the scheduler's choice; we never guess it and assume the worst instead:
after k new pods the water line is the smallest level L with Σ max(0, L - cᵢ) ≥ k, and
any node below L may end up at L. So node i may receive up to max(0, L - cᵢ) new pods.

`WaterFill` answers L for any k in O(log D) after an O(D log D) set-up, D being the
number of distinct per-node counts (at most the cell's size + 1), never per pod.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping


class WaterFill:
    """The water line of new pods over eligible nodes, from the cell's counts per node."""

    def __init__(self, histogram: Mapping[int, int]) -> None:
        """`histogram`: pods of the cell on a node -> how many eligible nodes have that many."""
        levels = sorted((count, nodes) for count, nodes in histogram.items() if nodes > 0)
        self.node_count = sum(nodes for _, nodes in levels)
        self._values: list[int] = []  # distinct counts, ascending
        self._nodes_upto: list[int] = []  # nodes with at most values[j] pods
        self._pods_upto: list[int] = []  # their pods
        nodes_so_far = pods_so_far = 0
        for count, nodes in levels:
            nodes_so_far += nodes
            pods_so_far += count * nodes
            self._values.append(count)
            self._nodes_upto.append(nodes_so_far)
            self._pods_upto.append(pods_so_far)
        # capacity[j]: new pods that raise every node at or below values[j] to values[j+1].
        self._capacity = [
            self._nodes_upto[j] * self._values[j + 1] - self._pods_upto[j]
            for j in range(len(self._values) - 1)
        ]

    def level(self, new_pods: int) -> int:
        """The water line after `new_pods` pods: no node ends above it. 0 when none."""
        if new_pods <= 0:
            return 0
        if self.node_count == 0:
            raise ValueError("no eligible node to place pods on")
        j = bisect_left(self._capacity, new_pods)  # first j that holds them all
        nodes, pods = self._nodes_upto[j], self._pods_upto[j]
        return -(-(new_pods + pods) // nodes)  # ceil

    @staticmethod
    def received(level: int, pods_on_node: int) -> int:
        """New pods a node with `pods_on_node` pods of the cell may receive."""
        return max(0, level - pods_on_node)
