"""The thread model: how many OS threads one pod of a cell holds."""

from __future__ import annotations


def threads_per_pod(base: int, per_peer: int, replicas: int) -> int:
    """Threads one pod holds when the cell has `replicas` pods.

    Each pod keeps `per_peer` threads for every *other* pod of its cell (the Kinesis
    pattern), so a cell's total grows with the square of its size. A cell of 0 replicas
    has no pods and so no threads.
    """
    if replicas <= 0:
        return 0
    return base + per_peer * (replicas - 1)
