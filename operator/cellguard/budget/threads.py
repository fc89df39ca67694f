"""The thread model: how many OS threads one pod of a cell holds."""

from __future__ import annotations

from cellguard.budget.snapshot import CellView


def threads_per_pod(base: int, per_peer: int, replicas: int) -> int:
    """Threads one pod holds when the cell has `replicas` pods.

    Each pod keeps `per_peer` threads for every *other* pod of its cell (the Kinesis
    pattern), so a cell's total grows with the square of its size. A cell of 0 replicas
    has no pods and so no threads.
    """
    if replicas <= 0:
        return 0
    return base + per_peer * (replicas - 1)


def modelled_at_observation(cell: CellView) -> int | None:
    """What the model says a pod held when the cell's pods were observed (None: never)."""
    seen = cell.observed
    if seen is None:
        return None
    return threads_per_pod(cell.base, cell.per_peer, seen.replicas)


def threads_for(cell: CellView, replicas: int) -> int:
    """Threads the planner budgets per pod of the cell at `replicas`: its model, or - when
    its pods were seen holding more than the model says - the model scaled by how far they
    exceed it (a model that underestimates must not admit an unsafe change).

    Scaling, not adding the excess: a model whose perPeer is too low is off by more the
    larger the cell grows, and a ratio keeps up with that; for a base that is too low it
    over-budgets, which errs on the safe side until the model is fixed.
    """
    modelled = threads_per_pod(cell.base, cell.per_peer, replicas)
    seen = cell.observed
    if seen is None or replicas <= 0:
        return modelled
    expected = threads_per_pod(cell.base, cell.per_peer, seen.replicas)
    if seen.per_pod <= expected:
        return modelled
    if expected <= 0:
        return modelled + seen.per_pod
    return max(modelled, -(-modelled * seen.per_pod // expected))  # ceil
