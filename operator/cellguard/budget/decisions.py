"""The questions asked of a cell's plan: may it change size, how would it look at a size,
how large may it grow. Each answer carries the figures and the sentence behind it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget import explain
from cellguard.budget.planner import CellPlan, cell_of, plan_for
from cellguard.budget.results import AllowedReason, Decision, DecisionReason, Projection
from cellguard.budget.snapshot import CellView, ClusterSnapshot
from cellguard.budget.threads import threads_for

_EMPTY: Mapping[str, int] = MappingProxyType({})


def project(snapshot: ClusterSnapshot, cell_key: tuple[str, str], replicas: int) -> Projection:
    """The cell at `replicas`, projected, regardless of its current size.

    Raises KeyError when the cell or its policy is not in the snapshot.
    """
    cell = cell_of(snapshot, cell_key)
    plan = plan_for(snapshot, cell)
    if plan is None:
        raise KeyError(f"ThreadBudgetPolicy {cell.policy_name} is not in the snapshot")
    return plan.project(replicas)


def max_safe_replicas(snapshot: ClusterSnapshot, cell_key: tuple[str, str]) -> int:
    """The largest replica count the cell can have now without any check failing.

    0 when even that does not fit (e.g. a node hosting the cell has an unknown budget)
    or when the cell's policy does not exist.
    """
    cell = cell_of(snapshot, cell_key)
    plan = plan_for(snapshot, cell)
    return plan.max_safe_replicas() if plan is not None else 0


def decide(snapshot: ClusterSnapshot, cell_key: tuple[str, str], target_replicas: int) -> Decision:
    """May the cell go from its current replicas (in the snapshot) to `target_replicas`?

    Scale-downs and no-ops are always allowed: refusing them could only make things worse.
    """
    if target_replicas < 0:
        raise ValueError(f"target replicas must be ≥ 0, not {target_replicas}")
    cell = cell_of(snapshot, cell_key)
    plan = plan_for(snapshot, cell)
    change = explain.change(cell, target_replicas)
    if plan is None:
        return _without_plan(cell, target_replicas, change)

    projection = plan.project(target_replicas)
    max_safe = plan.max_safe_replicas()
    if target_replicas == cell.replicas:
        message = explain.no_change(cell)
        return _decision(plan, projection, max_safe, AllowedReason.NO_CHANGE, message)
    if target_replicas < cell.replicas:
        message = explain.scale_down(change)
        return _decision(plan, projection, max_safe, AllowedReason.SCALE_DOWN, message)
    if projection.fits:
        message = explain.fits(change, plan, projection, max_safe)
        reservation = MappingProxyType(plan.reservation(target_replicas))
        arrivals = MappingProxyType(plan.arrivals(target_replicas))
        return _decision(
            plan, projection, max_safe, AllowedReason.WITHIN_BUDGET, message, reservation, arrivals
        )
    assert projection.reason is not None
    message = explain.refusal(change, plan, projection, max_safe)
    return _decision(plan, projection, max_safe, projection.reason, message)


def _decision(
    plan: CellPlan,
    projection: Projection,
    max_safe: int,
    reason: DecisionReason,
    message: str,
    reservation: Mapping[str, int] = _EMPTY,
    new_pods: Mapping[str, int] | None = None,
) -> Decision:
    return Decision(
        allowed=isinstance(reason, AllowedReason),
        reason=reason,
        cell=plan.cell.key,
        from_replicas=plan.current,
        to_replicas=projection.replicas,
        threads_per_pod=projection.threads_per_pod,
        max_safe_replicas=max_safe,
        cell_size_cap=plan.cap,
        margin=float(plan.margin),
        limiting=projection.limiting,
        refused_node=projection.refused_node,
        nodes=projection.rows,
        receiving_nodes=projection.receiving_nodes,
        reservation=reservation,
        message=message,
        claimed_nodes=projection.claimed_nodes,
        new_pods=new_pods,
    )


def _without_plan(cell: CellView, target: int, change: explain.Subject) -> Decision:
    """The cell's policy is missing: no figures. A scale-down or no-op is still allowed."""
    reason: DecisionReason
    if target == cell.replicas:
        reason, message = AllowedReason.NO_CHANGE, explain.no_change(cell)
    elif target < cell.replicas:
        reason, message = AllowedReason.SCALE_DOWN, explain.scale_down(change)
    else:
        reason, message = RefusalReason.POLICY_NOT_FOUND, explain.policy_missing(cell, change)
    return Decision(
        allowed=isinstance(reason, AllowedReason),
        reason=reason,
        cell=cell.key,
        from_replicas=cell.replicas,
        to_replicas=target,
        threads_per_pod=threads_for(cell, target),
        max_safe_replicas=0,
        cell_size_cap=cell.max_replicas,
        margin=None,
        limiting=None,
        refused_node=None,
        nodes=(),
        receiving_nodes=0,
        reservation=_EMPTY,
        message=message,
    )
