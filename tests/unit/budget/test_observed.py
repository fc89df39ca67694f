"""A thread model that underestimates: the planner budgets what the pods really hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget import (
    CellView,
    ClusterSnapshot,
    ObservedThreads,
    decide,
    max_safe_replicas,
    threads_per_pod,
)
from cellguard.budget.threads import threads_for

from .helpers import cell, node, snapshot

# 4 nodes, one pod each; the model says 100 + 10 a peer (130 at 4 replicas), the pods
# really hold 1.5 times that.
MODEL = cell("ingest-a", replicas=4, base=100, per_peer=10)
WRONG = replace(MODEL, observed=ObservedThreads(per_pod=195, replicas=4))
NODES = ["n1", "n2", "n3", "n4"]
ONE_EACH = dict.fromkeys(NODES, 1)


def _world(view: CellView, in_use: int) -> ClusterSnapshot:
    """Each node's report: `in_use` threads, its one pod's read among them."""
    read = threads_for(view, view.replicas)
    nodes = [node(name, in_use=in_use, pid_max=4_000, pods_read=read) for name in NODES]
    return snapshot(nodes, [view], {MODEL.key: ONE_EACH})


def test_the_budget_per_pod_is_the_model_scaled_by_how_far_the_pods_exceed_it() -> None:
    assert threads_for(MODEL, 8) == threads_per_pod(100, 10, 8) == 170
    assert threads_for(WRONG, 4) == 195  # what they hold now
    assert threads_for(WRONG, 8) == 255  # 170 * 1.5
    assert threads_for(WRONG, 0) == 0
    # Pods holding fewer threads than the model: the model stands.
    assert threads_for(replace(MODEL, observed=ObservedThreads(90, 4)), 8) == 170


def test_a_scale_up_the_model_admits_is_refused_on_the_observed_figures() -> None:
    # pid_max 4,000 less 20% = 3,200 a node. The model at 8 replicas: 2 pods a node of 170
    # on 2,600 in use -> 2,600 + 40 growth + 170 = fits. Observed: 2,600 + 60 + 255 = fits
    # too; at 12 the model's 3 pods of 210 fit, the observed 3 of 315 do not.
    model_world = _world(MODEL, in_use=2_600)
    wrong_world = _world(WRONG, in_use=2_600)
    assert decide(model_world, MODEL.key, 12).allowed
    refused = decide(wrong_world, MODEL.key, 12)
    assert not refused.allowed and refused.reason is RefusalReason.NODE_THREAD_LIMIT
    assert "observed holding up to 195 threads each at 4 replicas" in refused.message
    assert "spec.threads says 130" in refused.message
    assert "kubectl cellguard fit streamcell/ingest-a -n prod" in refused.message
    assert max_safe_replicas(wrong_world, MODEL.key) < max_safe_replicas(model_world, MODEL.key)


def test_an_accurate_model_reads_as_before() -> None:
    world = _world(replace(MODEL, observed=ObservedThreads(130, 4)), in_use=2_600)
    assert "observed" not in decide(world, MODEL.key, 40).message


@given(
    base=st.integers(0, 5_000),
    per_peer=st.integers(0, 200),
    seen_at=st.integers(1, 64),
    excess=st.integers(0, 5_000),
    replicas=st.integers(1, 128),
)
def test_the_budget_never_falls_below_the_model_nor_below_what_was_observed(
    base: int, per_peer: int, seen_at: int, excess: int, replicas: int
) -> None:
    held = threads_per_pod(base, per_peer, seen_at) + excess
    view = replace(
        cell("x", replicas=seen_at, base=base, per_peer=per_peer),
        observed=ObservedThreads(held, seen_at),
    )
    budgeted = threads_for(view, replicas)
    assert budgeted >= threads_per_pod(base, per_peer, replicas)
    if replicas == seen_at:
        assert budgeted == held
    # Monotone in size, like the model: max_safe_replicas is still a binary search.
    assert threads_for(view, replicas + 1) >= budgeted


@pytest.mark.parametrize("seen_at", [1, 2])
def test_a_model_of_zero_threads_still_budgets_what_was_seen(seen_at: int) -> None:
    view = replace(cell("z", replicas=seen_at, base=0), observed=ObservedThreads(40, seen_at))
    assert threads_for(view, seen_at) == 40
