"""decide(): table-driven cases, then the figures and sentences of a few in detail.

The base cluster: four nodes n1..n4 with kernel.pid_max 32,768 (26,214 after the default
20% margin) and 1,000 threads in use; cell prod/ingest-a with base 100 and 50 threads
per peer at 8 replicas, two pods a node. Threads per pod: 450 at 8, 650 at 12.
Going 8 -> 12 puts one new pod on every node: +200 for each of the two pods already there
and +650 for the new one, 1,050 a node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from cellguard.api.v1alpha1 import Isolation, RefusalReason, ThreadBudgetPolicySpec
from cellguard.budget import (
    AllowedReason,
    CellKey,
    CellView,
    ClusterSnapshot,
    Decision,
    NodeView,
    PodPlacement,
    Reservation,
    Taint,
    cell_status,
    decide,
    max_safe_replicas,
    with_cell,
    with_pods,
    with_reservation,
)
from cellguard.budget.pools import pool_label_key, pool_label_value

from .helpers import NOW, cell, node, policy, reservation, snapshot, use_defaults

INGEST = cell("ingest-a", replicas=8, base=100, per_peer=50)
IN_INGEST_POOL = {pool_label_key("ingest"): pool_label_value("prod", "ingest-a")}
OTHER = cell("billing-a", replicas=1, service="billing")
NAMES = ("n1", "n2", "n3", "n4")
TWO_EACH = {name: 2 for name in NAMES}


@dataclass
class Case:
    name: str
    target: int
    allowed: bool
    reason: RefusalReason | AllowedReason
    node: str | None = None  # the node a refusal names
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-node overrides
    extra_nodes: list[NodeView] = field(default_factory=list)
    ingest: dict[str, Any] = field(default_factory=dict)  # CellView overrides
    pods: dict[str, int] = field(default_factory=lambda: dict(TWO_EACH))
    policies: dict[str, ThreadBudgetPolicySpec] | None = None
    reservations: Callable[[], list[Reservation]] = list
    message: str = ""  # a fragment the message must contain

    def snapshot(self) -> ClusterSnapshot:
        nodes = [node(name, **self.nodes.get(name, {})) for name in NAMES] + self.extra_nodes
        ingest = replace(INGEST, **self.ingest)
        return snapshot(
            nodes,
            [ingest, OTHER],
            {ingest.key: self.pods},
            policies=self.policies,
            reservations=self.reservations(),
        )


CASES = [
    Case("no change", 8, True, AllowedReason.NO_CHANGE),
    Case("fits", 12, True, AllowedReason.WITHIN_BUDGET, message="fits"),
    Case(
        "scale-down while a node is over its limit",
        4,
        True,
        AllowedReason.SCALE_DOWN,
        nodes={"n1": {"in_use": 40_000}},
    ),
    Case(
        "scale-down with unknown budgets",
        2,
        True,
        AllowedReason.SCALE_DOWN,
        nodes={name: {"no_budget": True} for name in NAMES},
    ),
    Case(
        "scale-down to zero without a policy",
        0,
        True,
        AllowedReason.SCALE_DOWN,
        ingest={"policy_name": "gone"},
    ),
    Case(
        "a node near its limit",
        12,
        False,
        RefusalReason.NODE_THREAD_LIMIT,
        "n3",
        nodes={"n3": {"in_use": 25_500, "pods_read": 900}},  # its two pods' 450 each
        message="would put node n3 at 26,550 threads",
    ),
    Case(
        "the kubepods cgroup is the smallest limit",
        12,
        False,
        RefusalReason.NODE_THREAD_LIMIT,
        "n2",
        nodes={"n2": {"kubepods_max": 2_000}},
        message="(limit 2,000 less 20% margin = 1,600)",
    ),
    Case(
        "threads-max is the smallest limit",
        12,
        False,
        RefusalReason.NODE_THREAD_LIMIT,
        "n4",
        nodes={"n4": {"threads_max": 2_500}},
    ),
    Case(
        "the pod PID limit",
        12,
        False,
        RefusalReason.POD_PID_LIMIT,
        "n1",
        nodes={"n1": {"pod_pids_limit": 600}},
        message="would need 650 threads per pod (pod PID limit 600 less 20% margin = 480",
    ),
    Case(
        "a pod PID limit where the cell cannot go does not count",
        12,
        True,
        AllowedReason.WITHIN_BUDGET,
        extra_nodes=[node("gpu", taints=[Taint("gpu", "", "NoSchedule")], pod_pids_limit=100)],
    ),
    Case(
        "the cell's own size cap",
        12,
        False,
        RefusalReason.CELL_SIZE_CAP,
        ingest={"max_replicas": 10},
        message="exceeds its cell size cap of 10 (spec.maxReplicas); add a cell",
    ),
    Case(
        "the policy's size cap",
        12,
        False,
        RefusalReason.CELL_SIZE_CAP,
        policies={"default": policy(defaultMaxReplicas=10)},
        message="cap of 10 (defaultMaxReplicas of ThreadBudgetPolicy default)",
    ),
    Case(
        "an unknown budget where new pods may go (an empty node of the cell's pool)",
        9,
        False,
        RefusalReason.BUDGET_UNKNOWN,
        "n5",
        extra_nodes=[node("n5", no_budget=True, labels=IN_INGEST_POOL)],
        message="needs node n5, whose thread budget is unknown (no NodeBudget",
    ),
    Case(
        "an unknown budget on a free node: never claimed into the pool",
        9,
        True,
        AllowedReason.WITHIN_BUDGET,
        extra_nodes=[node("n5", no_budget=True)],
    ),
    Case(
        "an unknown budget where the cell already runs",
        8 + 1,
        False,
        RefusalReason.BUDGET_UNKNOWN,
        "n2",
        nodes={"n2": {"no_budget": True}},
    ),
    Case(
        "a stale budget",
        12,
        False,
        RefusalReason.BUDGET_STALE,
        "n4",
        nodes={"n4": {"age": timedelta(minutes=10)}},
        message="whose thread budget is stale (observed 600s ago",
    ),
    Case(
        "an unknown budget where the cell cannot go does not count",
        12,
        True,
        AllowedReason.WITHIN_BUDGET,
        extra_nodes=[node("cordoned", unschedulable=True, no_budget=True)],
    ),
    Case(
        "UseDefaults stands in for unknown budgets",
        12,
        True,
        AllowedReason.WITHIN_BUDGET,
        nodes={"n2": {"no_budget": True}, "n3": {"age": timedelta(hours=1)}},
        extra_nodes=[node("n5", no_budget=True)],
        policies={"default": use_defaults()},
    ),
    Case(
        "UseDefaults with small defaults refuses on them",
        12,
        False,
        RefusalReason.NODE_THREAD_LIMIT,
        "n2",
        nodes={"n2": {"no_budget": True}},
        policies={"default": use_defaults(pidMax=2_000)},
    ),
    Case(
        "no eligible node",
        12,
        False,
        RefusalReason.NO_ELIGIBLE_NODES,
        nodes={name: {"unschedulable": True} for name in NAMES},
        message="no node can take its pods (of 4 nodes: 4 are cordoned)",
    ),
    Case(
        "a missing policy",
        12,
        False,
        RefusalReason.POLICY_NOT_FOUND,
        ingest={"policy_name": "gold"},
        message="ThreadBudgetPolicy gold does not exist",
    ),
    Case(
        "another cell's reservation counts",
        12,
        False,
        RefusalReason.NODE_THREAD_LIMIT,
        "n1",
        reservations=lambda: [reservation(OTHER, {"n1": 24_500})],
    ),
    Case(
        "the cell's own reservation is replaced, not added",
        12,
        True,
        AllowedReason.WITHIN_BUDGET,
        reservations=lambda: [reservation(INGEST, {"n1": 24_500})],
    ),
    Case(
        "an expired reservation holds nothing",
        12,
        True,
        AllowedReason.WITHIN_BUDGET,
        reservations=lambda: [reservation(OTHER, {"n1": 24_500}, ttl=0)],
    ),
    Case(
        "pods on a node the cluster does not know",
        10,
        False,
        RefusalReason.BUDGET_UNKNOWN,
        "ghost",
        pods={**TWO_EACH, "ghost": 1},
        ingest={"replicas": 9},
        message="the node is not in the cluster",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decision_table(case: Case) -> None:
    decision = decide(case.snapshot(), INGEST.key, case.target)
    assert (decision.allowed, decision.reason) == (case.allowed, case.reason), decision.message
    if case.node is not None:
        assert decision.refused_node == case.node
        assert case.node in decision.message
    assert case.message in decision.message
    if not decision.allowed:
        assert decision.reservation == {}


def test_refusal_names_the_node_the_figures_and_the_largest_safe_size() -> None:
    case = next(c for c in CASES if c.name == "a node near its limit")
    decision = decide(case.snapshot(), INGEST.key, 12)
    # n3 at M: 25,500 + (threads per pod at M - 450) * 2 + threads per pod at M * 1 new pod;
    # at 9 that is 26,100 <= 26,214, at 10 it is 26,250.
    assert decision.message == (
        "scaling prod/ingest-a from 8 to 12 replicas would put node n3 at 26,550 threads "
        "(limit 32,768 less 20% margin = 26,214) and no free node is left to join its "
        "pool of 4; at most 9 replicas fit; add a cell"
    )
    assert decision.max_safe_replicas == 9
    assert (decision.limiting_node, decision.projected) == ("n3", 26_550)
    assert (decision.limit, decision.allowed_threads, decision.margin) == (32_768, 26_214, 0.2)
    assert decision.headroom == pytest.approx(1 - 26_550 / 32_768)
    assert decision.threads_per_pod == 650
    assert [row.node for row in decision.nodes] == ["n3", "n1", "n2", "n4"]  # tightest first
    assert decide(case.snapshot(), INGEST.key, 9).allowed
    assert not decide(case.snapshot(), INGEST.key, 10).allowed


def test_admitted_change_carries_the_reservation_it_needs() -> None:
    # Each report of n1-n4 read their two pods at 450 threads each.
    snap = snapshot(
        [node(name, pods_read=900) for name in NAMES] + [node("n5")],
        [INGEST, OTHER],
        {INGEST.key: TWO_EACH},
    )
    # 8 -> 9: the one new pod goes to the empty n5; the others only grow (+50 each).
    decision = decide(snap, INGEST.key, 9)
    assert decision.allowed and decision.reason is AllowedReason.WITHIN_BUDGET
    assert decision.reservation == {"n1": 100, "n2": 100, "n3": 100, "n4": 100, "n5": 500}
    assert decision.receiving_nodes == 1
    assert decision.message == (
        "scaling prod/ingest-a from 8 to 9 replicas fits: the tightest node, n5, goes to "
        "1,500 threads (limit 32,768 less 20% margin = 26,214); at most 49 replicas fit"
    )
    held = decision.reservation_until(NOW + timedelta(minutes=2))
    assert held.cell == INGEST.key and held.target_replicas == 9
    # Once held, the reservation counts against every other cell's decision on those nodes.
    # A Shared cell: its first pod may go to any node, n5 among them. (A NodeExclusive
    # one would claim the node with the most threads free, see the claim tests.)
    other = cell(
        "billing-b",
        replicas=0,
        service="billing",
        base=26_214 - 1_000 - 499,
        isolation=Isolation.SHARED,
    )
    crowded = with_reservation(with_cell(snap, other), held)
    assert decide(with_cell(snap, other), other.key, 1).allowed
    refused = decide(crowded, other.key, 1)
    assert refused.reason is RefusalReason.NODE_THREAD_LIMIT
    assert refused.refused_node == "n5"


def test_pods_still_to_place_count_as_new_pods() -> None:
    # The spec says 8 but only 4 pods are bound: going to 9 places 5, so every node may
    # receive two (the water line rises from 1 to 3).
    pending = INGEST
    snap = snapshot(
        [node(name) for name in NAMES], [pending], {pending.key: dict.fromkeys(NAMES, 1)}
    )
    decision = decide(snap, pending.key, 9)
    per_pod_9, per_pod_8 = 500, 450
    assert decision.reservation == dict.fromkeys(NAMES, (per_pod_9 - per_pod_8) + 2 * per_pod_9)


def test_scaling_up_from_zero_spreads_over_every_eligible_node() -> None:
    fresh = cell("ingest-new", replicas=0, base=1_000, isolation=Isolation.SHARED)
    snap = snapshot([node(name) for name in NAMES], [fresh], {})
    decision = decide(snap, fresh.key, 5)  # 5 pods on 4 nodes: any node may get 2
    assert decision.allowed
    assert decision.reservation == dict.fromkeys(NAMES, 2_000)
    assert decision.receiving_nodes == 4
    assert decision.claimed_nodes == frozenset()  # Shared cells have no pool


def test_a_new_exclusive_cell_claims_the_fewest_nodes_that_keep_the_water_line() -> None:
    fresh = cell("ingest-new", replicas=0, base=1_000)
    # n4 is the least loaded, then n3, n2: claims take the most free nodes first.
    loads = {"n1": 4_000, "n2": 3_000, "n3": 2_000, "n4": 1_000}
    snap = snapshot([node(name, in_use=loads[name]) for name in NAMES], [fresh], {})
    decision = decide(snap, fresh.key, 5)  # at most 2 a node, as over all 4: 3 nodes do
    assert decision.allowed
    assert decision.claimed_nodes == {"n2", "n3", "n4"}
    assert decision.reservation == dict.fromkeys(("n2", "n3", "n4"), 2_000)
    assert decision.receiving_nodes == 3
    four = decide(snap, fresh.key, 4)  # one a node: all four
    assert four.claimed_nodes == set(NAMES)
    # Once labelled, the pool is where its pods go: nothing more to claim for the same size.
    pooled = snapshot(
        [node(name, in_use=loads[name], labels=_pool(fresh)) for name in ("n2", "n3", "n4")]
        + [node("n1", in_use=loads["n1"])],
        [fresh],
        {},
    )
    assert decide(pooled, fresh.key, 5).claimed_nodes == frozenset()


def test_a_sibling_claim_keeps_other_cells_off_the_claimed_nodes() -> None:
    a = cell("ingest-a", replicas=0, base=1_000)
    b = cell("ingest-b", replicas=0, base=1_000)
    snap = snapshot([node(name) for name in NAMES], [a, b], {})
    first = decide(snap, a.key, 2)
    assert first.allowed and first.claimed_nodes == {"n1", "n2"}
    held = with_reservation(snap, first.reservation_until(NOW + timedelta(minutes=2)))
    assert decide(held, b.key, 2).claimed_nodes == {"n3", "n4"}
    assert decide(snap, b.key, 2).claimed_nodes == {"n1", "n2"}  # without the claim


def test_a_blocked_spread_domain_caps_the_cell_and_is_refused_as_unschedulable() -> None:
    # A Shared cell beside a NodeExclusive sibling's legacy pods (no pool label yet): the
    # scheduler counts n1 and n2 as spread domains with 0 pods, so at most 1 a node.
    shared = cell("ingest-s", replicas=2, base=100, isolation=Isolation.SHARED)
    legacy = cell("ingest-x", replicas=2, base=100)
    pods = {shared.key: {"n3": 1, "n4": 1}, legacy.key: {"n1": 1, "n2": 1}}
    snap = snapshot([node(name) for name in NAMES], [shared, legacy], pods)
    assert decide(snap, shared.key, 2).allowed
    refused = decide(snap, shared.key, 3)
    assert not refused.allowed and refused.reason is RefusalReason.UNSCHEDULABLE
    assert refused.max_safe_replicas == 2
    assert "2 of the nodes its pods spread over cannot take them" in refused.message
    assert "2 hosting another cell of service ingest" in refused.message
    assert "at most 1 a node" in refused.message
    # Once the sibling's nodes are in its pool they are no domains of the Shared cell.
    labelled = snapshot(
        [node(name, labels=_pool(legacy)) for name in ("n1", "n2")]
        + [node(name) for name in ("n3", "n4")],
        [shared, legacy],
        pods,
    )
    assert decide(labelled, shared.key, 4).allowed


def test_terminating_pods_hold_threads_but_do_not_count_in_the_spread() -> None:
    shared = cell("web", replicas=2, base=100, isolation=Isolation.SHARED)
    snap = snapshot([node("n1"), node("n2")], [shared], {})
    placed = with_pods(snap, PodPlacement({shared.key: {"n1": 2}}, {shared.key: {"n1": 1}}))
    # One pod is leaving n1: its replacement is a new pod, and the spread sees n1 at 1.
    decision = decide(placed, shared.key, 2)
    rows = {row.node: row for row in decision.nodes}
    assert rows["n1"].pods == 2 and rows["n1"].new_pods == 0
    assert decision.receiving_nodes == 1  # n2, at 0


def _pool(view: CellView) -> dict[str, str]:
    return {pool_label_key(view.service): pool_label_value(view.namespace, view.name)}


def test_unknown_cell_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="prod/nope"):
        decide(snapshot([node("n1")]), CellKey("prod", "nope"), 1)
    with pytest.raises(ValueError, match="target replicas"):
        decide(snapshot([node("n1")], [INGEST]), INGEST.key, -1)


def test_status_at_the_current_size() -> None:
    snap = snapshot(
        [node(name, in_use=25_500 if name == "n3" else 1_000, pods_read=900) for name in NAMES],
        [INGEST],
        {INGEST.key: TWO_EACH},
    )
    status = cell_status(snap, INGEST.key)
    assert status.within_budget and status.reason is None
    assert (status.threads_per_pod, status.max_safe_replicas) == (450, 9)
    assert status.limiting_node == "n3"
    assert status.headroom == pytest.approx(1 - 25_500 / 32_768)
    assert status.headroom_text == "0.22"
    assert status.message == (
        "prod/ingest-a at 8 replicas is within budget: the tightest node, n3, is at 25,500 "
        "threads (limit 32,768 less 20% margin = 26,214); at most 9 replicas fit"
    )
    assert max_safe_replicas(snap, INGEST.key) == 9


def test_status_when_the_cell_no_longer_fits() -> None:
    snap = snapshot(
        [node(name, in_use=30_000 if name == "n2" else 1_000, pods_read=900) for name in NAMES],
        [INGEST],
        {INGEST.key: TWO_EACH},
    )
    status = cell_status(snap, INGEST.key)
    assert not status.within_budget
    assert status.reason is RefusalReason.NODE_THREAD_LIMIT
    assert status.limiting_node == "n2"
    assert status.headroom_text == "0.08"  # 1 - 30,000 / 32,768 = 0.0845 rounds down
    # Even 0 replicas leave n2 over (the pods are assumed to stay where they are).
    assert status.max_safe_replicas == 0
    assert "puts node n2 at 30,000 threads" in status.message
    # ... and still a scale-down is never refused.
    assert decide(snap, INGEST.key, 7).allowed


def test_a_new_exclusive_cell_with_only_unknown_free_nodes_names_one_of_them() -> None:
    # Budgets not reported yet (a pool just added): no node can be claimed, and the refusal
    # says why in the budget's words rather than "no node can take its pods".
    fresh = cell("ingest-new", replicas=0, base=1_000)
    snap = snapshot([node("n1", no_budget=True), node("n2", no_budget=True)], [fresh], {})
    refused = decide(snap, fresh.key, 1)
    assert not refused.allowed and refused.reason is RefusalReason.BUDGET_UNKNOWN
    assert "needs node n1, whose thread budget is unknown" in refused.message


def test_a_node_counts_its_other_threads_besides_the_pods_model() -> None:
    # Two pods of 12,000 threads on n1, whose last report (1,000 in use) came before them:
    # n1 holds 1,000 + 24,000. Counting max(observed, modelled) = 24,000 forgot the node's
    # own 1,000 and admitted a new pod of 1,500: 26,500 on a 26,214 allowance, as the
    # kernel counts it.
    big = cell("big", replicas=2, base=12_000, isolation=Isolation.SHARED)
    small = cell("small", replicas=0, base=1_500, service="s", isolation=Isolation.SHARED)
    pods = {big.key: {"n1": 2}}

    def new_pod_on(n1: NodeView) -> Decision:
        return decide(snapshot([n1], [big, small], pods), small.key, 1)

    refused = new_pod_on(node("n1", in_use=1_000))
    assert not refused.allowed and refused.reason is RefusalReason.NODE_THREAD_LIMIT
    assert refused.projected == 1_000 + 24_000 + 1_500
    # A report that read them (their 24,000 among its 25,000 in use) says the same.
    assert new_pod_on(node("n1", in_use=25_000, pods_read=24_000)).projected == 26_500
    # Pods holding more than their model: what the node reported stands.
    assert new_pod_on(node("n1", in_use=26_000, pods_read=25_000)).projected == 27_500
    # Room for it once the node's own threads leave room.
    assert new_pod_on(node("n1", in_use=24_700, pods_read=24_000)).allowed
