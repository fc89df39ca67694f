"""The plan: everything about one cell in one snapshot that decides whether a size fits.

For a scale-up to M replicas (docs/concepts.md explains the model):
1. per pod: threads per pod at M ≤ the pod PID limit less the margin;
2. per node: for every node that hosts or may receive the cell's pods,
   projected = used + other cells' reservations + Δ ≤ limit less margin, used =
   max(observed, others + modelled): the node's threads besides the cell pods (the report's
   in use less the pods' own readings) plus the cell pods' modelled threads (`usage`),
   Δ = growth of the cell's pods already there + threads of the new pods it may receive
   (worst case of the scheduler's water-filling, see `spread`; `_added` writes it);
3. M ≤ the cell size cap;
4. the scheduler can place them: spread domains that cannot receive cap the water line.
A node whose budget is unknown or stale refuses (unless the policy uses defaults).

The projection only grows with M, so `max_safe_replicas` is a binary search. Everything
that does not depend on M is prepared once per plan (`CellPlan`), and what does not depend
on the cell once per snapshot (`usage`), so a decision costs O(E) set operations and
O(P log cap) arithmetic for E eligible nodes and a cell of P pods. The questions asked of a
plan (decide, project ...) are in `decisions`; the sentences in `explain`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import accumulate

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget.eligibility import (
    excluded_by_isolation,
    free_nodes,
    is_pooled,
    own_claims,
    receiving_nodes,
    spread_domains,
)
from cellguard.budget.limits import BudgetStatus, NodeLimits, allowed_threads
from cellguard.budget.results import NodeRow, Projection
from cellguard.budget.snapshot import CellKey, CellView, ClusterSnapshot
from cellguard.budget.spread import WaterFill
from cellguard.budget.threads import threads_for
from cellguard.budget.usage import (
    PolicyNodes,
    modelled_threads,
    policy_nodes,
    reserved_threads,
    slack,
    used_threads,
)


def _added(growth: int, pods: int, per_pod: int, received: int) -> int:
    """Threads a node gains: each of the cell's pods there grows by `growth` (one more
    peer each), and each new pod it receives brings `per_pod`."""
    return growth * pods + per_pod * received


@dataclass(frozen=True, slots=True)
class _Host:
    """A node hosting pods of the cell."""

    name: str
    pods: int  # every pod of the cell there (terminating ones hold threads too)
    live: int  # the ones the scheduler's spread counts (not terminating)
    eligible: bool
    figures: NodeLimits
    used: int
    reserved: int  # other cells'


@dataclass(frozen=True, slots=True)
class _Tightest:
    """Of some nodes without pods of the cell, the least free (one per limit)."""

    name: str
    figures: NodeLimits
    used: int
    reserved: int
    free: int  # allowed - used - reserved


class CellPlan:
    """Everything about one cell in one snapshot that does not depend on the target size.

    Where new pods go (see `eligibility` and `pools`): the receivers are the nodes the
    cell's pods may land on now (a NodeExclusive cell's pool, a Shared cell's nodes outside
    every pool); a NodeExclusive cell may also claim free nodes into its pool. The water
    line is computed over receivers and claimable nodes together, and the plan claims the
    fewest free nodes that keep it there (most free threads first). Spread domains that
    cannot receive (cordoned, or kept off by a sibling) cap the water line at their count
    + 1 (maxSkew 1): beyond it the scheduler would leave pods Pending, so it is refused.
    """

    def __init__(self, snapshot: ClusterSnapshot, cell: CellView, nodes: PolicyNodes) -> None:
        self.snapshot = snapshot
        self.cell = cell
        self.nodes = nodes
        self.margin = nodes.margin
        policy = nodes.policy
        self.cap = (
            cell.max_replicas if cell.max_replicas is not None else policy.default_max_replicas
        )
        self.current = cell.replicas
        self.threads_now = threads_for(cell, cell.replicas)

        free = slack(snapshot, nodes.policy_name)
        modelled = modelled_threads(snapshot)
        reserved = reserved_threads(snapshot)
        own = reserved.by_cell.get(cell.key, {})
        hosting = snapshot.pods.of_cell(cell.key)
        live = snapshot.pods.live_of_cell(cell.key)
        self.pooled = is_pooled(cell)
        self.excluded = excluded_by_isolation(snapshot, cell)
        receivers = receiving_nodes(snapshot, cell)
        claimable = free_nodes(snapshot, cell)
        adopt: frozenset[str] = frozenset()
        self.unusable_free: NodeLimits | None = None
        if self.pooled:
            # Hosts in no pool (pods placed before pools existed) join the cell's pool.
            adopt = claimable.intersection(n for n, count in hosting.items() if count > 0)
            receivers = receivers | adopt
            unknown_free = nodes.unusable.intersection(claimable).difference(hosting)
            # Never claimed; but when they are all there is, a refusal names one of them.
            self.unusable_free = nodes.of(snapshot, min(unknown_free)) if unknown_free else None
            claimable = claimable.difference(hosting, nodes.unusable)
        self.adopt = adopt
        self.receivers = receivers
        self.claimable = claimable
        # Spread domains that cannot receive: each caps the water line at its count + 1.
        self.blocked = spread_domains(snapshot, cell).difference(receivers)
        floor = min((live.get(name, 0) for name in self.blocked), default=None)
        self.level_cap = floor + 1 if floor is not None else None
        self.placed = sum(count for count in live.values() if count > 0)

        hosts = []
        for name in sorted(hosting):
            pods = hosting[name]
            if pods <= 0:
                continue
            figures = nodes.of(snapshot, name)
            hosts.append(
                _Host(
                    name=name,
                    pods=pods,
                    live=max(0, live.get(name, 0)),
                    eligible=name in receivers,
                    figures=figures,
                    used=used_threads(figures, modelled.get(name, 0)),
                    reserved=reserved.others(cell.key, name),
                )
            )
        self.hosts = tuple(hosts)
        # The per-size check runs a dozen times a decision: plain tuples, looked up once.
        self._host_checks = tuple(
            (h.used + h.reserved, h.pods, h.live, h.eligible, h.figures.allowed or 0, h.name)
            for h in self.hosts
        )
        self.unusable_host = next((h for h in self.hosts if not h.figures.usable), None)

        # Receivers without pods of the cell: up to thousands, handled as groups.
        self.empty = receivers.difference(hosting)
        histogram = Counter(h.live for h in self.hosts if h.eligible)
        histogram[0] += len(self.empty)
        self._receiver_counts = tuple(histogram.items())
        with_free = Counter(histogram)
        with_free[0] += len(claimable)
        self.fill = WaterFill(with_free)
        unusable_empty = nodes.unusable.intersection(self.empty)
        self.unusable_empty = nodes.of(snapshot, min(unusable_empty)) if unusable_empty else None
        self._free = free
        self._own = own
        self._reserved_total = reserved.total
        self.tightest = tuple(self._tightest_per_limit())
        self.pod_limit = self._smallest_pod_limit()
        self._claim_ranking: tuple[list[str], list[tuple[int, str]]] | None = None
        self._chosen: dict[int, tuple[int, int, tuple[RefusalReason, str] | None]] = {}

    def _tightest_per_limit(self) -> list[_Tightest]:
        free, own = self._free, self._own
        found = []
        for names in self.nodes.by_limit.values():
            group = names & self.empty
            if not group:
                continue
            # Nodes under the cell's own reservation get it back (it is being replaced).
            mine = [name for name in own if name in group] if own else []
            best = _least_free(group.difference(mine) if mine else group, free)
            for name in mine:
                candidate = (free[name] + own[name], name)
                if best is None or candidate < best:
                    best = candidate
            if best is None:
                continue
            found.append(self._tight(best[1], best[0]))
        return found

    def _tight(self, name: str, node_free: int) -> _Tightest:
        figures = self.nodes.limits[name]
        assert figures.allowed is not None
        reserved = self._reserved_total.get(name, 0) - self._own.get(name, 0)
        return _Tightest(
            name=name,
            figures=figures,
            used=figures.allowed - node_free - reserved,
            reserved=reserved,
            free=node_free,
        )

    def _smallest_pod_limit(self) -> tuple[int, str] | None:
        """The smallest per-pod PID limit where the cell's pods are or may go."""
        where_pods = self.receivers | self.claimable | {h.name for h in self.hosts}
        found: tuple[int, str] | None = None
        for limit, names in self.nodes.pod_limits:
            where = names & where_pods
            if where:
                found = (limit, min(where))
                break
        # A host the snapshot lost has no entry there; the policy's defaults may still give
        # it a pod PID limit.
        for host in self.hosts:
            lost_limit = host.figures.pod_pids_limit
            if host.name not in self.nodes.limits and lost_limit is not None:
                candidate = (lost_limit, host.name)
                found = min(found, candidate) if found else candidate
        return found

    # ----------------------------------------------------------------- claims

    def _claim_candidates(self) -> tuple[list[str], list[tuple[int, str]]]:
        """The claimable nodes in the order claims take them, and for each k the (free
        threads, node) of the tightest of the first k.

        Those the cell's own reservation already claimed come first (so that admission and
        reconciler agree), then the most free. Sorted once a plan, on first use.
        """
        if self._claim_ranking is None:
            mine = own_claims(self.snapshot, self.cell)
            free, own = self._free, self._own

            def free_of(name: str) -> int:
                return free.get(name, 0) + own.get(name, 0)

            order = sorted(self.claimable, key=lambda n: (n not in mine, -free_of(n), n))
            tightest = list(accumulate(((free_of(n), n) for n in order), min))
            self._claim_ranking = (order, tightest)
        return self._claim_ranking

    def _claims_at(self, replicas: int, level: int) -> int:
        """Free nodes the cell at `replicas` takes into its pool with the water line at
        `level`: the fewest that give its new pods room."""
        if not level or not self.claimable:
            return 0
        new = self.new_pods(replicas)
        room = sum(n * (level - count) for count, n in self._receiver_counts if count < level)
        remaining = new - room
        return 0 if remaining <= 0 else min(len(self.claimable), -(-remaining // level))

    def claims_needed(self, replicas: int) -> int:
        """How many free nodes the cell at `replicas` takes into its pool."""
        return self._choose(replicas)[1]

    def claimed(self, replicas: int) -> frozenset[str]:
        """Nodes to label into the cell's pool before its pods at `replicas` can land."""
        claims = self.claims_needed(replicas)
        if not claims:
            return self.adopt
        order, _ = self._claim_candidates()
        return self.adopt.union(order[:claims])

    # ----------------------------------------------------------------- at size M

    def new_pods(self, replicas: int) -> int:
        # Pods not yet placed (pending, replacing a terminating one, or admitted but not
        # created) are new pods too.
        return max(0, replicas - min(self.placed, self.current))

    def level(self, replicas: int) -> int:
        """The water line the cell's new pods at `replicas` are planned at."""
        return self._choose(replicas)[0]

    def _lowest_level(self, replicas: int) -> int:
        new = self.new_pods(replicas)
        return self.fill.level(new) if new and self.fill.node_count else 0

    def _choose(self, replicas: int) -> tuple[int, int, tuple[RefusalReason, str] | None]:
        """(water line, claims, thread refusal at the lowest line) for the cell at `replicas`.

        The lowest water line spreads the new pods over the most nodes. When a claimed node
        cannot take that many threads, a higher line over fewer (and freer) claimed nodes
        may: the first line that fits is the plan, so that fitting is monotone in size.
        """
        chosen = self._chosen.get(replicas)
        if chosen is None:
            lowest = self._lowest_level(replicas)
            lowest_claims = self._claims_at(replicas, lowest)
            first = self._thread_refusal(replicas, lowest, lowest_claims)
            chosen = (lowest, lowest_claims, first)
            if first is not None and self.claimable and lowest:
                # No line above the fullest receiver plus every new pod can be needed (live
                # pods may outnumber the replicas while a scale-down settles).
                fullest = max((count for count, _ in self._receiver_counts), default=0)
                top = (
                    self.level_cap
                    if self.level_cap is not None
                    else fullest + self.new_pods(replicas)
                )
                for level in range(lowest + 1, max(lowest, top) + 1):
                    claims = self._claims_at(replicas, level)
                    if self._thread_refusal(replicas, level, claims) is None:
                        chosen = (level, claims, None)
                        break
                    if not claims:
                        break  # higher lines only load the pool's nodes more
            self._chosen[replicas] = chosen
        return chosen

    def _thread_refusal(
        self, replicas: int, level: int, claims: int
    ) -> tuple[RefusalReason, str] | None:
        """Which node would go over its limit with the new pods at `level` and `claims` free
        nodes taken (None: none would)."""
        per_pod = threads_for(self.cell, replicas)
        growth = per_pod - self.threads_now
        for before, pods, live, eligible, allowed, name in self._host_checks:
            received = level - live if eligible and level > live else 0
            if before + _added(growth, pods, per_pod, received) > allowed:
                return RefusalReason.NODE_THREAD_LIMIT, name
        if level:
            for tight in self.tightest:
                if tight.free < per_pod * level:
                    return RefusalReason.NODE_THREAD_LIMIT, tight.name
            if claims:
                node_free, name = self._claim_candidates()[1][claims - 1]
                if node_free < per_pod * level:
                    return RefusalReason.NODE_THREAD_LIMIT, name
        return None

    def refusal(self, replicas: int) -> tuple[RefusalReason, str | None] | None:
        """Why the cell does not fit at `replicas` (None when it does). Cheap: no rows."""
        if replicas > self.cap:
            return RefusalReason.CELL_SIZE_CAP, None
        new = self.new_pods(replicas)
        if new and not self.fill.node_count:
            if self.unusable_free is not None:  # nodes there are, but of unknown budget
                return _budget_reason(self.unusable_free), self.unusable_free.node
            return RefusalReason.NO_ELIGIBLE_NODES, None
        lowest = self._lowest_level(replicas)
        if self.level_cap is not None and (
            lowest > self.level_cap or replicas > self.level_cap * self.fill.node_count
        ):
            return RefusalReason.UNSCHEDULABLE, None
        unknown = self.unusable_host.figures if self.unusable_host else None
        if unknown is None and lowest and self.unusable_empty is not None:
            unknown = self.unusable_empty
        if unknown is not None:
            return _budget_reason(unknown), unknown.node
        per_pod = threads_for(self.cell, replicas)
        if self.pod_limit is not None and replicas > 0:
            pod_limit, node = self.pod_limit
            if per_pod > allowed_threads(pod_limit, self.margin):
                return RefusalReason.POD_PID_LIMIT, node
        level, _claims, first = self._choose(replicas)
        if first is not None and level == lowest:
            return first
        return None

    def rows(self, replicas: int) -> list[NodeRow]:
        per_pod = threads_for(self.cell, replicas)
        growth = per_pod - self.threads_now
        level = self.level(replicas)
        rows = []
        for host in self.hosts:
            received = WaterFill.received(level, host.live) if host.eligible else 0
            add = _added(growth, host.pods, per_pod, received)
            rows.append(
                _row(host.name, host.figures, host.pods, received, host.used, host.reserved, add)
            )
        if level:
            tightest = list(self.tightest)
            claims = self.claims_needed(replicas)
            if claims:
                node_free, name = self._claim_candidates()[1][claims - 1]
                tightest.append(self._tight(name, node_free))
            for tight in tightest:
                rows.append(
                    _row(
                        tight.name,
                        tight.figures,
                        0,
                        level,
                        tight.used,
                        tight.reserved,
                        _added(growth, 0, per_pod, level),
                    )
                )
        rows.sort(key=_tightest_first)
        return rows

    def receiving(self, replicas: int) -> int:
        level = self.level(replicas)
        if not level:
            return 0
        hosts_below = sum(1 for h in self.hosts if h.eligible and h.live < level)
        return len(self.empty) + hosts_below + self.claims_needed(replicas)

    def reservation(self, replicas: int) -> dict[str, int]:
        """Threads per node the cell at `replicas` needs beyond what it holds now."""
        per_pod = threads_for(self.cell, replicas)
        growth = per_pod - self.threads_now
        level = self.level(replicas)
        receiving = self.empty.union(self.claimed(replicas) - self.adopt) if level else ()
        held = dict.fromkeys(receiving, per_pod * level)
        for host in self.hosts:
            received = WaterFill.received(level, host.live) if host.eligible else 0
            add = _added(growth, host.pods, per_pod, received)
            if add > 0:
                held[host.name] = add
        return held

    def arrivals(self, replicas: int) -> dict[str, int]:
        """node -> new pods of the cell at `replicas` the node may receive at worst: the
        nodes `reservation` holds new pods' threads on (its pods still to come land there
        and nowhere else)."""
        level = self.level(replicas)
        if not level:
            return {}
        found = dict.fromkeys(self.empty.union(self.claimed(replicas) - self.adopt), level)
        for host in self.hosts:
            if host.eligible and level > host.live:
                found[host.name] = level - host.live
        return found

    def project(self, replicas: int) -> Projection:
        refusal = self.refusal(replicas)
        rows = tuple(self.rows(replicas))
        limiting = next((row for row in rows if row.headroom is not None), None)
        refused_node = refusal[1] if refusal else None
        if refusal is not None and refusal[0] is RefusalReason.NODE_THREAD_LIMIT:
            # Name the node that is furthest over (rows come tightest first).
            limiting = next((row for row in rows if not row.fits), limiting)
            refused_node = limiting.node if limiting else refused_node
        return Projection(
            cell=self.cell.key,
            replicas=replicas,
            threads_per_pod=threads_for(self.cell, replicas),
            fits=refusal is None,
            reason=refusal[0] if refusal else None,
            refused_node=refused_node,
            limiting=limiting,
            rows=rows,
            receiving_nodes=self.receiving(replicas),
            claimed_nodes=self.claimed(replicas) if refusal is None else self.adopt,
        )

    def max_safe_replicas(self) -> int:
        """The largest size in 0..cap that fits (0 when none does)."""
        if self.refusal(0) is not None:
            return 0
        low, high = 0, self.cap  # refusal(low) is None; search the last such size
        while low < high:
            middle = (low + high + 1) // 2
            if self.refusal(middle) is None:
                low = middle
            else:
                high = middle - 1
        return low


def _least_free(names: AbstractSet[str], free: Mapping[str, int]) -> tuple[int, str] | None:
    """(free threads, node) of the node with the fewest free threads; ties by name."""
    if not names:
        return None
    ordered = list(names)
    values = list(map(free.__getitem__, ordered))  # C loops: this runs over thousands
    least = min(values)
    if values.count(least) == 1:
        return least, ordered[values.index(least)]
    return least, min(name for name, value in zip(ordered, values, strict=True) if value == least)


def _budget_reason(figures: NodeLimits) -> RefusalReason:
    if figures.status is BudgetStatus.STALE:
        return RefusalReason.BUDGET_STALE
    return RefusalReason.BUDGET_UNKNOWN


def _row(
    name: str, figures: NodeLimits, pods: int, received: int, used: int, reserved: int, add: int
) -> NodeRow:
    if figures.limit is None:
        return NodeRow(
            node=name,
            pods=pods,
            new_pods=received,
            now=None,
            reserved=reserved,
            projected=None,
            limit=None,
            allowed=None,
            headroom=None,
            budget=figures.status,
            from_defaults=figures.from_defaults,
        )
    projected = used + reserved + add
    return NodeRow(
        node=name,
        pods=pods,
        new_pods=received,
        now=used,
        reserved=reserved,
        projected=projected,
        limit=figures.limit,
        allowed=figures.allowed,
        headroom=1 - projected / figures.limit,
        budget=figures.status,
        from_defaults=figures.from_defaults,
    )


def _tightest_first(row: NodeRow) -> tuple[int, float, str]:
    # Limits are at most kernel.pid_max (<= 2**22), so distinct ratios stay distinct as
    # floats and only true ties fall through to the name. (Whether a node fits is decided
    # in integers elsewhere; this only orders the rows.)
    if row.projected is None or row.limit is None:
        return (1, 0.0, row.node)
    return (0, -row.projected / row.limit, row.node)


def cell_of(snapshot: ClusterSnapshot, cell_key: tuple[str, str]) -> CellView:
    key = CellKey(*cell_key)
    try:
        return snapshot.cells[key]
    except KeyError:
        raise KeyError(f"cell {key} is not in the snapshot (add it with with_cell)") from None


def plan_for(snapshot: ClusterSnapshot, cell: CellView) -> CellPlan | None:
    """The cell's plan under its policy (None when the policy does not exist)."""
    if cell.policy_name not in snapshot.policies:
        return None
    return CellPlan(snapshot, cell, policy_nodes(snapshot, cell.policy_name))
