"""The reservation ledger's figures, the gate's snapshots of them, and the pod-by-pod
release of a reservation on the operator's cache."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget import (
    CellKey,
    ClusterSnapshot,
    Reservation,
    decide,
    threads_per_pod,
    with_reserved,
)
from cellguard.budget.usage import RESERVED, SLACK, reserved_of
from cellguard.state.gate import ScaleGate
from cellguard.state.reservations import ReservationLedger
from cellguard.state.settling import release_if_placed
from cellguard.state.snapshots import SnapshotCache, build_snapshot
from cellguard.state.store import ClusterState

from .manifests import NOW, budget, cell, node, pod

NODES = ["n1", "n2", "n3"]
CELLS = [CellKey("ns", name) for name in ("a", "b", "c", "d")]


class Counter:
    def count_decision(self, allowed: bool, reason: str) -> None:
        pass


def cluster(nodes: tuple[str, ...] = tuple(NODES), **cells: int) -> ClusterState:
    state = ClusterState(clock=lambda: NOW)
    state.replace_all(
        nodes=[node(n) for n in nodes],
        budgets=[budget(n) for n in nodes],
        cells=[cell("ns", name, replicas=r, service=f"svc-{name}") for name, r in cells.items()],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[],
    )
    return state


def fresh(
    state: ClusterState, ledger: ReservationLedger, now: datetime.datetime
) -> ClusterSnapshot:
    """The snapshot with its reservation figures summed from scratch."""
    built = build_snapshot(state, ReservationLedger(), now)
    return ClusterSnapshot.build(
        nodes=built.nodes.values(),
        cells=built.cells.values(),
        pods=built.pods,
        policies=built.policies,
        now=now,
        reservations=ledger.held(),
    )


# ---------------------------------------------------------------------- the ledger


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "hold", "release", "expire"]),
            st.sampled_from(CELLS),
            st.dictionaries(st.sampled_from(NODES), st.integers(0, 500), max_size=3),
            st.integers(1, 60),  # seconds to live, or to expire at
        ),
        max_size=30,
    )
)
def test_the_ledger_keeps_its_figures_and_every_earlier_value_of_them(
    steps: list[tuple[str, CellKey, dict[str, int], int]],
) -> None:
    ledger = ReservationLedger()
    earlier = []
    for action, key, threads, seconds in steps:
        if action == "hold":
            ledger.hold(Reservation(key, threads, NOW + datetime.timedelta(seconds=seconds), 1))
        elif action == "release":
            ledger.release(key)
        else:
            expired = ledger.expire(NOW + datetime.timedelta(seconds=seconds))
            assert all(r.expires_at <= NOW + datetime.timedelta(seconds=seconds) for r in expired)
            assert all(
                r.expires_at > NOW + datetime.timedelta(seconds=seconds) for r in ledger.held()
            )
        counted = reserved_of(ledger.held(), NOW - datetime.timedelta(days=1))  # all of them
        assert ledger.reserved == counted
        earlier.append((ledger.reserved, counted))
        # A snapshot at a later moment drops the expired ones, as a fresh sum would.
        later = NOW + datetime.timedelta(seconds=seconds)
        bare = ClusterSnapshot.build(nodes=[], cells=[], pods=[], policies={}, now=later)
        snapshot = with_reserved(bare, ledger.held(), ledger.reserved)
        assert snapshot.peek(RESERVED) == reserved_of(ledger.held(), later)
        assert snapshot.reservations == tuple(r for r in ledger.held() if r.expires_at > later)
    for value, contents in earlier:
        assert value == contents  # persistent: nothing changed under an earlier value


def test_a_snapshot_keeps_its_figures_when_the_ledger_moves_on() -> None:
    # Each cell alone may go to 8 (4 a node at 3,700 threads); both at 8 would need 30,600
    # on a node against 26,214 allowed.
    state = cluster(("n1", "n2"), a=2, b=2)
    for name in ("a", "b"):
        state.upsert_pod(pod("ns", f"{name}-1", name, "n1"))
        state.upsert_pod(pod("ns", f"{name}-2", name, "n2"))
    ledger = ReservationLedger()
    cache = SnapshotCache(state, ledger, now=lambda: NOW)
    before = cache.snapshot()
    first = decide(before, CELLS[0], 8)
    assert first.allowed
    ledger.hold(first.reservation_until(NOW + datetime.timedelta(minutes=2)))
    after = cache.snapshot()
    # The earlier snapshot still answers as it did; the new one counts a's reservation.
    assert decide(before, CELLS[0], 8) == first
    assert decide(before, CELLS[1], 8).allowed
    assert not decide(after, CELLS[1], 8).allowed
    # The carried figures are a fresh sum's, and so are the free threads derived from them.
    scratch = fresh(state, ledger, NOW)
    decide(scratch, CELLS[1], 8)
    assert after.peek(RESERVED) == scratch.peek(RESERVED)
    assert after.peek(SLACK.of("default")) == scratch.peek(SLACK.of("default"))
    ledger.release(CELLS[0])
    assert decide(cache.snapshot(), CELLS[1], 8).allowed
    assert not decide(after, CELLS[1], 8).allowed  # still as it was


def test_an_expired_reservation_stops_counting_before_the_ledger_drops_it() -> None:
    state = cluster(a=2, b=2)
    ledger = ReservationLedger()
    clock = {"now": NOW}
    cache = SnapshotCache(state, ledger, now=lambda: clock["now"])
    decide(cache.snapshot(), CELLS[1], 2)
    ledger.hold(
        Reservation(CELLS[0], dict.fromkeys(NODES, 25_000), NOW + datetime.timedelta(seconds=5))
    )
    assert not decide(cache.snapshot(), CELLS[1], 3).allowed
    clock["now"] = NOW + datetime.timedelta(seconds=6)
    snapshot = cache.snapshot()
    assert len(ledger) == 1  # housekeeping has not run yet
    assert decide(snapshot, CELLS[1], 3).allowed
    scratch = fresh(state, ledger, clock["now"])
    decide(scratch, CELLS[1], 3)
    assert snapshot.peek(RESERVED) == scratch.peek(RESERVED) == reserved_of((), NOW)
    assert snapshot.peek(SLACK.of("default")) == scratch.peek(SLACK.of("default"))
    assert [r.cell for r in ledger.expire(clock["now"])] == [CELLS[0]]


# ---------------------------------------------------------------------- pod by pod


def test_a_reservation_shrinks_as_pods_are_bound_and_waits_for_the_admitted_spec() -> None:
    state = cluster(a=1)
    state.upsert_pod(pod("ns", "a-1", "a", "n1"))
    state.note_applied(CELLS[0], 1)
    ledger = ReservationLedger()
    gate = ScaleGate(state, ledger, Counter(), now=lambda: NOW)
    assert asyncio.run(gate.admit_scale(("ns", "a"), 3, dry_run=False)).allowed
    held = ledger.get(CELLS[0])
    per_pod = threads_per_pod(3_000, 100, 3)
    # 1 -> 3: n1's pod grows by two peers; n2 and n3 may each receive one new pod.
    assert held is not None and held.generation == 2
    assert dict(held.threads_by_node) == {"n1": 200, "n2": per_pod, "n3": per_pod}
    assert dict(held.new_pods or {}) == {"n2": 1, "n3": 1}
    # A pod event before the cache sees spec.replicas 3: its one pod is in place at the
    # old size, but the change's pods are all still to come.
    state.upsert_pod({**pod("ns", "a-1", "a", "n1"), "status": {"phase": "Running", "x": 1}})
    assert not release_if_placed(state, ledger, CELLS[0])
    assert ledger.get(CELLS[0]) is held
    state.upsert_cell(cell("ns", "a", replicas=3, service="svc-a", generation=2))
    state.note_applied(CELLS[0], 3)
    state.upsert_pod(pod("ns", "a-2", "a", None))
    state.upsert_pod(pod("ns", "a-3", "a", None))
    assert not release_if_placed(state, ledger, CELLS[0])
    # The cache counts n1's pod at 3 replicas now: its growth is no longer held.
    held = ledger.get(CELLS[0])
    assert held is not None and dict(held.threads_by_node) == {"n2": per_pod, "n3": per_pod}
    state.upsert_pod(pod("ns", "a-2", "a", "n3"))
    assert not release_if_placed(state, ledger, CELLS[0])
    held = ledger.get(CELLS[0])
    assert held is not None and dict(held.threads_by_node) == {"n2": per_pod}
    # A decision now counts a's pod on n3 by the model, and the reservation on n2 only.
    reserved = gate.snapshot().peek(RESERVED)
    assert reserved is not None and dict(reserved.total) == {"n2": per_pod}
    state.upsert_pod(pod("ns", "a-3", "a", "n2"))
    assert release_if_placed(state, ledger, CELLS[0])
    assert ledger.get(CELLS[0]) is None


# ---------------------------------------------------------------------- the gate's snapshot

GATE_STEPS = st.lists(
    st.one_of(
        *[st.tuples(st.just("admit"), st.sampled_from(CELLS[:2]), st.integers(1, 10))] * 3,
        st.tuples(st.just("apply"), st.sampled_from(CELLS[:2])),  # the admitted spec lands
        st.tuples(st.just("backstop"), st.sampled_from(CELLS[:2])),
        st.tuples(st.just("bind"), st.sampled_from(CELLS[:2]), st.sampled_from(NODES)),
        st.tuples(st.just("remove"), st.sampled_from(CELLS[:2])),  # a pod goes (scale-down)
        st.tuples(st.just("settle"), st.sampled_from(CELLS[:2])),
        st.tuples(st.just("tick"), st.integers(0, 40)),  # seconds; reservations hold 60
        st.tuples(st.just("expire")),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(GATE_STEPS)
def test_the_gates_kept_snapshot_decides_as_a_fresh_one(steps: list[tuple[Any, ...]]) -> None:
    # The gate's snapshot is carried from decision to decision (cells followed, pods and
    # the ledger swapped in, time moved on). Whatever the order of admissions, applied
    # specs, pods and expiries, every decision on it must be the one a snapshot summed from
    # scratch at that moment gives: a figure carried wrong is an overcommit admitted.
    clock = {"now": NOW}
    state = ClusterState(clock=lambda: clock["now"])
    state.replace_all(
        nodes=[node(n) for n in NODES],
        budgets=[budget(n, in_use=1_000 + 4_000 * i) for i, n in enumerate(NODES)],
        cells=[cell("ns", key.name, replicas=2, service="svc") for key in CELLS[:2]],
        policies=[
            {
                "metadata": {"name": "default"},
                "spec": {"safetyMargin": 0.2, "reservationTtlSeconds": 60},
            }
        ],
        pods=[],
    )
    assert state.policies["default"].reservation_ttl_seconds == 60
    ledger = ReservationLedger()
    gate = ScaleGate(state, ledger, Counter(), now=lambda: clock["now"])
    generation = dict.fromkeys(CELLS[:2], 1)
    admitted: dict[CellKey, int] = {}
    pods: dict[CellKey, list[str]] = {key: [] for key in CELLS[:2]}
    serial = 0

    def add_pod(key: CellKey, node_name: str | None) -> None:
        nonlocal serial
        serial += 1
        name = f"{key.name}-{serial}"
        pods[key].append(name)
        state.upsert_pod(pod("ns", name, key.name, node_name))

    for key in CELLS[:2]:
        for node_name in NODES[:2]:
            add_pod(key, node_name)
        state.note_applied(key, 2)
    for kind, *args in steps:
        if kind == "admit":
            key, target = args
            if asyncio.run(gate.admit_scale(key, target, dry_run=False)).allowed:
                admitted[key] = target
        elif kind == "apply":
            (key,) = args
            if key in admitted:
                generation[key] += 1
                state.upsert_cell(
                    cell(
                        "ns",
                        key.name,
                        replicas=admitted.pop(key),
                        service="svc",
                        generation=generation[key],
                    )
                )
        elif kind == "backstop":
            (key,) = args
            answer = asyncio.run(gate.backstop(state.cells[key], state.deployment_replicas(key)))
            if answer.allowed:
                state.note_applied(key, answer.replicas_to_apply)
        elif kind == "bind":
            key, node_name = args
            if len(pods[key]) < (state.deployment_replicas(key) or 0):
                add_pod(key, node_name)
        elif kind == "remove":
            (key,) = args
            if len(pods[key]) > (state.deployment_replicas(key) or 0):
                state.delete_pod(("ns", pods[key].pop(0)))
        elif kind == "settle":
            (key,) = args
            release_if_placed(state, ledger, key)
        elif kind == "tick":
            (seconds,) = args
            clock["now"] += datetime.timedelta(seconds=seconds)
        else:
            ledger.expire(clock["now"])
        kept = gate.snapshot()
        scratch = build_snapshot(state, ledger, clock["now"])
        for key in CELLS[:2]:
            for target in range(1, 11):
                assert decide(kept, key, target) == decide(scratch, key, target), (key, target)
