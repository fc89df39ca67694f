"""Every sentence cellguard says about a cell's budget, built in one place.

Two kinds of subject share the same clauses: a change asked for ("scaling prod/ingest from
3 to 5 replicas would put node n1 at …") in decisions, and a cell as it is ("prod/ingest at
5 replicas puts node n1 at …") in its status. Each names the node, the figures and what to
do about it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget.eligibility import claimed_by_others, ineligibility
from cellguard.budget.limits import allowed_threads, describe
from cellguard.budget.planner import CellPlan
from cellguard.budget.results import NodeRow, Projection
from cellguard.budget.snapshot import CellView
from cellguard.budget.threads import modelled_at_observation, threads_for

# --------------------------------------------------------------------------- figures


def figure(value: int) -> str:
    """An integer with thousands separators: 31120 -> '31,120'."""
    return f"{value:,}"


def percent(fraction: Fraction) -> str:
    """0.2 -> '20%', 0.125 -> '12.5%'."""
    value = fraction * 100
    if value.denominator == 1:
        return f"{value.numerator}%"
    return f"{float(value):g}%"


def headroom_text(headroom: float | None) -> str | None:
    """Headroom as status shows it: two decimals, rounded down (never flatter the node)."""
    if headroom is None:
        return None
    hundredths = math.floor(round(headroom * 100, 9))  # 0.29 * 100 is 28.999999999999996
    sign = "-" if hundredths < 0 else ""
    hundredths = abs(hundredths)
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}"


def limit_clause(limit: int, margin: Fraction, allowed: int) -> str:
    """'limit 32,768 less 20% margin = 26,214'."""
    return f"limit {figure(limit)} less {percent(margin)} margin = {figure(allowed)}"


# --------------------------------------------------------------------------- subjects


@dataclass(frozen=True, slots=True)
class Subject:
    """What a sentence is about: a change asked for, or the cell at its current size."""

    text: str
    asked: bool  # a change (conditional: "would put") or the cell as it is ("puts")

    def verb(self, asked: str, current: str) -> str:
        return asked if self.asked else current


def change(cell: CellView, to_replicas: int) -> Subject:
    """'scaling prod/a from 3 to 5 replicas'."""
    text = f"scaling {cell.key} from {figure(cell.replicas)} to {figure(to_replicas)} replicas"
    return Subject(text, asked=True)


def current_size(cell: CellView) -> Subject:
    """'prod/a at 5 replicas'."""
    return Subject(f"{cell.key} at {figure(cell.replicas)} replicas", asked=False)


# --------------------------------------------------------------------------- clauses


def what_fits(max_safe: int, current: int) -> str:
    if max_safe > current:
        return f"at most {figure(max_safe)} replicas fit"
    if max_safe == current:
        return f"no more than the current {figure(current)} replicas fit"
    return f"at most {figure(max_safe)} replicas fit now, fewer than the current {figure(current)}"


def remedy(per_peer: int) -> str:
    # With per-peer threads a cell's cost grows with its size squared: splitting it is
    # what helps. Without, more nodes help as much as another cell.
    return "add a cell" if per_peer > 0 else "add nodes or a cell"


def _node_at(row: NodeRow, margin: Fraction) -> str:
    """'n1 at 27,000 threads (limit 32,768 less 20% margin = 26,214)'."""
    assert row.projected is not None and row.limit is not None and row.allowed is not None
    return (
        f"{row.node} at {figure(row.projected)} threads "
        f"({limit_clause(row.limit, margin, row.allowed)})"
    )


def placement_clause(plan: CellPlan) -> str:
    """Why the scheduler caps the cell's pods a node: spread domains that cannot receive."""
    cell = plan.cell
    claimed = claimed_by_others(plan.snapshot, cell)
    why: Counter[str] = Counter()
    for name in plan.blocked:
        node = plan.snapshot.nodes[name]
        if node.unschedulable:
            why["cordoned"] += 1
        elif name in plan.excluded:
            why[f"hosting another cell of service {cell.service}"] += 1
        elif name in claimed:
            why["claimed by another cell's pending scale-up"] += 1
        else:
            why["unable to take its pods"] += 1
    parts = ", ".join(f"{count:,} {text}" for text, count in sorted(why.items()))
    cap = plan.level_cap or 0
    return (
        f"{len(plan.blocked):,} of the nodes its pods spread over cannot take them ({parts}), "
        f"so the scheduler's even spread (maxSkew 1) allows at most {figure(cap)} "
        f"a node on the {figure(plan.fill.node_count)} that can"
    )


def pool_clause(plan: CellPlan) -> str:
    """For a NodeExclusive cell whose pool cannot grow: say so (another cell would need
    free nodes too, so the remedy includes nodes)."""
    if not plan.pooled or plan.claimable:
        return ""
    return f" and no free node is left to join its pool of {figure(len(plan.receivers))}"


def observed_clause(cell: CellView, replicas: int) -> str:
    """When the cell's pods hold more threads than its model says: by how much, and what the
    planner budgets per pod instead ('' when the model holds)."""
    expected = modelled_at_observation(cell)
    seen = cell.observed
    if seen is None or expected is None or seen.per_pod <= expected:
        return ""
    return (
        f"; its pods were observed holding up to {figure(seen.per_pod)} threads each at "
        f"{figure(seen.replicas)} replicas where spec.threads says {figure(expected)}, so "
        f"cellguard budgets {figure(threads_for(cell, replicas))} a pod at "
        f"{figure(replicas)} replicas (fix spec.threads: kubectl cellguard fit "
        f"streamcell/{cell.name} -n {cell.namespace})"
    )


def _ineligibility_clause(plan: CellPlan) -> str:
    why = ineligibility(plan.snapshot, plan.cell)
    parts = [f"{count:,} {text}" for text, count in sorted(why.items(), key=lambda i: -i[1])]
    return f"of {len(plan.snapshot.nodes):,} nodes: {', '.join(parts)}" if parts else "no nodes"


# --------------------------------------------------------------------------- sentences


def no_change(cell: CellView) -> str:
    return f"{cell.key} stays at {figure(cell.replicas)} replicas"


def scale_down(subject: Subject) -> str:
    return f"{subject.text}: scaling down is always allowed"


def policy_missing(cell: CellView, subject: Subject | None) -> str:
    if subject is None:
        return f"ThreadBudgetPolicy {cell.policy_name} does not exist"
    return (
        f"{subject.text}: ThreadBudgetPolicy {cell.policy_name} does not exist; "
        "create it or set spec.policyRef to an existing policy"
    )


def fits(subject: Subject, plan: CellPlan, projection: Projection, max_safe: int) -> str:
    """An admitted change, or a cell within its budget."""
    row = projection.limiting
    room = f"at most {figure(max_safe)} replicas fit"
    head = f"{subject.text} {subject.verb('fits', 'is within budget')}"
    if row is None or row.projected is None:
        return f"{head}; {room}"
    goes = subject.verb("goes to", "is at")
    return (
        f"{head}: the tightest node, {row.node}, {goes} {figure(row.projected)} threads "
        f"({limit_clause(row.limit or 0, plan.margin, row.allowed or 0)})"
        f"{observed_clause(plan.cell, projection.replicas)}; {room}"
    )


def refusal(subject: Subject, plan: CellPlan, projection: Projection, max_safe: int) -> str:
    """Why a change does not fit (or a cell at its size is over budget), and the remedy."""
    cell = plan.cell
    reason = projection.reason
    room = what_fits(max_safe, plan.current)
    if reason is RefusalReason.CELL_SIZE_CAP:
        source = (
            "spec.maxReplicas"
            if cell.max_replicas is not None
            else f"defaultMaxReplicas of ThreadBudgetPolicy {cell.policy_name}"
        )
        return (
            f"{subject.text} exceeds its cell size cap of {figure(plan.cap)} ({source}); add a cell"
        )
    if reason is RefusalReason.NO_ELIGIBLE_NODES:
        return (
            f"{subject.text}: no node can take its pods ({_ineligibility_clause(plan)}); "
            "adjust spec.placement or add nodes"
        )
    if reason in (RefusalReason.BUDGET_UNKNOWN, RefusalReason.BUDGET_STALE):
        node = projection.refused_node
        figures = plan.nodes.of(plan.snapshot, node or "")
        state = "stale" if reason is RefusalReason.BUDGET_STALE else "unknown"
        return (
            f"{subject.text} {subject.verb('needs', 'uses')} node {node}, whose thread budget "
            f"is {state} ({describe(figures, plan.snapshot.now)}); cellguard refuses until the "
            f"node agent reports it (or set unknownBudget: UseDefaults in ThreadBudgetPolicy "
            f"{cell.policy_name})"
        )
    if reason is RefusalReason.POD_PID_LIMIT:
        assert plan.pod_limit is not None
        pod_limit, node = plan.pod_limit
        allowed = allowed_threads(pod_limit, plan.margin)
        fix = (
            remedy(cell.per_peer)
            if cell.per_peer > 0
            else "raise the kubelet's podPidsLimit or lower spec.threads.base"
        )
        return (
            f"{subject.text} {subject.verb('would need', 'needs')} "
            f"{figure(projection.threads_per_pod)} threads per pod (pod PID "
            f"{limit_clause(pod_limit, plan.margin, allowed)} on node {node})"
            f"{observed_clause(cell, projection.replicas)}; {room}; {fix}"
        )
    if reason is RefusalReason.UNSCHEDULABLE:
        return (
            f"{subject.text} cannot be placed{subject.verb('', ' in full')}: "
            f"{placement_clause(plan)}; {room}; "
            "add nodes matching its placement, or uncordon or free the blocked ones"
        )
    row = projection.limiting
    assert row is not None
    return (
        f"{subject.text} {subject.verb('would put', 'puts')} node {_node_at(row, plan.margin)}"
        f"{pool_clause(plan)}{observed_clause(cell, projection.replicas)}; {room}; "
        f"{remedy(cell.per_peer)}"
    )


def thread_model(cell: CellView, tolerance: float) -> str:
    """What the ThreadModelAccurate condition says: the observed against the modelled
    threads per pod, at the size the pods were observed at."""
    seen = cell.observed
    expected = modelled_at_observation(cell)
    if seen is None or expected is None:
        return "no node agent has reported the threads of this cell's pods yet"
    figures = (
        f"its pods hold up to {figure(seen.per_pod)} threads each at "
        f"{figure(seen.replicas)} replicas; spec.threads says {figure(expected)}"
    )
    if seen.per_pod <= expected * (1 + tolerance):
        return f"{figures} (tolerance {tolerance:.0%})"
    over = f"{(seen.per_pod / expected - 1):.0%} over" if expected else "over"
    return (
        f"{figures}, {over} (tolerance {tolerance:.0%}): cellguard budgets with the observed "
        f"figures; fix spec.threads (kubectl cellguard fit streamcell/{cell.name} "
        f"-n {cell.namespace})"
    )
