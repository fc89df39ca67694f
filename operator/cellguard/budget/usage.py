"""Threads per node: in use (observed or modelled), held by reservations, and left.

All of it is derived once per snapshot (and per policy where the policy matters) so that
a decision only looks up figures, whatever the size of the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from cellguard.api.v1alpha1 import ThreadBudgetPolicySpec
from cellguard.budget.limits import BudgetStatus, NodeLimits, margin_fraction, node_limits
from cellguard.budget.snapshot import CellKey, ClusterSnapshot, Index, Input
from cellguard.budget.threads import threads_for


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
            per_pod = threads_for(cell, cell.replicas)
            for node, pods in nodes.items():
                modelled[node] = get(node, 0) + per_pod * pods
        return modelled

    return snapshot.derived(MODELLED, compute)


MODELLED: Index[dict[str, int]] = Index("usage.modelled", frozenset({Input.CELLS, Input.PODS}))


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

    return snapshot.derived(RESERVED, compute)


RESERVED: Index[Reserved] = Index("usage.reserved", frozenset({Input.RESERVATIONS, Input.NOW}))


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
            name: node_limits(
                name,
                node.budget,
                policy,
                snapshot.now,
                margin=margin,
                received_at=node.budget_received_at,
            )
            for name, node in snapshot.nodes.items()
        }
        by_limit: dict[int, set[str]] = {}
        by_pod_limit: dict[int, set[str]] = {}
        unusable: set[str] = set()
        deadlines = [
            figures.as_of + timedelta(seconds=policy.stale_after_seconds)
            for figures in limits.values()
            if figures.status is BudgetStatus.KNOWN and figures.as_of is not None
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

    return snapshot.derived(POLICY_NODES.of(policy_name), compute)


# One per policy: `POLICY_NODES.of(policy_name)`.
POLICY_NODES: Index[PolicyNodes] = Index(
    "usage.policy", frozenset({Input.NODES, Input.POLICIES, Input.NOW})
)


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

    return snapshot.derived(SLACK.of(policy_name), compute)


# One per policy: `SLACK.of(policy_name)`.
SLACK: Index[dict[str, int]] = Index("usage.slack", frozenset(Input))


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One node's threads under a policy, as the fleet's gauges show them."""

    node: str
    limits: NodeLimits
    projected: int | None  # max(observed, modelled) + reserved; None when the limit is not
    headroom: float | None  # 1 - projected / limit


def node_usage(snapshot: ClusterSnapshot, policy_name: str) -> list[NodeUsage]:
    """Every node of the snapshot, by name (KeyError when there is no such policy)."""
    nodes = policy_nodes(snapshot, policy_name)
    modelled = modelled_threads(snapshot)
    reserved = reserved_threads(snapshot).total
    rows = []
    for name in sorted(snapshot.nodes):
        figures = nodes.limits[name]
        projected = (
            used_threads(figures, modelled.get(name, 0)) + reserved.get(name, 0)
            if figures.limit is not None
            else None
        )
        headroom = (
            1 - projected / figures.limit if projected is not None and figures.limit else None
        )
        rows.append(NodeUsage(name, figures, projected, headroom))
    return rows
