"""A snapshot with one change applied, its figures carried over from the parent.

A burst of decisions changes one reservation or one cell at a time. Rebuilding the
per-node figures (see `usage`) for thousands of nodes after each would cost more than the
decisions, so the new snapshot gets them from its parent, adjusted on the nodes that
changed. Indexes that depend on nothing the change touches are kept as they are
(`ClusterSnapshot.replaced`); the ones below are carried by hand or rebuilt on use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from cellguard.api.v1alpha1 import ThreadBudgetPolicySpec
from cellguard.budget.eligibility import (
    carry_cell_change,
    carry_claims,
    carry_label_change,
    reads_labels,
)
from cellguard.budget.snapshot import (
    CellKey,
    CellView,
    ClusterSnapshot,
    Input,
    PodPlacement,
    ReservationLike,
)
from cellguard.budget.threads import threads_for
from cellguard.budget.usage import (
    MODELLED,
    POLICY_NODES,
    RESERVED,
    SLACK,
    Reserved,
    used_threads,
)


def with_cell(snapshot: ClusterSnapshot, cell: CellView) -> ClusterSnapshot:
    """The snapshot with one cell added or replaced (e.g. the cell being created)."""
    child = snapshot.replaced({Input.CELLS}, cells={**snapshot.cells, cell.key: cell})
    _carry_cell_change(snapshot, child, cell.key)
    return child


def without_cell(snapshot: ClusterSnapshot, key: tuple[str, str]) -> ClusterSnapshot:
    """The snapshot without the cell `key` (deleted, or no longer valid)."""
    key = CellKey(*key)
    if key not in snapshot.cells:
        return snapshot
    cells = {k: v for k, v in snapshot.cells.items() if k != key}
    child = snapshot.replaced({Input.CELLS}, cells=cells)
    _carry_cell_change(snapshot, child, key)
    return child


def with_node_labels(
    snapshot: ClusterSnapshot, name: str, labels: Mapping[str, str]
) -> ClusterSnapshot:
    """The snapshot with node `name`'s labels replaced, nothing else of it: only what
    reads the labels that changed is rebuilt (a node joining a cell's pool moves one
    label; budgets, taints and every figure stay)."""
    node = snapshot.nodes[name]
    before = node.labels
    changed = {k for k in before.keys() | labels.keys() if before.get(k) != labels.get(k)}
    if not changed:
        return snapshot
    nodes = {**snapshot.nodes, name: replace(node, labels=dict(labels))}
    child = snapshot.keeping(lambda index: not reads_labels(index, changed), nodes=nodes)
    carry_label_change(snapshot, child, name, before, labels)
    return child


def with_cell_at(snapshot: ClusterSnapshot, cell: CellView, replicas: int) -> ClusterSnapshot:
    """The snapshot with `cell` (its spec as given, e.g. a change being admitted) at
    `replicas`, keeping what the snapshot's cell of that name was observed to hold: the
    threads its pods really hold do not change with the spec."""
    known = snapshot.cells.get(cell.key)
    observed = known.observed if known is not None else cell.observed
    return with_cell(snapshot, replace(cell, replicas=replicas, observed=observed))


def with_pods(snapshot: ClusterSnapshot, pods: PodPlacement) -> ClusterSnapshot:
    """The snapshot with another placement of pods (nodes and cells unchanged)."""
    return snapshot.replaced({Input.PODS}, pods=pods)


def with_policies(
    snapshot: ClusterSnapshot, policies: Mapping[str, ThreadBudgetPolicySpec]
) -> ClusterSnapshot:
    """The snapshot under exactly these ThreadBudgetPolicies."""
    return snapshot.replaced({Input.POLICIES}, policies=dict(policies))


def with_reservations(
    snapshot: ClusterSnapshot, reservations: Iterable[ReservationLike]
) -> ClusterSnapshot:
    """The snapshot with exactly these reservations."""
    return snapshot.replaced({Input.RESERVATIONS}, reservations=tuple(reservations))


def with_reserved(
    snapshot: ClusterSnapshot, held: Iterable[ReservationLike], reserved: Reserved
) -> ClusterSnapshot:
    """The snapshot with the live ones of `held` and their figures as the caller keeps
    them: `reserved` must count every one of `held` (expired or not), as the operator's
    reservation ledger does, adjusting them on each change. O(len(held)) plus the nodes
    the figures changed on since the snapshot's own (when they share a history): the
    per-node totals are neither re-summed nor copied."""
    everything = tuple(held)
    now = snapshot.now
    live = tuple(r for r in everything if r.expires_at > now)
    reserved, _ = reserved.expired(everything, now)
    child = snapshot.replaced({Input.RESERVATIONS}, reservations=live)
    child.seed(RESERVED, reserved)
    before = snapshot.peek(RESERVED)
    if before is None:
        return child
    delta = before.total.delta_to(reserved.total)
    if delta is not None:
        _carry_slack(snapshot, child, dict.fromkeys(snapshot.policies, delta), sign=-1)
    _carry_claims(snapshot, child, before, reserved)
    return child


def with_reservation(snapshot: ClusterSnapshot, reservation: ReservationLike) -> ClusterSnapshot:
    """The snapshot with `reservation` replacing any other of the same cell."""
    return _replace_reservations(snapshot, CellKey(*reservation.cell), (reservation,))


def without_reservation(snapshot: ClusterSnapshot, cell: tuple[str, str]) -> ClusterSnapshot:
    return _replace_reservations(snapshot, CellKey(*cell), ())


def seen_at(snapshot: ClusterSnapshot, now: datetime) -> ClusterSnapshot:
    """The snapshot seen at another moment (staleness and expiry move on).

    Cheap when nothing turned stale or expired in between: the figures carry over.
    """
    child = snapshot.replaced({Input.NOW}, now=now)
    _carry_time_change(snapshot, child)
    return child


def _replace_reservations(
    snapshot: ClusterSnapshot, cell: CellKey, added: tuple[ReservationLike, ...]
) -> ClusterSnapshot:
    kept: list[ReservationLike] = []
    removed: list[ReservationLike] = []
    for reservation in snapshot.reservations:
        (removed if CellKey(*reservation.cell) == cell else kept).append(reservation)
    child = snapshot.replaced({Input.RESERVATIONS}, reservations=(*kept, *added))
    _carry_reservation_change(snapshot, child, removed, added)
    return child


# --------------------------------------------------------------------------- carrying over


def _carry_reservation_change(
    parent: ClusterSnapshot,
    child: ClusterSnapshot,
    removed: Iterable[ReservationLike],
    added: Iterable[ReservationLike],
) -> None:
    """Seed `child` (= parent with `removed` dropped and `added` held, all of one cell)
    from `parent`. One pass over the nodes the reservations cover, no more."""
    held = parent.peek(RESERVED)
    if held is None:
        return
    now = parent.now
    changed, delta = held.changed(
        [r for r in removed if r.expires_at > now],
        [r for r in added if r.expires_at > now],
        whole=[r for r in child.reservations if r.expires_at > now],
    )
    child.seed(RESERVED, changed)
    # More held on a node is less free there, under every policy alike.
    _carry_slack(parent, child, dict.fromkeys(parent.policies, delta), sign=-1)
    _carry_claims(parent, child, held, changed)


def _carry_claims(
    parent: ClusterSnapshot, child: ClusterSnapshot, before: Reserved, after: Reserved
) -> None:
    """Seed `child`'s claims index from `parent`'s (same cells), moved by the cells whose
    claims differ between the figures `before` (parent's) and `after` (child's): O(those
    cells), where rebuilding it would go through every reservation."""
    cells = before.claims.changed_keys(after.claims)
    if cells is not None:
        carry_claims(parent, child, {cell: after.claims.get(cell, ()) for cell in cells})


def _carry_cell_change(parent: ClusterSnapshot, child: ClusterSnapshot, key: CellKey) -> None:
    """Seed `child` (= parent with the cell `key` added, replaced or removed) from `parent`."""
    carry_cell_change(parent, child, key)
    held = parent.peek(RESERVED)  # the reservations are the parent's
    if held is not None:  # the cell's claims, filed under its service now
        carry_claims(parent, child, {key: held.claims.get(key, ())})
    modelled = parent.peek(MODELLED)
    if modelled is None:
        return
    before, after = parent.cells.get(key), child.cells.get(key)
    per_pod_before = threads_for(before, before.replicas) if before else 0
    per_pod_after = threads_for(after, after.replicas) if after else 0
    pods = child.pods.of_cell(key)
    if per_pod_after == per_pod_before or not pods:
        child.seed(MODELLED, modelled)  # derived values are never mutated
        _carry_slack(parent, child, {})
        return
    updated = dict(modelled)
    for node, count in pods.items():
        updated[node] = updated.get(node, 0) + (per_pod_after - per_pod_before) * count
        if not updated[node]:
            del updated[node]  # as a fresh sum leaves it
    child.seed(MODELLED, updated)
    changes: dict[str, dict[str, int]] = {}
    for policy_name in parent.policies:
        nodes = parent.peek(POLICY_NODES.of(policy_name))
        if nodes is None:
            continue
        changes[policy_name] = {
            node: used_threads(nodes.limits[node], modelled.get(node, 0))
            - used_threads(nodes.limits[node], updated.get(node, 0))
            for node in pods
            if node in nodes.limits
        }
    _carry_slack(parent, child, changes)


def _carry_time_change(parent: ClusterSnapshot, child: ClusterSnapshot) -> None:
    """Seed `child` (= parent at a later moment) with what the passing time left alone.

    Time matters in two places only: budgets turn stale, reservations expire. When neither
    happened between the two moments, every figure stands (the operator asks for the same
    snapshot "now" before each decision, and must not pay a rebuild for it); reservations
    that expired are taken off the figures, on the nodes they covered.
    """
    if child.now < parent.now:
        return  # time went back: rebuild everything on use
    held = parent.peek(RESERVED)
    delta: dict[str, int] = {}
    if held is not None:
        before = held
        if held.next_expiry is not None and held.next_expiry <= child.now:  # else O(1)
            live_then = [r for r in parent.reservations if r.expires_at > parent.now]
            held, delta = held.expired(live_then, child.now)
        child.seed(RESERVED, held)
        _carry_claims(parent, child, before, held)
    for policy_name in parent.policies:
        nodes = parent.peek(POLICY_NODES.of(policy_name))
        if nodes is None or (nodes.stale_from is not None and child.now > nodes.stale_from):
            continue
        child.seed(POLICY_NODES.of(policy_name), nodes)
        free = parent.peek(SLACK.of(policy_name))
        if free is None or held is None:
            continue
        child.seed(SLACK.of(policy_name), _less(free, delta) if delta else free)


def _less(free: dict[str, int], held_more: Mapping[str, int]) -> dict[str, int]:
    """Free threads with `held_more` (node -> more threads held) taken off."""
    updated = dict(free)
    updated.update({node: free[node] - held_more[node] for node in held_more if node in free})
    return updated


def _carry_slack(
    parent: ClusterSnapshot,
    child: ClusterSnapshot,
    changes: Mapping[str, Mapping[str, int]],
    *,
    sign: int = 1,
) -> None:
    """Give the child each policy's free threads, plus `sign` * `changes` (policy -> node
    -> threads). A policy missing from non-empty `changes` is left to be rebuilt."""
    for policy_name in parent.policies:
        free = parent.peek(SLACK.of(policy_name))
        if free is None or (changes and policy_name not in changes):
            continue
        change = changes.get(policy_name, {})
        if not change:
            child.seed(SLACK.of(policy_name), free)  # never mutated
            continue
        updated = dict(free)
        updated.update(
            {node: free[node] + sign * threads for node, threads in change.items() if node in free}
        )
        child.seed(SLACK.of(policy_name), updated)
