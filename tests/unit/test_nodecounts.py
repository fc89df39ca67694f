"""Grouped node counts: the same mapping as the dict they come from, in a fraction of it."""

from __future__ import annotations

import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget import CellKey, NodeCounts, NodeSetInterner, Reservation, grouped
from cellguard.budget.usage import reserved_of
from cellguard.state.reservations import ReservationLedger

from .manifests import NOW

NODES = [f"node-{i:03d}" for i in range(120)]

COUNTS = st.one_of(
    # Small maps, any values: kept as they are.
    st.dictionaries(st.sampled_from(NODES), st.integers(-5, 5_000), max_size=20),
    # Wide maps with a few distinct values (a worst case held on every receiving node).
    st.builds(
        lambda nodes, values, seed: {
            n: values[(i * seed) % len(values)] for i, n in enumerate(nodes)
        },
        st.lists(st.sampled_from(NODES), min_size=64, max_size=120, unique=True),
        st.lists(st.integers(1, 9_000), min_size=1, max_size=10, unique=True),
        st.integers(1, 7),
    ),
)


@settings(max_examples=300, deadline=None)
@given(COUNTS, st.sampled_from([*NODES, "not-a-node"]))
def test_grouped_counts_read_as_the_dict(counts: dict[str, int], probe: str) -> None:
    kept = grouped(counts, NodeSetInterner())
    assert kept == counts and counts == kept
    assert dict(kept) == counts and dict(kept.items()) == counts
    assert len(kept) == len(counts) and set(kept) == set(counts)
    assert (probe in kept) == (probe in counts)
    assert kept.get(probe) == counts.get(probe)
    distinct = len(set(counts.values()))
    assert isinstance(kept, NodeCounts) == (len(counts) >= 64 and distinct <= 8)


def test_equal_node_sets_are_shared_between_reservations() -> None:
    intern = NodeSetInterner(keep=2)
    first = grouped(dict.fromkeys(NODES, 69), intern)
    second = grouped(dict.fromkeys(reversed(NODES), 69), intern)
    assert isinstance(first, NodeCounts) and isinstance(second, NodeCounts)
    assert first.groups[0][1] is second.groups[0][1]
    # Past `keep` other sets, an old one is forgotten (the interner stays small).
    for size in (100, 90):
        grouped(dict.fromkeys(NODES[:size], 1), intern)
    third = grouped(dict.fromkeys(NODES, 69), intern)
    assert isinstance(third, NodeCounts)
    assert third == first and third.groups[0][1] is not first.groups[0][1]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "release"]),
            st.sampled_from([CellKey("ns", c) for c in "abcd"]),
            COUNTS,
        ),
        max_size=12,
    )
)
def test_the_ledger_holds_wide_reservations_grouped_with_the_same_figures(
    steps: list[tuple[str, CellKey, dict[str, int]]],
) -> None:
    ledger = ReservationLedger()
    expires = NOW + datetime.timedelta(minutes=2)
    for action, key, counts in steps:
        if action == "hold":
            ledger.hold(Reservation(key, counts, expires, 1, new_pods=dict.fromkeys(counts, 1)))
            held = ledger.get(key)
            assert held is not None
            assert held.threads_by_node == counts and held.new_pods == dict.fromkeys(counts, 1)
        else:
            ledger.release(key)
        assert ledger.reserved == reserved_of(ledger.held(), NOW)
