"""When a cell's change has landed: its reservation can go, its spare pool nodes can leave.

A reservation holds threads for pods still to come; releasing it early lets another cell
spend them (an overcommit). Releasing it late only refuses more than needed for a moment.
So "landed" is judged strictly, from the cache alone.
"""

from __future__ import annotations

import datetime

from cellguard.api.v1alpha1 import Isolation
from cellguard.budget import CellKey, is_pool_label, pool_label_key, pool_label_value
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import ClusterState


def release_if_placed(state: ClusterState, ledger: ReservationLedger, cell: CellKey) -> bool:
    """Drop the cell's reservation once nothing it holds threads for is still to come.

    That is when the cell's pods are all bound, none is terminating, at least the reserved
    size (or the smaller size the cell asks for now) of them run, and the Deployment asks
    for at least that many. Counting bound pods alone is not enough: after 8 -> 2 -> 5 the
    terminating pods of the scale-down make 8 bound while 3 new pods are still to come, and
    a release then would let another cell spend their threads (seen as an overcommit in
    the concurrent scale-up test).
    """
    held = ledger.get(cell)
    if held is None:
        return False
    record = state.cells.get(cell)
    target = held.target_replicas
    if record is not None:
        target = min(target, record.spec.replicas)
    placed = state.pods_in_place(cell)
    settled = (
        placed is not None and placed >= target and (state.deployment_replicas(cell) or 0) >= target
    )
    if settled:
        ledger.release(cell)
    return settled


def is_settled(
    state: ClusterState, ledger: ReservationLedger, cell: CellKey, now: datetime.datetime
) -> bool:
    """Every pod the cell asks for exists, is bound and none is terminating, its Deployment
    is at its size, and no reservation holds for it."""
    record = state.cells.get(cell)
    if record is None:
        return False
    replicas = record.spec.replicas
    held = ledger.get(cell)
    return (
        (held is None or held.expires_at <= now)
        and state.deployment_replicas(cell) == replicas
        and state.pods_in_place(cell) == replicas
    )


def releasable_pool_labels(
    state: ClusterState, ledger: ReservationLedger, now: datetime.datetime
) -> list[tuple[str, str]]:
    """(node, pool label) pairs whose node its cell no longer needs.

    A node leaves a pool when no NodeExclusive cell of that name exists any more, or when
    its cell is settled (`is_settled`) and has no pod on the node. With maxSkew 1 a settled
    cell with an empty pool node has at most one pod a node, so a rollout or a replaced pod
    still finds room in the rest of its pool.
    """
    owners = {
        (pool_label_key(r.spec.service), pool_label_value(r.namespace, r.name)): r
        for r in state.cells.values()
        if r.spec.isolation is Isolation.NODE_EXCLUSIVE
    }
    unreadable = {pool_label_value(k.namespace, k.name) for k in state.cell_errors}
    hosted: dict[str, set[str]] = {}  # node -> pool values of the cells with pods there
    for cell, per_node in state.placement.items():
        value = pool_label_value(cell.namespace, cell.name)
        for name, count in per_node.items():
            if count > 0:
                hosted.setdefault(name, set()).add(value)
    released = []
    for name, node in sorted(state.nodes.items()):
        for key, value in node.labels.items():
            if not is_pool_label(key) or value in unreadable:
                continue
            if value in hosted.get(name, ()):
                continue
            record = owners.get((key, value))
            if record is None or is_settled(state, ledger, record.key, now):
                released.append((name, key))
    return released
