"""The thread model and the water-filling bound on where new pods land."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget.spread import WaterFill
from cellguard.budget.threads import threads_per_pod


@pytest.mark.parametrize(
    ("base", "per_peer", "replicas", "expected"),
    [
        (100, 0, 0, 0),  # no pods, no threads
        (100, 0, 1, 100),
        (100, 0, 50, 100),  # no peer fan-out: flat
        (100, 10, 1, 100),  # alone: no peers
        (100, 10, 2, 110),
        (500, 130, 180, 500 + 130 * 179),
    ],
)
def test_threads_per_pod(base: int, per_peer: int, replicas: int, expected: int) -> None:
    assert threads_per_pod(base, per_peer, replicas) == expected


@pytest.mark.parametrize(
    ("counts", "new_pods", "level"),
    [
        ([0, 0, 0], 0, 0),
        ([0, 0, 0], 1, 1),  # any of three may take it: all may reach 1
        ([0, 0, 0], 3, 1),
        ([0, 0, 0], 4, 2),
        ([5, 5, 5, 5, 5, 5, 5, 5], 8, 6),
        ([5, 5, 5, 5, 5, 5, 5, 5], 2, 6),  # ties against us: every node may get one
        ([3, 0, 0], 2, 1),  # the two empty nodes first
        ([3, 0, 0], 6, 3),
        ([3, 0, 0], 7, 4),
        ([2, 1, 0], 1, 1),
        ([2, 1, 0], 2, 2),
        ([2, 1, 0], 3, 2),
        ([2, 1, 0], 4, 3),
        ([7], 3, 10),
    ],
)
def test_water_level(counts: list[int], new_pods: int, level: int) -> None:
    assert WaterFill(Counter(counts)).level(new_pods) == level


def test_no_nodes_cannot_take_pods() -> None:
    fill = WaterFill({})
    assert fill.level(0) == 0
    with pytest.raises(ValueError, match="no eligible node"):
        fill.level(1)


def _worst_case_for(counts: list[int], new_pods: int, favoured: int) -> int:
    """Per-pod simulation: each pod goes to a node with the fewest pods; ties go to
    `favoured` when it is among them. Returns how many pods `favoured` receives."""
    counts = list(counts)
    for _ in range(new_pods):
        fewest = min(counts)
        target = favoured if counts[favoured] == fewest else counts.index(fewest)
        counts[target] += 1
    return counts[favoured]


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=7),
    new_pods=st.integers(min_value=0, max_value=25),
)
def test_bound_is_exactly_the_worst_tie_breaking(counts: list[int], new_pods: int) -> None:
    fill = WaterFill(Counter(counts))
    level = fill.level(new_pods)
    assert sum(WaterFill.received(level, c) for c in counts) >= new_pods
    for index, count in enumerate(counts):
        worst = _worst_case_for(counts, new_pods, index) - count
        assert WaterFill.received(level, count) == worst
