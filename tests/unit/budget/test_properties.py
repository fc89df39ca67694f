"""Properties of the planner over small random clusters, checked against a brute force.

The brute force below shares no code with the planner: it re-derives placement, pools,
isolation, claims, the spread's water line, limits, threads in use and reservations from
the snapshot's raw values (only the pool label's format comes from `pools`), and places
new pods one at a time (each on a node with the fewest live pods of the cell, ties going
to the node under examination: the worst case for it). The planner must agree with it on
every size.

The model it re-derives (cell X, node n):
- placement(X): nodes of the snapshot, not cordoned, matching X's nodeSelector, tolerating
  every NoSchedule/NoExecute taint; its spread domains also count cordoned nodes.
- A node is in the pool of X when its label `cellpool.cellguard.io/<service>` is
  `<namespace>.<cell>`; pooled nodes carry that key, whatever the value.
- excluded(X): nodes hosting a pod (terminating too) of another cell of X's namespace and
  service when either is NodeExclusive. Claims: nodes live reservations of cells of X's
  service (any namespace) take into their pools.
- NodeExclusive: receivers = its pool (placement) less excluded and others' claims, plus
  the hosts of X in no pool ("adopted"); claimable = free placement nodes in no pool, not
  excluded, not claimed, not hosting X, with a usable budget; domains = its pool.
  Shared: receivers = placement in no pool less excluded and claims; domains = no pool.
- Domains that cannot receive cap the water line at their fewest live pods + 1.
- The plan: of the prefixes of the claim order (the cell's own claims, then the most free
  threads), the one whose worst case fits every node with the lowest water line, then the
  fewest claims. (The lowest line over every claimable node alone is not monotone in size:
  a larger size may fit on fewer, freer nodes at a higher line; see the pinned worlds.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.api.v1alpha1 import (
    DefaultLimits,
    Isolation,
    KubepodsPids,
    NodeBudgetSpec,
    RefusalReason,
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
    PodPlacement,
    Reservation,
    ReservationLike,
    Taint,
    decide,
    eligible_nodes,
    max_safe_replicas,
    plan_for,
    project,
    seen_at,
    with_cell,
    with_node_labels,
    with_reservation,
    without_cell,
    without_reservation,
)
from cellguard.budget.eligibility import BY_LABEL, BY_SERVICE, CLAIMS, spread_domains
from cellguard.budget.eligibility import _cells_by_service as eligibility_by_service
from cellguard.budget.eligibility import _claims as claims_of
from cellguard.budget.eligibility import _label_values as label_values
from cellguard.budget.pools import pool_label_key, pool_label_value
from cellguard.budget.snapshot import Index
from cellguard.budget.usage import MODELLED, POLICY_NODES, RESERVED, SLACK

from . import helpers
from .helpers import NOW

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
GONE = CellKey("ns1", "gone")  # a cell the snapshot does not have (deleted, or never was)


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
def nodes(draw: st.DrawFn, name: str, owners: list[tuple[str, str]]) -> NodeView:
    """`owners`: (service, pool label value) a node's pool label may name."""
    labels = {"zone": draw(st.sampled_from(["a", "b"]))}
    # About half the nodes are in a pool; a few in two (of two services); later wins.
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        service, value = draw(st.sampled_from(owners))
        labels[pool_label_key(service)] = value
    return NodeView(
        name=name,
        labels=labels,
        taints=tuple(draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True))),
        ready=draw(st.sampled_from([True] * 6 + [False])),
        unschedulable=draw(st.sampled_from([False] * 6 + [True])),
        budget=draw(budgets(name)),
        # What its report read for the cell pods (most read none; some read more than
        # the report's in-use figure: never below 0 others).
        cell_pod_threads=draw(st.sampled_from([0, 0, 0, 500, 1_500, 3_000])),
    )


@st.composite
def cells(draw: st.DrawFn, name: str) -> CellView:
    return CellView(
        namespace=draw(st.sampled_from(["ns1", "ns1", "ns2"])),
        name=name,
        service=draw(st.sampled_from(["s1", "s1", "s2"])),
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
    cell_views = [draw(cells(f"c{i}")) for i in range(draw(st.integers(1, 3)))]
    # Pool labels name the world's cells (under their own service's key), and now and then
    # a cell that does not exist (its label outlived it).
    owners = [(c.service, pool_label_value(c.namespace, c.name)) for c in cell_views] * 3
    owners.append(("s1", pool_label_value(*GONE)))
    node_views = [draw(nodes(f"n{i}", owners)) for i in range(draw(st.integers(1, 6)))]
    places = [n.name for n in node_views] + ["ghost"]  # a node the snapshot lost
    by_cell: dict[CellKey, dict[str, int]] = {}
    terminating: dict[CellKey, dict[str, int]] = {}
    for view in cell_views:
        counts = {
            place: draw(st.integers(0, 3))
            for place in places
            if draw(
                st.sampled_from([True, False, False] if place != "ghost" else [False] * 9 + [True])
            )
        }
        by_cell[view.key] = {place: count for place, count in counts.items() if count}
        # Some of them terminating: they hold threads, the spread does not count them.
        leaving = {
            place: draw(st.integers(0, count))
            for place, count in by_cell[view.key].items()
            if draw(st.sampled_from([True, False, False, False]))
        }
        if any(leaving.values()):
            terminating[view.key] = {place: n for place, n in leaving.items() if n}
    # Reservations, the tested cell's own among them (and a deleted cell's, whose claims
    # name no cell of the snapshot); expiry exactly now means expired.
    holders = [c.key for c in cell_views] * 3 + [GONE]
    reservations = [
        Reservation(
            cell=draw(st.sampled_from(holders)),
            threads_by_node={
                place: draw(st.integers(1, 4_000))
                for place in draw(st.sets(st.sampled_from(places), min_size=1))
            },
            expires_at=NOW + timedelta(seconds=draw(st.sampled_from([-1, 0, 60, 60]))),
            claimed_nodes=frozenset(
                draw(st.sets(st.sampled_from(places), max_size=3)) if draw(st.booleans()) else ()
            ),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    world = ClusterSnapshot.build(
        nodes=node_views,
        cells=cell_views,
        pods=PodPlacement(by_cell, terminating),
        policies={"default": draw(policies())},
        now=NOW,
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

    before: int  # max(observed, others + modelled) + other cells' reservations
    added: int  # growth of the cell's pods there + its worst-case new pods
    allowed: int

    @property
    def projected(self) -> int:
        return self.before + self.added


class BruteForce:
    def __init__(self, world: World) -> None:
        self.snap = snap = world.snapshot
        self.cell = cell = world.cell
        self.policy = snap.policies["default"]
        self.margin = Fraction(str(self.policy.safety_margin))
        pods = snap.pods.by_cell.get(cell.key, {})
        leaving = snap.pods.terminating.get(cell.key, {})
        self.count = {n: c for n, c in pods.items() if c > 0}  # c_n: every pod, for threads
        self.live = {n: c - leaving.get(n, 0) for n, c in self.count.items()}  # s_n: spread
        self.hosts = set(self.count)

        names = set(snap.nodes)
        label, mine = pool_label_key(cell.service), pool_label_value(cell.namespace, cell.name)
        self.domains_base = {n for n in names if self.matches(n)}
        self.placement = {n for n in self.domains_base if not snap.nodes[n].unschedulable}
        self.pooled = {n for n in names if label in snap.nodes[n].labels}
        self.own_pool = {n for n in self.pooled if snap.nodes[n].labels[label] == mine}
        self.excluded = {
            n
            for other in snap.cells.values()
            if other.key != cell.key
            and (other.namespace, other.service) == (cell.namespace, cell.service)
            and EXCLUSIVE in (other.isolation, cell.isolation)
            for n, c in snap.pods.by_cell.get(other.key, {}).items()
            if c > 0
        }
        self.claimed_by_others = self.claims(lambda key: key != cell.key)
        self.own_claims = self.claims(lambda key: key == cell.key)
        unusable = {n for n in names if self.figures(n) is None}
        keep_off = self.excluded | self.claimed_by_others
        if cell.isolation is EXCLUSIVE:
            self.adopt = {
                h for h in self.hosts if h in self.placement and h not in self.pooled | keep_off
            }
            self.receivers = ((self.placement & self.own_pool) - keep_off) | self.adopt
            self.claimable = self.placement - self.pooled - keep_off - self.hosts - unusable
            # Free but of unknown budget: never claimed, named when they are all there is.
            self.unknown_free = (self.placement - self.pooled - keep_off - self.hosts) & unusable
            domains = self.domains_base & self.own_pool
        else:
            self.adopt = set()
            self.receivers = self.placement - self.pooled - keep_off
            self.claimable = set()
            self.unknown_free = set()
            domains = self.domains_base - self.pooled
        self.blocked = domains - self.receivers
        self.level_cap = min(self.s(n) for n in self.blocked) + 1 if self.blocked else None
        self.unusable = unusable

    # ----------------------------------------------------------------- the world

    def s(self, name: str) -> int:
        return self.live.get(name, 0)

    def matches(self, name: str) -> bool:
        """The cell's nodeSelector and tolerations allow the node (cordoned or not)."""
        node = self.snap.nodes[name]
        # The scheduler goes by taints, not the Ready condition (see eligibility).
        if any(node.labels.get(k) != v for k, v in self.cell.node_selector.items()):
            return False
        return all(
            any(_tolerated(t, taint) for t in self.cell.tolerations)
            for taint in node.taints
            if taint.effect in ("NoSchedule", "NoExecute")
        )

    def live_reservations(self) -> list[ReservationLike]:
        return [r for r in self.snap.reservations if r.expires_at > self.snap.now]

    def claims(self, whose: Callable[[CellKey], bool]) -> set[str]:
        claimed: set[str] = set()
        for r in self.live_reservations():
            owner = self.snap.cells.get(CellKey(*r.cell))
            if owner is not None and owner.service == self.cell.service and whose(owner.key):
                claimed |= r.claimed_nodes
        return claimed

    def figures(self, name: str) -> tuple[int, int, int | None, int] | None:
        """(limit, observed, pod PID limit, observed threads not the cell pods' the report
        read), or None when nothing may go there."""
        node = self.snap.nodes.get(name)
        b = node.budget if node else None
        if (
            b is not None
            and None not in (b.threads_max, b.pid_max, b.threads_in_use)
            and (self.snap.now - b.observed_at).total_seconds() <= self.policy.stale_after_seconds
        ):
            assert b.threads_max and b.pid_max and b.threads_in_use is not None
            limit = min(b.threads_max, b.pid_max, b.kubepods.max or math.inf)
            assert node is not None
            others = max(0, b.threads_in_use - node.cell_pod_threads)
            return int(limit), b.threads_in_use, b.pod_pids_limit, others
        d = self.policy.defaults
        if self.policy.unknown_budget is UnknownBudgetAction.USE_DEFAULTS and d is not None:
            limit = min(d.threads_max, d.pid_max, d.kubepods_pids_max or math.inf)
            return int(limit), d.threads_in_use, d.pod_pids_limit, d.threads_in_use
        return None

    def allowed(self, limit: int) -> int:
        return math.floor(limit * (1 - self.margin))

    def used(self, name: str, observed: int, others: int) -> int:
        modelled = sum(
            _threads(c, c.replicas) * self.snap.pods.by_cell.get(c.key, {}).get(name, 0)
            for c in self.snap.cells.values()
        )
        return max(observed, others + modelled)

    def reserved(self, name: str, whose: Callable[[CellKey], bool]) -> int:
        return sum(
            r.threads_by_node.get(name, 0)
            for r in self.live_reservations()
            if whose(CellKey(*r.cell))
        )

    def cap(self) -> int:
        if self.cell.max_replicas is not None:
            return self.cell.max_replicas
        return self.policy.default_max_replicas

    # ----------------------------------------------------------------- at size M

    def new_pods(self, replicas: int) -> int:
        placed = sum(max(0, s) for s in self.live.values())
        return max(0, replicas - min(placed, self.cell.replicas))

    def line(self, counts: list[int], new: int) -> int:
        """The smallest water line L with Σ max(0, L - count) ≥ new (0 when new is 0)."""
        level = 0
        while sum(max(0, level - count) for count in counts) < new:
            assert counts, "no node to place new pods on"
            level += 1
        return level

    def lowest_line(self, replicas: int) -> int:
        """The water line over every receiver and every claimable node."""
        counts = [self.s(n) for n in self.receivers] + [0] * len(self.claimable)
        return self.line(counts, self.new_pods(replicas))

    def free(self, name: str) -> int:
        figures = self.figures(name)
        assert figures is not None  # claimable nodes have a usable budget
        limit, observed, _, others = figures
        return (
            self.allowed(limit)
            - self.used(name, observed, others)
            - self.reserved(name, lambda _: True)
            + self.reserved(name, lambda key: key == self.cell.key)
        )

    def claim_order(self) -> list[str]:
        """Claimable nodes in the order claims take them: the cell's own claims first, then
        the most free threads, then by name."""
        return sorted(self.claimable, key=lambda n: (n not in self.own_claims, -self.free(n), n))

    def load(self, replicas: int, level: int, claimed: list[str]) -> dict[str, Worst | None]:
        """node -> its worst case when new pods fill receivers and `claimed` up to `level`,
        for every node that hosts the cell or gets new pods (None: an unusable budget)."""
        threads = _threads(self.cell, replicas)
        growth = threads - _threads(self.cell, self.cell.replicas)
        where = self.receivers | set(claimed)
        received = {n: max(0, level - self.s(n)) for n in where}
        out: dict[str, Worst | None] = {}
        for name in self.hosts | {n for n, r in received.items() if r}:
            figures = self.figures(name)
            if figures is None:
                out[name] = None
                continue
            limit, observed, _, others = figures
            before = self.used(name, observed, others) + self.reserved(
                name, lambda key: key != self.cell.key
            )
            added = growth * self.count.get(name, 0) + threads * received.get(name, 0)
            out[name] = Worst(before, added, self.allowed(limit))
        return out

    def plan(self, replicas: int) -> tuple[int, list[str]] | None:
        """(water line, claimed nodes) the cell's new pods at `replicas` go by, or None.

        Every prefix of the claim order is a candidate: new pods fill the receivers and
        those claimed nodes. Of the candidates whose worst case fits every node (and whose
        line the spread's cap allows), the plan is the one with the lowest line - the new
        pods spread over the most nodes - and then the fewest claims.
        """
        new = self.new_pods(replicas)
        order = self.claim_order()
        fitting = []
        for k in range(len(order) + 1):
            claimed = order[:k]
            counts = [self.s(n) for n in self.receivers | set(claimed)]
            if new and not counts:
                continue
            level = self.line(counts, new)
            if self.level_cap is not None and level > self.level_cap:
                continue
            load = self.load(replicas, level, claimed)
            if all(node is not None and node.projected <= node.allowed for node in load.values()):
                fitting.append((level, k, claimed))
        if not fitting:
            return None
        level, _, claimed = min(fitting, key=lambda plan: plan[:2])
        return level, claimed

    def claimed(self, replicas: int) -> list[str]:
        """Free nodes the cell at `replicas` takes into its pool (it must fit)."""
        plan = self.plan(replicas)
        assert plan is not None
        return plan[1]

    def received(self, target: str, new_pods: int, where: set[str]) -> int:
        """New pods `target` gets when the scheduler breaks every tie against it."""
        if target not in where:
            return 0
        counts = {name: self.s(name) for name in where}
        for _ in range(new_pods):
            fewest = min(counts.values())
            pick = (
                target
                if counts[target] == fewest
                else min(n for n in counts if counts[n] == fewest)
            )
            counts[pick] += 1
        return counts[target] - self.s(target)

    def worst_case(self, replicas: int) -> dict[str, Worst | None]:
        """node -> its worst case under the plan at `replicas` (which must fit), placing the
        new pods one at a time over the receivers and the claimed nodes."""
        plan = self.plan(replicas)
        assert plan is not None
        level, claimed = plan
        new_pods = self.new_pods(replicas)
        where = self.receivers | set(claimed)
        received = {n: self.received(n, new_pods, where) for n in where}
        # The pod by pod placement bounds each node at the water line, as `load` has it.
        assert received == {n: max(0, level - self.s(n)) for n in where}, (received, level)
        return self.load(replicas, level, claimed)

    def refusal(self, replicas: int) -> str | None:
        """Why the cell does not fit at `replicas`, in the brute force's words (None: fits)."""
        if replicas > self.cap():
            return "size cap"
        new = self.new_pods(replicas)
        if new and not self.receivers and not self.claimable:
            return "budget" if self.unknown_free else "no nodes"
        lowest = self.lowest_line(replicas)
        if self.level_cap is not None and (
            lowest > self.level_cap
            or replicas > self.level_cap * (len(self.receivers) + len(self.claimable))
        ):
            return "unschedulable"
        if self.hosts & self.unusable or (new and (self.receivers - self.hosts) & self.unusable):
            return "budget"
        if replicas > 0:
            where = self.receivers | self.claimable | self.hosts
            pod_limits = [
                f[2] for n in where if (f := self.figures(n)) is not None and f[2] is not None
            ]
            if pod_limits and _threads(self.cell, replicas) > self.allowed(min(pod_limits)):
                return "pod PID limit"
        if self.plan(replicas) is None:
            return "node"
        return None

    def fits(self, replicas: int) -> bool:
        return self.refusal(replicas) is None


# Refusals the planner checks first, in this order; the rest it may report in any order.
ORDERED = {
    "size cap": {RefusalReason.CELL_SIZE_CAP},
    "no nodes": {RefusalReason.NO_ELIGIBLE_NODES},
    "unschedulable": {RefusalReason.UNSCHEDULABLE},
}
LATER = {
    RefusalReason.BUDGET_UNKNOWN,
    RefusalReason.BUDGET_STALE,
    RefusalReason.POD_PID_LIMIT,
    RefusalReason.NODE_THREAD_LIMIT,
}


# --------------------------------------------------------------------------- properties
#
# Each property is a check of one world, run on random worlds (`test_*`) and on the
# pinned worlds below, where hypothesis once found the planner at odds with the model.


def check_agreement(world: World) -> None:
    brute = BruteForce(world)
    for replicas in range(brute.cap() + 3):
        projection = project(world.snapshot, world.cell.key, replicas)
        why = brute.refusal(replicas)
        assert projection.fits == (why is None), (replicas, why, projection.reason)
        if why is not None:
            assert projection.reason in ORDERED.get(why, LATER), (replicas, why)


def check_max_safe(world: World) -> None:
    brute = BruteForce(world)
    cap = brute.cap()
    best = max_safe_replicas(world.snapshot, world.cell.key)
    assert 0 <= best <= cap
    fitting = [m for m in range(cap + 1) if brute.fits(m)]
    assert best == (max(fitting) if fitting else 0), fitting
    if best or fitting:
        assert project(world.snapshot, world.cell.key, best).fits
    if best < cap:
        assert not project(world.snapshot, world.cell.key, best + 1).fits


def check_monotone(world: World) -> None:
    plan = plan_for(world.snapshot, world.cell)
    assert plan is not None
    previous_fits, previous_headroom = True, math.inf
    previous_held: dict[str, int] = {}
    previous_claims: set[str] = set()
    for replicas in range(plan.cap + 3):
        projection = plan.project(replicas)
        assert not (projection.fits and not previous_fits), replicas  # fits only shrinks
        previous_fits = projection.fits
        if not projection.fits:
            # A size that does not fit is projected at the lowest water line, not at the
            # higher one a smaller size may have fitted at: its figures can be lower.
            continue
        # A cell that claims free nodes may claim fewer (and freer) ones at a larger size,
        # when a higher water line lets fewer nodes hold its new pods: what it holds on a
        # claimed node, and that node's headroom, may then go. Everywhere else (hosts and
        # receivers, at a water line that never goes down) the figures only grow.
        claims = set(plan.claimed(replicas)) - plan.adopt
        headroom = min(
            (
                r.headroom
                for r in projection.rows
                if r.headroom is not None and r.node not in claims
            ),
            default=None,
        )
        if headroom is not None:
            assert headroom <= previous_headroom + 1e-12, replicas
            previous_headroom = headroom
        held = plan.reservation(replicas)
        shrunk = {
            n: (t, held.get(n, 0))
            for n, t in previous_held.items()
            if held.get(n, 0) < t and n not in previous_claims
        }
        assert not shrunk, (replicas, shrunk)
        previous_held, previous_claims = held, claims


def check_admitted_plan(world: World) -> None:
    brute = BruteForce(world)
    for target in range(world.cell.replicas + 1, brute.cap() + 3):
        decision = decide(world.snapshot, world.cell.key, target)
        if not decision.allowed:
            continue
        assert target <= brute.cap()
        worst = brute.worst_case(target)
        for name, node in worst.items():
            assert node is not None, f"{name}: admitted onto a node with no budget"
            assert node.projected <= node.allowed, f"{name} at {target}: {node}"
        # What the operator holds is exactly what the change may add, node by node.
        expected = {name: node.added for name, node in worst.items() if node and node.added > 0}
        assert dict(decision.reservation) == expected
        # And it takes exactly the nodes the brute force would into the cell's pool.
        assert decision.claimed_nodes == brute.adopt | set(brute.claimed(target))


def check_exclusive_claims(world: World) -> None:
    """An admitted scale-up of a NodeExclusive cell claims no node another cell claimed or
    owns, and holds threads for new pods only where they may go: receivers (adopted hosts
    among them) and the nodes it claims. Elsewhere it holds only the growth of its pods
    already there (a host it cannot add pods to, e.g. one a sibling's pods share)."""
    if world.cell.isolation is not EXCLUSIVE:
        return
    brute = BruteForce(world)
    label = pool_label_key(world.cell.service)
    mine = pool_label_value(world.cell.namespace, world.cell.name)
    others_pools = {
        name for name, node in world.snapshot.nodes.items() if node.labels.get(label, mine) != mine
    }
    current = _threads(world.cell, world.cell.replicas)
    for target in range(world.cell.replicas + 1, brute.cap() + 1):
        decision = decide(world.snapshot, world.cell.key, target)
        if not decision.allowed:
            continue
        claimed = set(decision.claimed_nodes)
        assert not claimed & brute.claimed_by_others, target
        assert not claimed & others_pools, target
        may_receive = brute.receivers | brute.adopt | claimed
        growth = _threads(world.cell, target) - current
        for name, threads in decision.reservation.items():
            if name not in may_receive:
                assert threads == growth * brute.count.get(name, 0), (target, name)


@SETTINGS
@given(worlds())
def test_planner_agrees_with_brute_force_at_every_size(world: World) -> None:
    check_agreement(world)


@SETTINGS
@given(worlds())
def test_max_safe_replicas_is_exactly_the_boundary(world: World) -> None:
    check_max_safe(world)


@SETTINGS
@given(worlds())
def test_projection_is_monotone_in_replicas(world: World) -> None:
    check_monotone(world)


@SETTINGS
@given(worlds())
def test_an_admitted_plan_never_projects_a_node_past_its_limit(world: World) -> None:
    check_admitted_plan(world)


@SETTINGS
@given(worlds())
def test_an_exclusive_scale_up_claims_only_free_nodes_and_holds_only_where_it_may_go(
    world: World,
) -> None:
    check_exclusive_claims(world)


# Worlds where hypothesis found the planner at odds with the model or a property; kept so
# that they are checked on every run, not only when the random search finds them again.


def _claims_step_down() -> World:
    """Two empty nodes and a full one; a new NodeExclusive cell. At 3 replicas the water
    line over all three free nodes is 1: claiming all three, the full one refuses; at 4 the
    line is 2 and two nodes do. 3 fits on those two as well: a planner that only tried the
    lowest line refused 3, admitted 4, and its max_safe_replicas (a binary search) said 2."""
    fresh = helpers.cell("c0", replicas=0, base=1, namespace="ns1", service="s1")
    full = [
        helpers.node("n0", in_use=0),
        helpers.node("n1", in_use=0),
        helpers.node("n2", in_use=32_768),
    ]
    rules = helpers.policy(safetyMargin=0.0, defaultMaxReplicas=4)
    return World(helpers.snapshot(full, [fresh], {}, policies={"default": rules}), fresh)


def _claims_shrink() -> World:
    """Three empty nodes, a new NodeExclusive cell: at 3 replicas it claims (and holds
    threads on) all three, at 4 only two: what it holds on n2 goes down as it grows (which
    `check_monotone` allows on claimed nodes only)."""
    fresh = helpers.cell("c0", replicas=0, base=1, namespace="ns1", service="s1")
    empty = [helpers.node(f"n{i}", in_use=0) for i in range(3)]
    rules = helpers.policy(safetyMargin=0.0, defaultMaxReplicas=4)
    return World(helpers.snapshot(empty, [fresh], {}, policies={"default": rules}), fresh)


def _lost_host_pod_limit() -> World:
    """A pod on a node the snapshot lost; the policy's defaults stand in for unknown
    budgets, podPidsLimit 900 among them. The planner applied the defaults to that host's
    threads but not to its pod PID limit, and admitted 3 replicas at 1,000 threads a pod."""
    legacy = helpers.cell("c0", replicas=1, base=800, per_peer=100, namespace="ns1", service="s1")
    defaults = {"threadsMax": 100_000, "pidMax": 32_768, "threadsInUse": 0, "podPidsLimit": 900}
    rules = helpers.policy(
        safetyMargin=0.0, defaultMaxReplicas=4, unknownBudget="UseDefaults", defaults=defaults
    )
    pods = {legacy.key: {"ghost": 1}}
    return World(
        helpers.snapshot(
            [helpers.node("n0", in_use=0)], [legacy], pods, policies={"default": rules}
        ),
        legacy,
    )


def _line_above_replicas() -> World:
    """A NodeExclusive cell scaled down to 2 whose 5 pods all still run on its one pool
    node, beside a full free node. Growing to 3 it has 1 new pod: at the lowest line (1) it
    would claim the full node, but its pool node alone takes it at line 6. (The planner once
    searched lines up to the target size only, 3, and refused.)"""
    cell = helpers.cell("c0", replicas=2, base=1, namespace="ns1", service="s1")
    pool = {pool_label_key("s1"): pool_label_value("ns1", "c0")}
    nodes = [helpers.node("h", labels=pool, in_use=0), helpers.node("n1", in_use=32_768)]
    rules = helpers.policy(defaultMaxReplicas=4)
    pods = {cell.key: {"h": 5}}
    return World(helpers.snapshot(nodes, [cell], pods, policies={"default": rules}), cell)


PINNED = [
    pytest.param(check_max_safe, _claims_step_down, id="max-safe-claims-step-down"),
    pytest.param(check_monotone, _claims_step_down, id="monotone-claims-step-down"),
    pytest.param(check_monotone, _claims_shrink, id="monotone-claims-shrink"),
    pytest.param(check_agreement, _lost_host_pod_limit, id="agreement-lost-host-pod-limit"),
    pytest.param(check_max_safe, _lost_host_pod_limit, id="max-safe-lost-host-pod-limit"),
    pytest.param(
        check_agreement,
        _line_above_replicas,
        id="agreement-line-above-replicas",
    ),
]


@pytest.mark.parametrize(("check", "world"), PINNED)
def test_pinned_worlds(check: Callable[[World], None], world: Callable[[], World]) -> None:
    check(world())


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
    """with_reservation / with_cell / without_cell / with_node_labels adjust their
    parent's figures and indexes instead of rebuilding them; after any sequence of changes
    they must answer as a snapshot built from scratch."""
    current = world.snapshot
    for _ in range(data.draw(st.integers(1, 5))):
        project(current, world.cell.key, world.cell.replicas + 1)  # fill the indexes
        for view in current.cells.values():
            eligible_nodes(current, view)
        cell = data.draw(st.sampled_from(list(current.cells.values())))
        others = [c for c in current.cells.values() if c.key != world.cell.key]
        change = data.draw(
            st.sampled_from(["hold", "release", "resize", "wait", "move", "drop", "relabel"])
        )
        if change == "hold":
            names = sorted(current.nodes)
            threads = {
                n: data.draw(st.integers(1, 3_000))
                for n in data.draw(st.sets(st.sampled_from(names), min_size=1))
            }
            claims = frozenset(data.draw(st.sets(st.sampled_from(names), max_size=2)))
            current = with_reservation(
                current,
                Reservation(cell.key, threads, NOW + timedelta(seconds=60), claimed_nodes=claims),
            )
        elif change == "release":
            current = without_reservation(current, cell.key)
        elif change == "wait":  # crossing, or not, the 60 s expiry and 300 s staleness
            seconds = data.draw(st.sampled_from([1, 59, 60, 61, 280, 291, 400]))
            current = seen_at(current, current.now + timedelta(seconds=seconds))
        elif change == "move":  # another service or isolation: its pool, claims and peers
            current = with_cell(
                current,
                replace(
                    cell,
                    service=data.draw(st.sampled_from(["s1", "s2", "s3"])),
                    isolation=data.draw(st.sampled_from(list(Isolation))),
                ),
            )
        elif change == "drop" and others:  # deleted (its pods and reservations may stay)
            current = without_cell(current, data.draw(st.sampled_from(others)).key)
        elif change == "relabel":  # a node joins or leaves a pool, or changes zone
            name = data.draw(st.sampled_from(sorted(current.nodes)))
            labels = dict(current.nodes[name].labels)
            key = data.draw(st.sampled_from([pool_label_key("s1"), pool_label_key("s2"), "zone"]))
            value = data.draw(
                st.sampled_from(
                    [
                        None,
                        "a",
                        *(pool_label_value(c.namespace, c.name) for c in current.cells.values()),
                    ]
                )
            )
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
            current = with_node_labels(current, name, labels)
        else:
            current = with_cell(current, replace(cell, replicas=data.draw(st.integers(0, 9))))
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
    for view in current.cells.values():
        assert eligible_nodes(current, view) == eligible_nodes(fresh, view), view.key
        assert spread_domains(current, view) == spread_domains(fresh, view), view.key
    indexes: list[Index[Any]] = [
        MODELLED,
        RESERVED,
        SLACK.of("default"),
        POLICY_NODES.of("default"),
        CLAIMS,
        *(BY_LABEL.of(key) for key in ("zone", pool_label_key("s1"), pool_label_key("s2"))),
    ]
    for key in ("zone", pool_label_key("s1"), pool_label_key("s2")):
        label_values(fresh, key)  # the fresh snapshot's own, computed
    claims_of(fresh, "s1")
    for index in indexes:
        carried = current.peek(index)
        expected = fresh.peek(index)
        if carried is not None and expected is not None:
            assert carried == expected, index
    services = current.peek(BY_SERVICE)
    if services is not None:  # carried in another order: the same cells per service

        def by_key(of_service: dict[Any, Any]) -> dict[Any, Any]:
            return {s: sorted(v, key=lambda c: c.key) for s, v in of_service.items()}

        assert by_key(services) == by_key(eligibility_by_service(fresh))
