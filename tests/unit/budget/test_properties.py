"""Properties of the planner over small random clusters, checked against a brute force.

The brute force below shares no code with the planner: it re-derives eligibility, limits,
threads in use and reservations from the snapshot's raw values, and places new pods one
at a time (each on a node with the fewest pods of the cell, ties going to the node under
examination: the worst case for it). The planner must agree with it on every size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.api.v1alpha1 import (
    DefaultLimits,
    Isolation,
    KubepodsPids,
    NodeBudgetSpec,
    ThreadBudgetPolicySpec,
    Toleration,
    UnknownBudgetAction,
)
from cellguard.budget import (
    AllowedReason,
    CellKey,
    CellView,
    ClusterSnapshot,
    NodeView,
    Reservation,
    Taint,
    decide,
    max_safe_replicas,
    plan_for,
    project,
)

from .helpers import NOW, snapshot

SETTINGS = settings(max_examples=150, deadline=None)
EXCLUSIVE = Isolation.NODE_EXCLUSIVE

TAINTS = [
    Taint("dedicated", "stream", "NoSchedule"),
    Taint("gpu", "", "NoExecute"),
    Taint("soft", "", "PreferNoSchedule"),
]
TOLERATIONS = [
    Toleration(key="dedicated", operator="Exists"),
    Toleration(key="gpu", operator="Exists", effect="NoExecute"),
]


def _kubepods(limit: int | None) -> KubepodsPids:
    # None here is an unlimited (`max`) kubepods cgroup, not an unreadable one.
    return KubepodsPids(max=limit, unlimited=limit is None)


@st.composite
def budgets(draw: st.DrawFn, name: str) -> NodeBudgetSpec | None:
    kind = draw(st.sampled_from(["known"] * 5 + ["missing", "stale", "partial"]))
    if kind == "missing":
        return None
    pid_max = draw(st.sampled_from([3_000, 6_000, 32_768]))
    return NodeBudgetSpec(
        node_name=name,
        threads_max=draw(st.sampled_from([pid_max, 4_000, 4_194_304])),
        pid_max=pid_max,
        threads_in_use=None if kind == "partial" else draw(st.integers(0, 2_500)),
        kubepods=_kubepods(draw(st.sampled_from([None, None, 2_500, 5_000]))),
        pod_pids_limit=draw(st.sampled_from([None, None, None, 400, 1_500])),
        observed_at=NOW - timedelta(seconds=900 if kind == "stale" else 10),
    )


@st.composite
def nodes(draw: st.DrawFn, name: str) -> NodeView:
    return NodeView(
        name=name,
        labels={"zone": draw(st.sampled_from(["a", "b"]))},
        taints=tuple(draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True))),
        ready=draw(st.sampled_from([True] * 6 + [False])),
        unschedulable=draw(st.sampled_from([False] * 6 + [True])),
        budget=draw(budgets(name)),
    )


@st.composite
def cells(draw: st.DrawFn, name: str) -> CellView:
    return CellView(
        namespace=draw(st.sampled_from(["ns1", "ns1", "ns2"])),
        name=name,
        service=draw(st.sampled_from(["s1", "s2"])),
        base=draw(st.integers(1, 400)),
        per_peer=draw(st.sampled_from([0, 0, 1, 10, 60])),
        replicas=draw(st.integers(0, 8)),
        max_replicas=draw(st.sampled_from([None, None, 3, 12])),
        isolation=draw(st.sampled_from(list(Isolation))),
        node_selector=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
        tolerations=tuple(TOLERATIONS[i] for i in draw(st.sets(st.sampled_from([0, 1])))),
    )


@st.composite
def policies(draw: st.DrawFn) -> ThreadBudgetPolicySpec:
    use_defaults = draw(st.booleans())
    defaults = DefaultLimits(
        threads_max=100_000,
        pid_max=draw(st.sampled_from([3_000, 32_768])),
        threads_in_use=draw(st.integers(0, 2_000)),
        pod_pids_limit=draw(st.sampled_from([None, 900])),
    )
    return ThreadBudgetPolicySpec(
        safety_margin=draw(st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5])),
        default_max_replicas=draw(st.integers(1, 24)),
        unknown_budget=(
            UnknownBudgetAction.USE_DEFAULTS if use_defaults else UnknownBudgetAction.REFUSE
        ),
        defaults=defaults if use_defaults else None,
    )


@dataclass(frozen=True)
class World:
    snapshot: ClusterSnapshot
    cell: CellView


@st.composite
def worlds(draw: st.DrawFn) -> World:
    node_views = [draw(nodes(f"n{i}")) for i in range(draw(st.integers(1, 6)))]
    cell_views = [draw(cells(f"c{i}")) for i in range(draw(st.integers(1, 3)))]
    places = [n.name for n in node_views] + ["ghost"]  # a node the snapshot lost
    pods: dict[CellKey, dict[str, int]] = {}
    for view in cell_views:
        counts = {
            place: draw(st.integers(0, 3))
            for place in places
            if draw(
                st.sampled_from([True, False, False] if place != "ghost" else [False] * 9 + [True])
            )
        }
        pods[view.key] = {place: count for place, count in counts.items() if count}
    # Reservations, the tested cell's own among them; expiry exactly now means expired.
    reservations = [
        Reservation(
            cell=draw(st.sampled_from(cell_views)).key,
            threads_by_node={
                place: draw(st.integers(1, 4_000))
                for place in draw(st.sets(st.sampled_from(places), min_size=1))
            },
            expires_at=NOW + timedelta(seconds=draw(st.sampled_from([-1, 0, 60, 60]))),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    world = snapshot(
        node_views,
        cell_views,
        pods,
        policies={"default": draw(policies())},
        reservations=reservations,
    )
    return World(world, draw(st.sampled_from(cell_views)))


# --------------------------------------------------------------------------- brute force


def _threads(cell: CellView, replicas: int) -> int:
    return 0 if replicas <= 0 else cell.base + cell.per_peer * (replicas - 1)


def _tolerated(toleration: Toleration, taint: Taint) -> bool:
    if toleration.effect is not None and toleration.effect.value != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    return toleration.operator.value == "Exists" or (toleration.value or "") == taint.value


@dataclass(frozen=True)
class Worst:
    """A node in the worst case of one size: threads before, the change's, and allowed."""

    before: int  # max(observed, modelled) + other cells' reservations
    added: int  # growth of the cell's pods there + its worst-case new pods
    allowed: int

    @property
    def projected(self) -> int:
        return self.before + self.added


class BruteForce:
    def __init__(self, world: World) -> None:
        self.snap = world.snapshot
        self.cell = world.cell
        self.policy = self.snap.policies["default"]
        self.margin = Fraction(str(self.policy.safety_margin))
        self.hosting = dict(self.snap.pods.by_cell.get(self.cell.key, {}))

    def pods_of(self, cell: CellView, node: str) -> int:
        return self.snap.pods.by_cell.get(cell.key, {}).get(node, 0)

    def eligible(self, name: str) -> bool:
        node = self.snap.nodes.get(name)
        # The scheduler goes by taints, not the Ready condition (see eligibility).
        if node is None or node.unschedulable:
            return False
        if any(node.labels.get(k) != v for k, v in self.cell.node_selector.items()):
            return False
        for taint in node.taints:
            if taint.effect in ("NoSchedule", "NoExecute") and not any(
                _tolerated(t, taint) for t in self.cell.tolerations
            ):
                return False
        for other in self.snap.cells.values():
            same_service = (other.namespace, other.service) == (
                self.cell.namespace,
                self.cell.service,
            )
            exclusive = EXCLUSIVE in (other.isolation, self.cell.isolation)
            if (
                other.key != self.cell.key
                and same_service
                and exclusive
                and self.pods_of(other, name)
            ):
                return False
        return True

    def figures(self, name: str) -> tuple[int, int, int | None] | None:
        """(limit, observed, pod PID limit), or None when nothing may go there."""
        node = self.snap.nodes.get(name)
        b = node.budget if node else None
        if (
            b is not None
            and None not in (b.threads_max, b.pid_max, b.threads_in_use)
            and (self.snap.now - b.observed_at).total_seconds() <= self.policy.stale_after_seconds
        ):
            assert b.threads_max and b.pid_max and b.threads_in_use is not None
            limit = min(b.threads_max, b.pid_max, b.kubepods.max or math.inf)
            return int(limit), b.threads_in_use, b.pod_pids_limit
        d = self.policy.defaults
        if self.policy.unknown_budget is UnknownBudgetAction.USE_DEFAULTS and d is not None:
            limit = min(d.threads_max, d.pid_max, d.kubepods_pids_max or math.inf)
            return int(limit), d.threads_in_use, d.pod_pids_limit
        return None

    def allowed(self, limit: int) -> int:
        return math.floor(limit * (1 - self.margin))

    def received(self, target: str, new_pods: int, eligible: list[str]) -> int:
        if target not in eligible:
            return 0
        counts = {name: self.hosting.get(name, 0) for name in eligible}
        for _ in range(new_pods):
            fewest = min(counts.values())
            pick = (
                target
                if counts[target] == fewest
                else min(n for n in counts if counts[n] == fewest)
            )
            counts[pick] += 1
        return counts[target] - self.hosting.get(target, 0)

    def worst_case(self, replicas: int) -> dict[str, Worst | None] | None:
        """node -> its worst case for every node the cell uses at `replicas` (None for an
        unusable budget); None when no node can take the new pods."""
        eligible = sorted(n for n in self.snap.nodes if self.eligible(n))
        current = self.cell.replicas
        new_pods = max(0, replicas - min(sum(self.hosting.values()), current))
        if new_pods and not eligible:
            return None
        received = {n: self.received(n, new_pods, eligible) for n in eligible}
        used_nodes = set(self.hosting) | {n for n, r in received.items() if r}
        out: dict[str, Worst | None] = {}
        for name in used_nodes:
            figures = self.figures(name)
            if figures is None:
                out[name] = None
                continue
            limit, observed, _ = figures
            modelled = sum(
                _threads(c, c.replicas) * self.pods_of(c, name) for c in self.snap.cells.values()
            )
            reserved = sum(
                threads
                for r in self.snap.reservations
                if CellKey(*r.cell) != self.cell.key and r.expires_at > self.snap.now
                for node, threads in r.threads_by_node.items()
                if node == name
            )
            growth = (
                _threads(self.cell, replicas) - _threads(self.cell, current)
            ) * self.hosting.get(name, 0)
            added = _threads(self.cell, replicas) * received.get(name, 0)
            out[name] = Worst(
                max(observed, modelled) + reserved, growth + added, self.allowed(limit)
            )
        return out

    def fits(self, replicas: int) -> bool:
        cap = self.cell.max_replicas or self.policy.default_max_replicas
        if replicas > cap:
            return False
        nodes = self.worst_case(replicas)
        if nodes is None or any(v is None for v in nodes.values()):
            return False
        if replicas > 0:
            eligible = {n for n in self.snap.nodes if self.eligible(n)}
            pod_limits = [
                f[2]
                for n in eligible | set(self.hosting)
                if (f := self.figures(n)) is not None and f[2] is not None
            ]
            if pod_limits and _threads(self.cell, replicas) > self.allowed(min(pod_limits)):
                return False
        return all(v is not None and v.projected <= v.allowed for v in nodes.values())

    def cap(self) -> int:
        return self.cell.max_replicas or self.policy.default_max_replicas


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(worlds())
def test_planner_agrees_with_brute_force_at_every_size(world: World) -> None:
    brute = BruteForce(world)
    for replicas in range(brute.cap() + 3):
        assert project(world.snapshot, world.cell.key, replicas).fits == brute.fits(replicas), (
            replicas
        )


@SETTINGS
@given(worlds())
def test_max_safe_replicas_is_exactly_the_boundary(world: World) -> None:
    brute = BruteForce(world)
    cap = brute.cap()
    best = max_safe_replicas(world.snapshot, world.cell.key)
    assert 0 <= best <= cap
    fitting = [m for m in range(cap + 1) if brute.fits(m)]
    assert best == (max(fitting) if fitting else 0)
    if best or fitting:
        assert project(world.snapshot, world.cell.key, best).fits
    if best < cap:
        assert not project(world.snapshot, world.cell.key, best + 1).fits


@SETTINGS
@given(worlds())
def test_projection_is_monotone_in_replicas(world: World) -> None:
    plan = plan_for(world.snapshot, world.cell)
    assert plan is not None
    previous_fits, previous_headroom = True, math.inf
    previous_held: dict[str, int] = {}
    for replicas in range(plan.cap + 3):
        projection = plan.project(replicas)
        assert not (projection.fits and not previous_fits), replicas  # fits only shrinks
        if projection.headroom is not None:
            assert projection.headroom <= previous_headroom + 1e-12
            previous_headroom = projection.headroom
        held = plan.reservation(replicas)
        assert all(held.get(n, 0) >= threads for n, threads in previous_held.items())
        previous_fits, previous_held = projection.fits, held


@SETTINGS
@given(worlds())
def test_an_admitted_plan_never_projects_a_node_past_its_limit(world: World) -> None:
    brute = BruteForce(world)
    for target in range(world.cell.replicas + 1, brute.cap() + 3):
        decision = decide(world.snapshot, world.cell.key, target)
        if not decision.allowed:
            continue
        assert target <= brute.cap()
        worst = brute.worst_case(target)
        assert worst is not None
        for name, node in worst.items():
            assert node is not None, f"{name}: admitted onto a node with no budget"
            assert node.projected <= node.allowed, f"{name} at {target}: {node}"
        # What the operator holds is exactly what the change may add, node by node.
        expected = {name: node.added for name, node in worst.items() if node and node.added > 0}
        assert dict(decision.reservation) == expected


@SETTINGS
@given(worlds(), st.data())
def test_scale_down_and_no_change_are_never_refused(world: World, data: st.DataObject) -> None:
    target = data.draw(st.integers(0, world.cell.replicas))
    decision = decide(world.snapshot, world.cell.key, target)
    assert decision.allowed
    expected = (
        AllowedReason.NO_CHANGE if target == world.cell.replicas else AllowedReason.SCALE_DOWN
    )
    assert decision.reason is expected
    assert decision.reservation == {}


@SETTINGS
@given(worlds(), st.data())
def test_derived_snapshots_carry_the_figures_a_fresh_snapshot_computes(
    world: World, data: st.DataObject
) -> None:
    """with_reservation / with_cell adjust their parent's figures instead of rebuilding
    them; after any sequence of changes they must equal a snapshot built from scratch."""
    current = world.snapshot
    for _ in range(data.draw(st.integers(1, 4))):
        project(current, world.cell.key, world.cell.replicas + 1)  # fill the indexes
        cell = data.draw(st.sampled_from(list(current.cells.values())))
        change = data.draw(st.sampled_from(["hold", "release", "resize", "wait"]))
        if change == "hold":
            threads = {
                n: data.draw(st.integers(1, 3_000))
                for n in data.draw(st.sets(st.sampled_from(sorted(current.nodes)), min_size=1))
            }
            current = current.with_reservation(
                Reservation(cell.key, threads, NOW + timedelta(seconds=60))
            )
        elif change == "release":
            current = current.without_reservation(cell.key)
        elif change == "wait":  # crossing, or not, the 60 s expiry and 300 s staleness
            seconds = data.draw(st.sampled_from([1, 59, 60, 61, 280, 291, 400]))
            current = current.at(current.now + timedelta(seconds=seconds))
        else:
            current = current.with_cell(replace(cell, replicas=data.draw(st.integers(0, 9))))
    fresh = ClusterSnapshot.build(
        nodes=current.nodes.values(),
        cells=current.cells.values(),
        pods=current.pods,
        policies=current.policies,
        now=current.now,
        reservations=current.reservations,
    )
    for replicas in range(world.cell.replicas + 4):
        assert project(current, world.cell.key, replicas) == project(
            fresh, world.cell.key, replicas
        )
    for name in ("usage.modelled", "usage.reserved", "usage.slack:default", "usage.policy:default"):
        carried = current.peek(name)
        if carried is not None:
            assert carried == fresh.peek(name), name
