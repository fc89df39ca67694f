"""The budget decision: pure code over a snapshot of the cluster, no I/O.

    snapshot = ClusterSnapshot.build(nodes=..., cells=..., pods=..., policies=..., now=...)
    decision = decide(snapshot, CellKey("prod", "ingest-a"), 48)
    if not decision.allowed:
        refuse(decision.message)
    bigger = with_cell(snapshot, replace(view, replicas=12))  # one change, figures carried

Imports neither kopf nor the Kubernetes client (an import-linter contract says so).
"""

from cellguard.budget.changes import (
    seen_at,
    with_cell,
    with_cell_at,
    with_node_labels,
    with_pods,
    with_policies,
    with_reservation,
    with_reservations,
    with_reserved,
    without_cell,
    without_reservation,
)
from cellguard.budget.decisions import decide, max_safe_replicas, project
from cellguard.budget.eligibility import eligible_nodes
from cellguard.budget.explain import headroom_text
from cellguard.budget.fit import ThreadFit, fit_thread_model, suggested_model
from cellguard.budget.limits import BudgetStatus, NodeLimits, allowed_threads, node_limits
from cellguard.budget.nodecounts import NodeCounts, NodeSetInterner, grouped
from cellguard.budget.pending import admitted_spec_seen, may_receive, still_needed
from cellguard.budget.planner import CellPlan, plan_for
from cellguard.budget.pools import is_pool_label, pool_label_key, pool_label_value
from cellguard.budget.results import (
    AllowedReason,
    Decision,
    DecisionReason,
    NodeRow,
    Projection,
)
from cellguard.budget.snapshot import (
    CellKey,
    CellView,
    ClusterSnapshot,
    NodeView,
    ObservedThreads,
    PodPlacement,
    Reservation,
    ReservationLike,
    Taint,
)
from cellguard.budget.status import (
    CellBudgetStatus,
    ThreadModelCheck,
    cell_status,
    check_thread_model,
)
from cellguard.budget.threads import threads_for, threads_per_pod
from cellguard.budget.usage import NodeUsage, Reserved, empty_reserved, node_usage

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
    "NodeCounts",
    "NodeLimits",
    "NodeRow",
    "NodeSetInterner",
    "NodeUsage",
    "NodeView",
    "ObservedThreads",
    "PodPlacement",
    "Projection",
    "Reservation",
    "ReservationLike",
    "Reserved",
    "Taint",
    "ThreadFit",
    "ThreadModelCheck",
    "admitted_spec_seen",
    "allowed_threads",
    "cell_status",
    "check_thread_model",
    "decide",
    "eligible_nodes",
    "empty_reserved",
    "fit_thread_model",
    "grouped",
    "headroom_text",
    "is_pool_label",
    "max_safe_replicas",
    "may_receive",
    "node_limits",
    "node_usage",
    "plan_for",
    "pool_label_key",
    "pool_label_value",
    "project",
    "seen_at",
    "still_needed",
    "suggested_model",
    "threads_for",
    "threads_per_pod",
    "with_cell",
    "with_cell_at",
    "with_node_labels",
    "with_pods",
    "with_policies",
    "with_reservation",
    "with_reservations",
    "with_reserved",
    "without_cell",
    "without_reservation",
]
