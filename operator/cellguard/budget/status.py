"""What a cell's status says about its budget, at its current size."""

from __future__ import annotations

from dataclasses import dataclass

from cellguard.api.v1alpha1 import RefusalReason, ThreadModelReason
from cellguard.budget import explain
from cellguard.budget.planner import cell_of, plan_for
from cellguard.budget.snapshot import CellKey, CellView, ClusterSnapshot
from cellguard.budget.threads import modelled_at_observation, threads_for, threads_per_pod


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
        return explain.headroom_text(self.headroom)


def cell_status(snapshot: ClusterSnapshot, cell_key: tuple[str, str]) -> CellBudgetStatus:
    """The cell's budget at its current replicas (as if it were asked for now)."""
    cell = cell_of(snapshot, cell_key)
    plan = plan_for(snapshot, cell)
    per_pod = threads_for(cell, cell.replicas)
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
            message=explain.policy_missing(cell, None),
        )
    projection = plan.project(cell.replicas)
    max_safe = plan.max_safe_replicas()
    subject = explain.current_size(cell)
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
        message=(
            explain.fits(subject, plan, projection, max_safe)
            if projection.fits
            else explain.refusal(subject, plan, projection, max_safe)
        ),
    )


@dataclass(frozen=True, slots=True)
class ThreadModelCheck:
    """The cell's declared thread model against what its pods were observed to hold."""

    accurate: bool | None  # None: not observed yet
    reason: ThreadModelReason
    message: str
    modelled_per_pod: int  # the model at the observed size (at the cell's size if none)
    observed_per_pod: int | None


def check_thread_model(cell: CellView, tolerance: float) -> ThreadModelCheck:
    """Is the model within `tolerance` (0.1: 10%) of the most threads a pod holds?"""
    message = explain.thread_model(cell, tolerance)
    expected = modelled_at_observation(cell)
    seen = cell.observed
    if seen is None or expected is None:
        modelled = threads_per_pod(cell.base, cell.per_peer, cell.replicas)
        return ThreadModelCheck(None, ThreadModelReason.NOT_OBSERVED, message, modelled, None)
    accurate = seen.per_pod <= expected * (1 + tolerance)
    reason = ThreadModelReason.WITHIN_MODEL if accurate else ThreadModelReason.EXCEEDS_MODEL
    return ThreadModelCheck(accurate, reason, message, expected, seen.per_pod)
