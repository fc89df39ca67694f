"""Threads per node: in use (observed or modelled), held by reservations, and left.

All of it is derived once per snapshot (and per policy where the policy matters) so that
a decision only looks up figures, whatever the size of the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from cellguard.api.v1alpha1 import ThreadBudgetPolicySpec
from cellguard.budget.limits import BudgetStatus, NodeLimits, margin_fraction, node_limits
from cellguard.budget.snapshot import (
    CELLS,
    NODES,
    NOW,
    PODS,
    POLICIES,
    RESERVATIONS,
    CellKey,
    ClusterSnapshot,
    ReservationLike,
)
from cellguard.budget.threads import threads_per_pod


def modelled_threads(snapshot: ClusterSnapshot) -> dict[str, int]:
    """node -> threads the managed pods on it hold by their cells' thread models.

    Observed figures lag behind pods that just started (a new pod has not opened its peer
    connections yet), so the planner counts the larger of observed and modelled.
    """

    def compute() -> dict[str, int]:
        modelled: dict[str, int] = {}
        get = modelled.get
        for key, nodes in snapshot.pods.by_cell.items():
            cell = snapshot.cells.get(key)
            if cell is None:
                continue  # a cell being deleted: its pods still show in `observed`
            per_pod = threads_per_pod(cell.base, cell.per_peer, cell.replicas)
            for node, pods in nodes.items():
                modelled[node] = get(node, 0) + per_pod * pods
        return modelled

    return snapshot.derived(_MODELLED, _MODELLED_INPUTS, compute)


_MODELLED = "usage.modelled"
_MODELLED_INPUTS = frozenset({CELLS, PODS})


@dataclass(frozen=True, slots=True)
class Reserved:
    """Threads held by admitted changes that are not applied yet (expired ones dropped)."""

    total: dict[str, int]  # node -> threads, every cell
    by_cell: dict[CellKey, dict[str, int]]  # cell -> node -> threads

    def others(self, cell: CellKey, node: str) -> int:
        """Threads other cells hold on the node (a cell's own reservation is replaced)."""
        own = self.by_cell.get(cell)
        return self.total.get(node, 0) - (own.get(node, 0) if own else 0)


def reserved_threads(snapshot: ClusterSnapshot) -> Reserved:
    def compute() -> Reserved:
        total: dict[str, int] = {}
        by_cell: dict[CellKey, dict[str, int]] = {}
        for reservation in snapshot.reservations:
            if reservation.expires_at <= snapshot.now:
                continue
            own = by_cell.setdefault(CellKey(*reservation.cell), {})
            for node, threads in reservation.threads_by_node.items():
                total[node] = total.get(node, 0) + threads
                own[node] = own.get(node, 0) + threads
        return Reserved(total, by_cell)

    return snapshot.derived(_RESERVED, _RESERVED_INPUTS, compute)


_RESERVED = "usage.reserved"
_RESERVED_INPUTS = frozenset({RESERVATIONS, NOW})


@dataclass(frozen=True, slots=True)
class PolicyNodes:
    """Every node's budget under one policy, indexed the way the planner asks."""

    policy_name: str
    policy: ThreadBudgetPolicySpec
    margin: Fraction
    limits: dict[str, NodeLimits]
    by_limit: dict[int, frozenset[str]]  # usable nodes by effective limit
    unusable: frozenset[str]  # budget unknown or stale, and no defaults to stand in
    pod_limits: tuple[tuple[int, frozenset[str]], ...]  # per-pod PID limit -> nodes, ascending
    stale_from: datetime | None  # after this moment some known budget is stale (None: never)

    def of(self, snapshot: ClusterSnapshot, node: str) -> NodeLimits:
        """The node's limits, also for a node the snapshot does not know."""
        found = self.limits.get(node)
        if found is not None:
            return found
        return node_limits(
            node, None, self.policy, snapshot.now, margin=self.margin, node_exists=False
        )


def policy_nodes(snapshot: ClusterSnapshot, policy_name: str) -> PolicyNodes:
    """Node budgets under the named policy (KeyError when there is no such policy)."""
    policy = snapshot.policies[policy_name]

    def compute() -> PolicyNodes:
        margin = margin_fraction(policy)
        limits = {
            name: node_limits(name, node.budget, policy, snapshot.now, margin=margin)
            for name, node in snapshot.nodes.items()
        }
        by_limit: dict[int, set[str]] = {}
        by_pod_limit: dict[int, set[str]] = {}
        unusable: set[str] = set()
        deadlines = [
            figures.observed_at + timedelta(seconds=policy.stale_after_seconds)
            for figures in limits.values()
            if figures.status is BudgetStatus.KNOWN and figures.observed_at is not None
        ]
        for name, figures in limits.items():
            if figures.limit is None:
                unusable.add(name)
                continue
            by_limit.setdefault(figures.limit, set()).add(name)
            if figures.pod_pids_limit is not None:
                by_pod_limit.setdefault(figures.pod_pids_limit, set()).add(name)
        return PolicyNodes(
            policy_name=policy_name,
            policy=policy,
            margin=margin,
            limits=limits,
            by_limit={limit: frozenset(names) for limit, names in by_limit.items()},
            unusable=frozenset(unusable),
            pod_limits=tuple(
                (limit, frozenset(names)) for limit, names in sorted(by_pod_limit.items())
            ),
            stale_from=min(deadlines, default=None),
        )

    return snapshot.derived(_policy_name(policy_name), _POLICY_INPUTS, compute)


_POLICY_INPUTS = frozenset({NODES, POLICIES, NOW})


def _policy_name(policy_name: str) -> str:
    return f"usage.policy:{policy_name}"


def used_threads(figures: NodeLimits, modelled: int) -> int:
    """Threads counted as in use: the larger of observed and modelled."""
    return max(figures.observed or 0, modelled)


def slack(snapshot: ClusterSnapshot, policy_name: str) -> dict[str, int]:
    """Usable node -> threads still free under the policy, after every reservation.

    free = allowed - max(observed, modelled) - reserved (all cells); the planner adds a
    cell's own reservation back on the nodes it covers.
    """

    def compute() -> dict[str, int]:
        nodes = policy_nodes(snapshot, policy_name)
        modelled = modelled_threads(snapshot)
        reserved = reserved_threads(snapshot).total
        free: dict[str, int] = {}
        for name, figures in nodes.limits.items():
            if figures.allowed is None:
                continue
            used = used_threads(figures, modelled.get(name, 0))
            free[name] = figures.allowed - used - reserved.get(name, 0)
        return free

    return snapshot.derived(_slack_name(policy_name), _SLACK_INPUTS, compute)


_SLACK_INPUTS = frozenset({NODES, CELLS, PODS, POLICIES, RESERVATIONS, NOW})
_SLACK_PREFIX = "usage.slack:"


def _slack_name(policy_name: str) -> str:
    return _SLACK_PREFIX + policy_name


# --------------------------------------------------------------------------- carrying over
#
# A burst of decisions changes one reservation or one cell at a time. Rebuilding the
# per-node figures for thousands of nodes after each would cost more than the decisions,
# so the derived snapshot gets them from its parent, adjusted on the nodes that changed.


def carry_reservation_change(
    parent: ClusterSnapshot,
    child: ClusterSnapshot,
    removed: Iterable[ReservationLike],
    added: Iterable[ReservationLike],
) -> None:
    """Seed `child` (= parent with `removed` dropped and `added` held, all of one cell)
    from `parent`. One pass over the nodes the reservations cover, no more."""
    held: Reserved | None = parent.peek(_RESERVED)
    if held is None:
        return
    live_removed = [r for r in removed if r.expires_at > parent.now]
    live_added = [r for r in added if r.expires_at > parent.now]
    delta: dict[str, int]  # node -> change of threads held
    if not live_removed and len(live_added) == 1:
        delta = dict(live_added[0].threads_by_node)  # the common case: a copy, in C
    else:
        delta = {}
        for sign, reservations in ((-1, live_removed), (1, live_added)):
            for reservation in reservations:
                for node, threads in reservation.threads_by_node.items():
                    delta[node] = delta.get(node, 0) + sign * threads
    total = dict(held.total)
    get = total.get
    # Comprehensions rather than loops of statements: this runs over thousands of nodes.
    total.update({node: get(node, 0) + change for node, change in delta.items()})
    for node in [node for node in delta if not total[node]]:
        del total[node]  # as a fresh count would have it
    by_cell = dict(held.by_cell)
    for cell in {CellKey(*r.cell) for r in (*live_removed, *live_added)}:
        mine = [
            r.threads_by_node
            for r in child.reservations
            if CellKey(*r.cell) == cell and r.expires_at > child.now
        ]
        own: dict[str, int] = dict(mine[0]) if len(mine) == 1 else {}
        for threads_by_node in mine if len(mine) > 1 else ():
            for node, threads in threads_by_node.items():
                own[node] = own.get(node, 0) + threads
        if own:
            by_cell[cell] = own
        else:
            by_cell.pop(cell, None)
    child.seed(_RESERVED, _RESERVED_INPUTS, Reserved(total, by_cell))
    # More held on a node is less free there, under every policy alike.
    _carry_slack(parent, child, dict.fromkeys(parent.policies, delta), sign=-1)


def carry_cell_change(parent: ClusterSnapshot, child: ClusterSnapshot, key: CellKey) -> None:
    """Seed `child` (= parent with the cell `key` added or replaced) from `parent`."""
    modelled: dict[str, int] | None = parent.peek(_MODELLED)
    if modelled is None:
        return
    before, after = parent.cells.get(key), child.cells.get(key)
    per_pod_before = threads_per_pod(before.base, before.per_peer, before.replicas) if before else 0
    per_pod_after = threads_per_pod(after.base, after.per_peer, after.replicas) if after else 0
    pods = child.pods.of_cell(key)
    if per_pod_after == per_pod_before or not pods:
        child.seed(_MODELLED, _MODELLED_INPUTS, modelled)  # derived values are never mutated
        _carry_slack(parent, child, {})
        return
    updated = dict(modelled)
    for node, count in pods.items():
        updated[node] = updated.get(node, 0) + (per_pod_after - per_pod_before) * count
    child.seed(_MODELLED, _MODELLED_INPUTS, updated)
    changes: dict[str, dict[str, int]] = {}
    for policy_name in parent.policies:
        nodes: PolicyNodes | None = parent.peek(_policy_name(policy_name))
        if nodes is None:
            continue
        changes[policy_name] = {
            node: used_threads(nodes.limits[node], modelled.get(node, 0))
            - used_threads(nodes.limits[node], updated[node])
            for node in pods
            if node in nodes.limits
        }
    _carry_slack(parent, child, changes)


def carry_time_change(parent: ClusterSnapshot, child: ClusterSnapshot) -> None:
    """Seed `child` (= parent at a later moment) with what the passing time left alone.

    Time matters in two places only: budgets turn stale, reservations expire. When neither
    happened between the two moments, every figure stands (the operator asks for the same
    snapshot "now" before each decision, and must not pay a rebuild for it).
    """
    if child.now < parent.now:
        return  # time went back: rebuild everything on use
    held: Reserved | None = parent.peek(_RESERVED)
    reservations_stand = held is not None and not any(
        parent.now < r.expires_at <= child.now for r in parent.reservations
    )
    if reservations_stand:
        child.seed(_RESERVED, _RESERVED_INPUTS, held)
    for policy_name in parent.policies:
        nodes: PolicyNodes | None = parent.peek(_policy_name(policy_name))
        if nodes is None or (nodes.stale_from is not None and child.now > nodes.stale_from):
            continue
        child.seed(_policy_name(policy_name), _POLICY_INPUTS, nodes)
        free: dict[str, int] | None = parent.peek(_slack_name(policy_name))
        if free is not None and reservations_stand:
            child.seed(_slack_name(policy_name), _SLACK_INPUTS, free)


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
        free: dict[str, int] | None = parent.peek(_slack_name(policy_name))
        if free is None or (changes and policy_name not in changes):
            continue
        change = changes.get(policy_name, {})
        if not change:
            child.seed(_slack_name(policy_name), _SLACK_INPUTS, free)  # never mutated
            continue
        updated = dict(free)
        updated.update(
            {node: free[node] + sign * threads for node, threads in change.items() if node in free}
        )
        child.seed(_slack_name(policy_name), _SLACK_INPUTS, updated)
