"""The budget decision: pure code over a snapshot of the cluster, no I/O.

    snapshot = ClusterSnapshot.build(nodes=..., cells=..., pods=..., policies=..., now=...)
    decision = decide(snapshot, CellKey("prod", "ingest-a"), 48)
    if not decision.allowed:
        refuse(decision.message)

Imports neither kopf nor the Kubernetes client (an import-linter contract says so).
"""

from cellguard.budget.eligibility import eligible_nodes
from cellguard.budget.limits import BudgetStatus, NodeLimits, node_limits
from cellguard.budget.planner import (
    AllowedReason,
    CellPlan,
    Decision,
    DecisionReason,
    NodeRow,
    Projection,
    decide,
    max_safe_replicas,
    plan_for,
    project,
)
from cellguard.budget.snapshot import (
    CellKey,
    CellView,
    ClusterSnapshot,
    NodeView,
    PodPlacement,
    Reservation,
    ReservationLike,
    Taint,
)
from cellguard.budget.status import CellBudgetStatus, cell_status
from cellguard.budget.threads import threads_per_pod

__all__ = [
    "AllowedReason",
    "BudgetStatus",
    "CellBudgetStatus",
    "CellKey",
    "CellPlan",
    "CellView",
    "ClusterSnapshot",
    "Decision",
    "DecisionReason",
    "NodeLimits",
    "NodeRow",
    "NodeView",
    "PodPlacement",
    "Projection",
    "Reservation",
    "ReservationLike",
    "Taint",
    "cell_status",
    "decide",
    "eligible_nodes",
    "max_safe_replicas",
    "node_limits",
    "plan_for",
    "project",
    "threads_per_pod",
]
