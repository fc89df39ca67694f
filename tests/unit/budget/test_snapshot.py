"""Snapshots: cheap derivations that keep what did not change, and the same answers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget import (
    CellKey,
    ClusterSnapshot,
    PodPlacement,
    decide,
    pool_label_key,
    pool_label_value,
    seen_at,
    with_cell,
    with_node_labels,
    with_reservation,
    without_cell,
    without_reservation,
)
from cellguard.budget.eligibility import BY_LABEL, BY_SERVICE, SCHEDULABLE, TAINT_GROUPS
from cellguard.budget.snapshot import Index
from cellguard.budget.usage import MODELLED, POLICY_NODES, RESERVED, SLACK

from .helpers import NOW, cell, node, reservation, snapshot

A = cell("a", replicas=4, base=2_000, per_peer=100)
B = cell("b", replicas=2, base=3_000, service="billing")


def _world() -> ClusterSnapshot:
    nodes = [node(f"n{i}", in_use=2_000, age=timedelta(seconds=200)) for i in range(4)]
    return snapshot(nodes, [A, B], {A.key: {"n0": 2, "n1": 2}, B.key: {"n2": 1, "n3": 1}})


def _same_answers(derived: ClusterSnapshot, fresh: ClusterSnapshot) -> None:
    for key in (A.key, B.key):
        for target in range(0, 12):
            assert decide(derived, key, target) == decide(fresh, key, target)


def test_pod_placement_from_pairs() -> None:
    placement = PodPlacement.from_pairs(
        [(("prod", "a"), "n1"), (("prod", "a"), "n1"), (("prod", "b"), "n2")]
    )
    assert placement.of_cell(("prod", "a")) == {"n1": 2}
    assert placement.on_node("n1") == {CellKey("prod", "a"): 2}
    assert placement.of_cell(("prod", "zzz")) == {}


def test_a_plain_tuple_is_a_cell_key() -> None:
    assert decide(_world(), ("prod", "a"), 5) == decide(_world(), A.key, 5)
    assert str(A.key) == "prod/a"


def test_with_reservation_keeps_node_indexes_and_answers_like_a_fresh_snapshot() -> None:
    world = _world()
    decide(world, A.key, 6)  # fills the derived indexes
    held = reservation(B, {"n0": 22_000, "n1": 22_000})
    derived = with_reservation(world, held)
    assert derived.peek(MODELLED) is world.peek(MODELLED)  # unchanged
    # Reservations changed: their totals and the free threads are carried over, adjusted.
    assert derived.peek(RESERVED) is not None
    fresh = snapshot(list(world.nodes.values()), [A, B], world.pods.by_cell, reservations=[held])
    _same_answers(derived, fresh)
    assert derived.peek(SLACK.of("default")) == fresh.peek(SLACK.of("default"))
    assert derived.peek(RESERVED) == fresh.peek(RESERVED)
    assert decide(world, A.key, 6).allowed and not decide(derived, A.key, 6).allowed
    # A newer reservation of the same cell replaces the older one.
    assert with_reservation(derived, reservation(B, {"n0": 1})).reservations == (
        reservation(B, {"n0": 1}),
    )
    assert without_reservation(derived, B.key).reservations == ()


def test_with_cell_carries_what_depends_on_cells() -> None:
    world = _world()
    decide(world, A.key, 6)
    bigger = replace(A, replicas=6)
    derived = with_cell(world, bigger)
    assert derived.peek(TAINT_GROUPS) is world.peek(TAINT_GROUPS)
    # The cells by service: carried with the one cell replaced, not rebuilt.
    assert derived.peek(BY_SERVICE) == {("prod", A.service): (bigger,), ("prod", "billing"): (B,)}
    fresh = snapshot(list(world.nodes.values()), [bigger, B], world.pods.by_cell)
    _same_answers(derived, fresh)
    assert derived.peek(MODELLED) == fresh.peek(MODELLED)
    assert derived.peek(SLACK.of("default")) == fresh.peek(SLACK.of("default"))


def test_without_cell_frees_its_nodes_for_the_others() -> None:
    world = _world()
    decide(world, A.key, 6)
    gone = without_cell(world, B.key)
    assert B.key not in gone.cells and B.key in world.cells
    assert gone.peek(BY_SERVICE) == {("prod", A.service): (A,)}
    fresh = snapshot(list(world.nodes.values()), [A], world.pods.by_cell)
    for target in range(12):
        assert decide(gone, A.key, target) == decide(fresh, A.key, target)
    assert gone.peek(MODELLED) == fresh.peek(MODELLED)
    assert without_cell(gone, B.key) is gone  # nothing to remove


def test_a_relabelled_node_keeps_every_figure_and_moves_in_its_label_index() -> None:
    world = _world()
    decide(world, A.key, 6)
    decide(world, B.key, 3)
    key = pool_label_key(B.service)
    relabelled = with_node_labels(world, "n0", {key: pool_label_value("prod", "b")})
    # Budgets, taints and figures do not read labels: kept as they are.
    kept: tuple[Index[Any], ...] = (
        TAINT_GROUPS,
        POLICY_NODES.of("default"),
        SLACK.of("default"),
        MODELLED,
    )
    for index in kept:
        assert relabelled.peek(index) is world.peek(index), index
    assert relabelled.peek(BY_LABEL.of(key)) == {pool_label_value("prod", "b"): frozenset({"n0"})}
    assert relabelled.nodes["n0"].labels == {key: pool_label_value("prod", "b")}
    assert world.nodes["n0"].labels == {}
    fresh = snapshot(list(relabelled.nodes.values()), [A, B], world.pods.by_cell)
    _same_answers(relabelled, fresh)
    assert with_node_labels(relabelled, "n0", relabelled.nodes["n0"].labels) is relabelled


def test_at_moves_staleness_on() -> None:
    world = _world()  # budgets observed 200 s ago; stale after 300 s
    assert decide(world, A.key, 5).allowed
    # 100 s on, nothing turned stale: every figure carries over as it is.
    soon = seen_at(world, NOW + timedelta(seconds=100))
    indexes: tuple[Index[Any], ...] = (SCHEDULABLE, POLICY_NODES.of("default"), SLACK.of("default"))
    for index in indexes:
        assert soon.peek(index) is world.peek(index), index
    assert decide(soon, A.key, 5).allowed
    # A second later every budget is stale: the node figures are derived anew.
    later = seen_at(world, NOW + timedelta(seconds=101))
    assert later.peek(SCHEDULABLE) is world.peek(SCHEDULABLE)
    assert later.peek(POLICY_NODES.of("default")) is None
    assert decide(later, A.key, 5).reason is RefusalReason.BUDGET_STALE
