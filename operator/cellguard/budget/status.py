"""What a cell's status says about its budget, at its current size."""

from __future__ import annotations

from dataclasses import dataclass

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget import messages
from cellguard.budget.limits import allowed_threads, describe
from cellguard.budget.planner import (
    CellPlan,
    NodeRow,
    cell_of,
    placement_clause,
    plan_for,
    pool_clause,
)
from cellguard.budget.snapshot import CellKey, ClusterSnapshot
from cellguard.budget.threads import threads_per_pod


@dataclass(frozen=True, slots=True)
class CellBudgetStatus:
    """The figures StreamCell.status shows and the WithinBudget condition reports."""

    cell: CellKey
    replicas: int
    threads_per_pod: int
    max_safe_replicas: int
    headroom: float | None  # least headroom over the cell's nodes
    limiting_node: str | None
    within_budget: bool
    reason: RefusalReason | None  # why not, when not
    message: str

    @property
    def headroom_text(self) -> str | None:
        """status.headroom: two decimals, rounded down, e.g. '0.31'."""
        return messages.headroom_text(self.headroom)


def cell_status(snapshot: ClusterSnapshot, cell_key: tuple[str, str]) -> CellBudgetStatus:
    """The cell's budget at its current replicas (as if it were asked for now)."""
    cell = cell_of(snapshot, cell_key)
    plan = plan_for(snapshot, cell)
    per_pod = threads_per_pod(cell.base, cell.per_peer, cell.replicas)
    if plan is None:
        return CellBudgetStatus(
            cell=cell.key,
            replicas=cell.replicas,
            threads_per_pod=per_pod,
            max_safe_replicas=0,
            headroom=None,
            limiting_node=None,
            within_budget=False,
            reason=RefusalReason.POLICY_NOT_FOUND,
            message=f"ThreadBudgetPolicy {cell.policy_name} does not exist",
        )
    projection = plan.project(cell.replicas)
    max_safe = plan.max_safe_replicas()
    limiting = projection.limiting
    return CellBudgetStatus(
        cell=cell.key,
        replicas=cell.replicas,
        threads_per_pod=per_pod,
        max_safe_replicas=max_safe,
        headroom=projection.headroom,
        limiting_node=limiting.node if limiting else None,
        within_budget=projection.fits,
        reason=projection.reason,
        message=_message(plan, projection.reason, projection.refused_node, max_safe, limiting),
    )


def _message(
    plan: CellPlan,
    reason: RefusalReason | None,
    refused_node: str | None,
    max_safe: int,
    row: NodeRow | None,
) -> str:
    cell = plan.cell
    size = f"{cell.key} at {messages.figure(cell.replicas)} replicas"
    fits = f"at most {messages.figure(max_safe)} replicas fit"
    if reason is None:
        if row is None or row.projected is None or row.limit is None or row.allowed is None:
            return f"{size} is within budget; {fits}"
        return (
            f"{size} is within budget: the tightest node, {row.node}, is at "
            f"{messages.figure(row.projected)} threads "
            f"({messages.limit_clause(row.limit, plan.margin, row.allowed)}); {fits}"
        )
    if reason is RefusalReason.CELL_SIZE_CAP:
        return f"{size} exceeds its cell size cap of {messages.figure(plan.cap)}; add a cell"
    if reason is RefusalReason.NO_ELIGIBLE_NODES:
        return f"{size} has pods to place and no node can take them; adjust spec.placement"
    if reason is RefusalReason.UNSCHEDULABLE:
        return f"{size} cannot be placed in full: {placement_clause(plan)}; {fits}"
    if reason in (RefusalReason.BUDGET_UNKNOWN, RefusalReason.BUDGET_STALE):
        figures = plan.nodes.of(plan.snapshot, refused_node or "")
        state = "stale" if reason is RefusalReason.BUDGET_STALE else "unknown"
        why = describe(figures, plan.snapshot.now)
        return f"{size} uses node {refused_node}, whose thread budget is {state} ({why})"
    if reason is RefusalReason.POD_PID_LIMIT and plan.pod_limit is not None:
        pod_limit, node = plan.pod_limit
        allowed = allowed_threads(pod_limit, plan.margin)
        per_pod = threads_per_pod(cell.base, cell.per_peer, cell.replicas)
        return (
            f"{size} needs {messages.figure(per_pod)} threads per pod (pod PID "
            f"{messages.limit_clause(pod_limit, plan.margin, allowed)} on node {node}); {fits}"
        )
    assert row is not None and row.projected is not None
    assert row.limit is not None and row.allowed is not None
    return (
        f"{size} puts node {row.node} at {messages.figure(row.projected)} threads "
        f"({messages.limit_clause(row.limit, plan.margin, row.allowed)}){pool_clause(plan)}; "
        f"{fits}; "
        f"{messages.remedy(cell.per_peer)}"
    )
