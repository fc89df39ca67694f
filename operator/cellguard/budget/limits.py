"""A node's thread limit, as one policy sees it: known, unknown, stale, or assumed.

Every thread is a task: it counts against kernel.threads-max, kernel.pid_max and the
kubepods pids cgroup, and hitting any of them makes thread creation fail. The effective
limit is therefore the smallest of the three. A node whose figures are missing or too old
has an unknown budget: the planner refuses to place pods there (fail closed) unless the
policy says `UseDefaults`, in which case the policy's assumed limits stand in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from cellguard.api.v1alpha1 import (
    DefaultLimits,
    NodeBudgetSpec,
    ThreadBudgetPolicySpec,
    UnknownBudgetAction,
)


class BudgetStatus(StrEnum):
    KNOWN = "Known"
    UNKNOWN = "Unknown"
    STALE = "Stale"


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """A node's budget under one policy. `limit` is None when nothing may be placed there."""

    node: str
    status: BudgetStatus
    limit: int | None
    allowed: int | None  # limit less the policy's margin, rounded down
    observed: int | None  # threads in use on the host
    pod_pids_limit: int | None  # None: no per-pod limit (or none known)
    limit_source: str | None  # which figure is the limit, e.g. "kernel.pid_max"
    from_defaults: bool  # figures are the policy's assumptions, not observations
    detail: str  # why the budget is unknown or stale ('' when known); see `describe`
    observed_at: datetime | None  # when the agent read the figures (UTC), by its clock
    # What the report's age is counted from: the earlier of when the agent says it observed
    # the figures and when the operator received them (its own clock). A node whose clock
    # runs ahead cannot keep vouching for itself; one whose clock lags fails closed.
    as_of: datetime | None = None
    # Of `observed`, the threads that are not the cell pods' the report names (the node's
    # other processes, and pods cellguard does not manage): the planner adds the cell pods'
    # modelled threads to these. None when `observed` is.
    others: int | None = None

    @property
    def usable(self) -> bool:
        return self.limit is not None


# A report this far ahead of the operator's clock when it arrived is not believed: the
# node's clock is wrong, and so may be everything it says about time.
MAX_CLOCK_SKEW = timedelta(seconds=60)


def margin_fraction(policy: ThreadBudgetPolicySpec) -> Fraction:
    """The safety margin exactly as written (0.2 is 1/5, not 0.2000000000000000111)."""
    return Fraction(str(policy.safety_margin))


def allowed_threads(limit: int, margin: Fraction) -> int:
    """limit * (1 - margin), rounded down, in exact arithmetic."""
    kept = 1 - margin
    return limit * kept.numerator // kept.denominator


def effective_limit(
    threads_max: int, pid_max: int, kubepods_pids_max: int | None
) -> tuple[int, str]:
    """The smallest of the limits every thread counts against, and which one it is."""
    candidates = [(threads_max, "kernel.threads-max"), (pid_max, "kernel.pid_max")]
    if kubepods_pids_max is not None:
        candidates.append((kubepods_pids_max, "kubepods pids.max"))
    return min(candidates, key=lambda candidate: candidate[0])


def _missing(budget: NodeBudgetSpec) -> list[str]:
    figures = {
        "threadsMax": budget.threads_max,
        "pidMax": budget.pid_max,
        "threadsInUse": budget.threads_in_use,
    }
    missing = [name for name, value in figures.items() if value is None]
    # The kubepods pids.max is the third limit every pod thread counts against: `max`
    # (unlimited) is an answer, an unreadable file is not - the limit could be lower.
    if budget.kubepods.max is None and not budget.kubepods.unlimited:
        missing.append("kubepods.max (the kubepods cgroup's pids.max could not be read)")
    return missing


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def describe(figures: NodeLimits, now: datetime) -> str:
    """Why the node's budget is unknown or stale, in words ('' when it is known).

    The age of a stale observation is worded here, at `now`, so that figures derived
    earlier in a snapshot's life never show an age that has moved on.
    """
    if figures.status is BudgetStatus.STALE and figures.as_of is not None:
        age = (now - figures.as_of).total_seconds()
        return f"observed {age:,.0f}s ago, {figures.detail}"
    return figures.detail


def node_limits(
    node: str,
    budget: NodeBudgetSpec | None,
    policy: ThreadBudgetPolicySpec,
    now: datetime,
    *,
    margin: Fraction | None = None,
    node_exists: bool = True,
    received_at: datetime | None = None,
    cell_pod_threads: int = 0,
) -> NodeLimits:
    """The node's budget under `policy` at `now`.

    `received_at`: when the operator received the report (its own clock); without it, the
    report counts as received now. `cell_pod_threads`: the threads the report's per-pod
    readings give the managed cell pods (0: none named), all the others being `others`.
    """
    margin = margin_fraction(policy) if margin is None else margin
    observed_at = _utc(budget.observed_at) if budget is not None else None
    arrived = received_at if received_at is not None else now
    as_of = min(observed_at, arrived) if observed_at is not None else None
    skew = observed_at - arrived if observed_at is not None else timedelta(0)
    if not node_exists:
        status, detail = BudgetStatus.UNKNOWN, "the node is not in the cluster"
    elif budget is None:
        status, detail = (
            BudgetStatus.UNKNOWN,
            "no NodeBudget: is the cellguard agent running there?",
        )
    elif missing := _missing(budget):
        status, detail = BudgetStatus.UNKNOWN, f"its NodeBudget lacks {', '.join(missing)}"
    elif skew > MAX_CLOCK_SKEW:
        status, detail = (
            BudgetStatus.UNKNOWN,
            f"its NodeBudget says it was observed {skew.total_seconds():,.0f}s ahead of the "
            f"operator's clock (more than {MAX_CLOCK_SKEW.total_seconds():.0f}s): is the "
            "node's clock right?",
        )
    else:
        assert as_of is not None
        if (now - as_of).total_seconds() > policy.stale_after_seconds:
            status = BudgetStatus.STALE
            detail = f"more than the {policy.stale_after_seconds:,}s the policy allows"
        else:
            status, detail = BudgetStatus.KNOWN, ""
    if status is BudgetStatus.KNOWN:
        assert budget is not None
        assert budget.threads_max is not None and budget.pid_max is not None
        limit, source = effective_limit(budget.threads_max, budget.pid_max, budget.kubepods.max)
        return NodeLimits(
            node=node,
            status=status,
            limit=limit,
            allowed=allowed_threads(limit, margin),
            observed=budget.threads_in_use,
            pod_pids_limit=budget.pod_pids_limit,
            limit_source=source,
            from_defaults=False,
            detail="",
            observed_at=observed_at,
            as_of=as_of,
            others=max(0, (budget.threads_in_use or 0) - cell_pod_threads),
        )
    defaults = _defaults_in_force(policy)
    if defaults is not None:
        limit, source = effective_limit(
            defaults.threads_max, defaults.pid_max, defaults.kubepods_pids_max
        )
        return NodeLimits(
            node=node,
            status=status,
            limit=limit,
            allowed=allowed_threads(limit, margin),
            observed=defaults.threads_in_use,
            pod_pids_limit=defaults.pod_pids_limit,
            limit_source=f"{source} (policy defaults)",
            from_defaults=True,
            detail=detail,
            observed_at=observed_at,
            as_of=as_of,
            others=defaults.threads_in_use,  # assumed besides the cell pods
        )
    return NodeLimits(
        node=node,
        status=status,
        limit=None,
        allowed=None,
        observed=None,
        pod_pids_limit=None,
        limit_source=None,
        from_defaults=False,
        detail=detail,
        observed_at=observed_at,
        as_of=as_of,
    )


def _defaults_in_force(policy: ThreadBudgetPolicySpec) -> DefaultLimits | None:
    if policy.unknown_budget is UnknownBudgetAction.USE_DEFAULTS:
        return policy.defaults
    return None
