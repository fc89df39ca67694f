"""The gate's snapshot follows the cache change by change and answers as a fresh build."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget import (
    CellKey,
    Reservation,
    decide,
    eligible_nodes,
    pool_label_key,
    pool_label_value,
)
from cellguard.budget.eligibility import CLAIMS, claimed_by_others, own_claims
from cellguard.state.journal import ChangeJournal
from cellguard.state.reservations import ReservationLedger
from cellguard.state.snapshots import FOLLOW_AT_MOST, SnapshotCache, build_snapshot
from cellguard.state.store import ClusterState

from . import manifests
from .manifests import NOW, budget, node, pod

NODES = [f"n{i}" for i in range(5)]
NAMES = ["a", "b", "c", "d"]
# One service, both kinds: a NodeExclusive cell's claims keep the nodes from every other.
ISOLATION = {"a": "Shared", "b": "Shared", "c": "NodeExclusive", "d": "NodeExclusive"}


def cell(name: str, replicas: int, service: str, isolation: str) -> dict[str, Any]:
    return manifests.cell(
        "ns", name, replicas=replicas, service=service, isolation=isolation, per_peer=400
    )


def test_the_journal_names_what_changed_since_a_version() -> None:
    journal: ChangeJournal[str] = ChangeJournal(keep=4)
    assert journal.since(0) == []
    for key in ("a", "b", "a"):
        journal.bump(key)
    assert journal.version == 3
    assert journal.since(0) == ["b", "a"]  # each once, in the order of its last change
    assert journal.since(1) == ["b", "a"]
    assert journal.since(3) == []
    assert journal.since(4) is None  # not a version it made
    for key in ("c", "d", "e"):
        journal.bump(key)
    assert journal.since(1) is None  # version 2 was dropped: what changed then is not known
    assert journal.since(2) == ["a", "c", "d", "e"]


EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("cell"),
            st.sampled_from(NAMES),
            st.integers(0, 4),
            st.sampled_from(["s1", "s2"]),
            st.sampled_from(["Shared", "NodeExclusive"]),
        ),
        st.tuples(st.just("delete"), st.sampled_from(NAMES)),
        st.tuples(st.just("pool"), st.sampled_from(NODES), st.sampled_from([None, *NAMES])),
        st.tuples(st.just("cordon"), st.sampled_from(NODES), st.booleans()),
        st.tuples(
            st.just("pod"), st.integers(0, 30), st.sampled_from(NAMES), st.sampled_from(NODES)
        ),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(EVENTS)
def test_a_followed_snapshot_answers_as_a_fresh_one(events: list[tuple[Any, ...]]) -> None:
    state = ClusterState(clock=lambda: NOW)
    state.replace_all(
        nodes=[node(n) for n in NODES],
        budgets=[budget(n, in_use=2_000 + 1_000 * i) for i, n in enumerate(NODES)],
        cells=[cell("a", 2, "s1", "NodeExclusive"), cell("b", 1, "s1", "Shared")],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[pod("ns", "p-a", "a", "n0"), pod("ns", "p-b", "b", "n1")],
    )
    ledger = ReservationLedger()
    cache = SnapshotCache(state, ledger, now=lambda: NOW)
    labels: dict[str, dict[str, str]] = {n: {} for n in NODES}
    cordoned: dict[str, bool] = dict.fromkeys(NODES, False)
    structural = 0  # node changes other than labels: each rebuilds
    for event in events:
        kept = cache.snapshot()  # followed from here, with the indexes decisions fill
        for key, view in kept.cells.items():
            eligible_nodes(kept, view)
            decide(kept, key, view.replicas + 1)
        kind = event[0]
        if kind == "cell":
            _, name, replicas, service, isolation = event
            state.upsert_cell(cell(name, replicas, service, isolation))
        elif kind == "delete":
            state.delete_cell(CellKey("ns", event[1]))
        elif kind in ("pool", "cordon"):
            name = event[1]
            if kind == "pool":
                owner = event[2]
                labels[name] = (
                    {pool_label_key("s1"): pool_label_value("ns", owner)} if owner else {}
                )
            else:
                structural += cordoned[name] != event[2]
                cordoned[name] = event[2]
            manifest = node(name, **labels[name])
            manifest["spec"]["unschedulable"] = cordoned[name]
            state.upsert_node(manifest)
        else:
            _, index, cell_name, node_name = event
            state.upsert_pod(pod("ns", f"p{index}", cell_name, node_name))
    followed = cache.snapshot()
    fresh = build_snapshot(state, ledger, NOW)
    assert followed.nodes == fresh.nodes
    assert followed.cells == fresh.cells
    for key, view in fresh.cells.items():
        assert eligible_nodes(followed, view) == eligible_nodes(fresh, view), key
        for replicas in range(0, 7):
            assert decide(followed, key, replicas) == decide(fresh, key, replicas), key
    # One build at the start; after that only changes it cannot follow rebuild it.
    assert cache.rebuilds <= 1 + structural


def test_a_burst_of_new_cells_is_followed_without_rebuilding() -> None:
    state = ClusterState(clock=lambda: NOW)
    state.replace_all(
        nodes=[node(n) for n in NODES],
        budgets=[budget(n) for n in NODES],
        cells=[],
        policies=[{"metadata": {"name": "default"}, "spec": {}}],
        pods=[],
    )
    cache = SnapshotCache(state, ReservationLedger(), now=lambda: NOW)
    cache.snapshot()
    for index in range(40):
        state.upsert_cell(cell(f"c{index}", 1, f"s{index % 4}", "NodeExclusive"))
        state.upsert_node(node(NODES[index % 5], **{pool_label_key("s0"): f"ns.c{index}"}))
        assert decide(cache.snapshot(), CellKey("ns", f"c{index}"), 2).allowed is not None
    assert cache.rebuilds == 1
    assert len(cache.snapshot().cells) == 40
    # More changes at once than it follows: rebuilt.
    for index in range(FOLLOW_AT_MOST + 1):
        state.upsert_cell(cell(f"x{index}", 1, "s9", "Shared"))
    assert len(cache.snapshot().cells) == 41 + FOLLOW_AT_MOST
    assert cache.rebuilds == 2


def test_a_burst_of_claims_moves_the_claims_index_instead_of_rebuilding_it() -> None:
    # Each admitted NodeExclusive change holds a reservation claiming free nodes; rebuilt
    # from every reservation after each one, a burst of N new cells cost O(N^2).
    names = [f"e{index}" for index in range(12)]
    state = ClusterState(clock=lambda: NOW)
    state.replace_all(
        nodes=[node(n) for n in NODES],
        budgets=[budget(n) for n in NODES],
        cells=[cell(name, 1, "s1", "NodeExclusive") for name in names],
        policies=[{"metadata": {"name": "default"}, "spec": {}}],
        pods=[],
    )
    ledger = ReservationLedger()
    cache = SnapshotCache(state, ledger, now=lambda: NOW)
    for index, name in enumerate(names):
        kept = cache.snapshot()
        claimed_by_others(kept, kept.cells[CellKey("ns", name)])  # the index is built
        claimed = frozenset({NODES[index % len(NODES)]})
        expires = NOW + datetime.timedelta(seconds=30)
        ledger.hold(Reservation(CellKey("ns", name), {}, expires, claimed_nodes=claimed))
        followed = cache.snapshot()
        assert followed.peek(CLAIMS) is not None, "dropped: the next read rebuilds it"
        other = followed.cells[CellKey("ns", names[index - 1])]
        assert claimed <= claimed_by_others(followed, other)
    last = CellKey("ns", names[-1])
    assert own_claims(followed, followed.cells[last])
    ledger.release(last)
    followed = cache.snapshot()
    assert followed.peek(CLAIMS) is not None
    assert own_claims(followed, followed.cells[last]) == frozenset()
    assert cache.rebuilds == 1


LEDGER_EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("hold"),
            st.sampled_from(NAMES),
            st.dictionaries(st.sampled_from(NODES), st.integers(1, 9_000), max_size=3),
            st.integers(1, 90),  # seconds it holds
            st.frozensets(st.sampled_from(NODES), max_size=2),  # free nodes it claims
        ),
        st.tuples(st.just("release"), st.sampled_from(NAMES)),
        st.tuples(st.just("expire")),  # the ledger drops what expired (the gate does)
        st.tuples(st.just("tick"), st.integers(0, 60)),  # seconds; budgets go stale at 120
        st.tuples(
            st.just("pod"), st.integers(0, 30), st.sampled_from(NAMES), st.sampled_from(NODES)
        ),
        st.tuples(st.just("cell"), st.sampled_from(NAMES), st.integers(0, 6)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(LEDGER_EVENTS)
def test_a_kept_snapshot_seen_later_with_the_ledger_answers_as_a_fresh_one(
    events: list[tuple[Any, ...]],
) -> None:
    # Time moves, reservations are held, replaced, released and expire, pods come: the
    # snapshot the gate keeps (its figures and the claims index carried through seen_at and
    # with_reserved) must decide as one built from scratch at that moment, or it may admit
    # an overcommit, or give one cell's claimed node to another.
    clock = {"now": NOW}
    state = ClusterState(clock=lambda: clock["now"])
    state.replace_all(
        nodes=[node(n) for n in NODES],
        budgets=[budget(n, in_use=2_000 + 1_000 * i) for i, n in enumerate(NODES)],
        cells=[cell(name, 2, "s1", ISOLATION[name]) for name in NAMES],
        policies=[
            {
                "metadata": {"name": "default"},
                "spec": {"safetyMargin": 0.2, "staleAfterSeconds": 120},
            }
        ],
        pods=[pod("ns", "p-a", "a", "n0"), pod("ns", "p-b", "b", "n1")],
    )
    ledger = ReservationLedger()
    cache = SnapshotCache(state, ledger, now=lambda: clock["now"])
    for event in events:
        kept = cache.snapshot()
        for key in kept.cells:
            decide(kept, key, 5)  # fills the figures a decision reads, to be carried
        kind = event[0]
        now = clock["now"]
        if kind == "hold":
            _, name, threads_by_node, seconds, claimed = event
            ledger.hold(
                Reservation(
                    CellKey("ns", name),
                    threads_by_node,
                    now + datetime.timedelta(seconds=seconds),
                    target_replicas=5,
                    claimed_nodes=claimed if ISOLATION[name] == "NodeExclusive" else frozenset(),
                )
            )
        elif kind == "release":
            ledger.release(("ns", event[1]))
        elif kind == "expire":
            ledger.expire(now)
        elif kind == "tick":
            clock["now"] = now + datetime.timedelta(seconds=event[1])
        elif kind == "pod":
            _, index, cell_name, node_name = event
            state.upsert_pod(pod("ns", f"p{index}", cell_name, node_name))
        else:
            _, name, replicas = event
            state.upsert_cell(cell(name, replicas, "s1", ISOLATION[name]))
        followed = cache.snapshot()
        fresh = build_snapshot(state, ledger, clock["now"])
        for key, view in fresh.cells.items():
            assert claimed_by_others(followed, view) == claimed_by_others(fresh, view), key
            assert eligible_nodes(followed, view) == eligible_nodes(fresh, view), key
            for replicas in range(0, 9):
                assert decide(followed, key, replicas) == decide(fresh, key, replicas), (
                    key,
                    replicas,
                )
