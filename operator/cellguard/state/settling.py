"""When a cell's change has landed: its reservation shrinks and goes, its spare pool nodes
can leave.

A reservation holds threads for pods still to come; releasing it early lets another cell
spend them (an overcommit). Releasing it late only refuses more than needed for a moment.
So what is still to come is judged strictly, from the cache alone.
"""

from __future__ import annotations

import datetime
from dataclasses import replace

from cellguard.api.v1alpha1 import Isolation
from cellguard.budget import (
    CellKey,
    admitted_spec_seen,
    is_pool_label,
    may_receive,
    pool_label_key,
    pool_label_value,
    still_needed,
    threads_for,
)
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import ClusterState


def release_if_placed(state: ClusterState, ledger: ReservationLedger, cell: CellKey) -> bool:
    """Shrink the cell's reservation to what its pods still to come may need, and drop it
    once nothing it holds threads for is still to come. True when it was dropped.

    Called after every pod event of the cell. Nothing shrinks before the cache holds the
    cell's spec at the admitted change (`Reservation.generation`): until then the cache
    counts the cell's pods at the old size and the reservation holds their growth. Then,
    as pods are bound, the reservation keeps on each node only the worst case of the pods
    still to come (`budget.still_needed`): the bound ones count where they are.

    It is dropped when the cell heads for F = min(reserved size, spec size) pods and at
    least F (no more than the spec asks for) run, all bound and none terminating, with the
    Deployment at F or more. Counting bound pods alone is not enough: after 8 -> 2 -> 5 the
    terminating pods of the scale-down make 8 bound while 3 new pods are still to come, and
    a release then would let another cell spend their threads (seen as an overcommit in the
    concurrent scale-up test); nor are more bound pods than the spec asks for: until the
    cache sees those of a scale-down terminating, what comes after them is not known.
    """
    held = ledger.get(cell)
    if held is None:
        return False
    record = state.cells.get(cell)
    placed = state.pods_in_place(cell)
    deployed = state.deployment_replicas(cell) or 0
    if record is None:  # gone, or unreadable: nothing to shrink by; its pods as they were
        target = held.target_replicas
        if placed is not None and placed >= target and deployed >= target:
            ledger.release(cell)
            return True
        return False
    if not admitted_spec_seen(held, record.generation, record.spec.replicas):
        return False  # the cache still counts the cell's pods at the old size
    target = min(held.target_replicas, record.spec.replicas)
    if placed is not None and target <= placed <= record.spec.replicas and deployed >= target:
        ledger.release(cell)
        return True
    terminating = state.terminating.get(cell) or {}
    live = {
        node: count - terminating.get(node, 0)
        for node, count in (state.placement.get(cell) or {}).items()
    }
    # Most pod events move no pod (created, started, Ready): judged already. (Nodes and
    # observations changing in between only delay a shrink: holding more is safe.)
    basis = (record.generation, record.spec.replicas, frozenset(live.items()))
    if ledger.judged(cell) == basis:
        return False
    view = replace(record.view, observed=state.observation(cell))
    nodes, receives = state.nodes, may_receive(view)
    shrunk = still_needed(
        held,
        generation=record.generation,
        spec_replicas=record.spec.replicas,
        live=live,
        threads_per_pod=lambda size: threads_for(view, size),
        may_receive=lambda node: receives(nodes.get(node)),
    )
    if shrunk is not held:
        ledger.hold(shrunk)
    ledger.note_judged(cell, basis)
    return False


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
