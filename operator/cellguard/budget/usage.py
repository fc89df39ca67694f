"""Threads per node: in use (observed or modelled), held by reservations, and left.

All of it is derived once per snapshot (and per policy where the policy matters) so that
a decision only looks up figures, whatever the size of the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction

from cellguard.api.v1alpha1 import ThreadBudgetPolicySpec
from cellguard.budget.limits import BudgetStatus, NodeLimits, margin_fraction, node_limits
from cellguard.budget.snapshot import (
    CellKey,
    Claimed,
    ClusterSnapshot,
    Index,
    Input,
    ReservationLike,
)
from cellguard.budget.threads import threads_for
from cellguard.budget.versioned import Totals, Versioned


def modelled_threads(snapshot: ClusterSnapshot) -> dict[str, int]:
    """node -> threads the managed pods on it hold by their cells' thread models.

    Observed figures lag behind pods that just started (a new pod has not opened its peer
    connections yet), so the planner counts the larger of observed and modelled.
    """

    def compute() -> dict[str, int]:
        modelled: dict[str, int] = {}
        get = modelled.get
        for key, nodes in snapshot.pods.by_cell.items():
            cell = snapshot.cells.get(key)
            if cell is None:
                continue  # a cell being deleted: its pods still show in `observed`
            per_pod = threads_for(cell, cell.replicas)
            if not per_pod:
                continue  # a node no pod models threads on is absent, not 0
            for node, pods in nodes.items():
                modelled[node] = get(node, 0) + per_pod * pods
        return modelled

    return snapshot.derived(MODELLED, compute)


MODELLED: Index[dict[str, int]] = Index("usage.modelled", frozenset({Input.CELLS, Input.PODS}))


@dataclass(frozen=True, slots=True)
class Reserved:
    """Threads held by admitted changes that are not applied yet (expired ones dropped).

    The maps are persistent (`versioned`): a change of one reservation makes a new
    `Reserved` in O(nodes it covers), and this one stays as it was for whoever still reads
    it. The operator's ledger keeps one up to date on every hold and release, so a
    decision never re-sums the reservations; and two versions tell which cells' claims
    differ between them (`changes` moves the claims index by those alone).
    """

    total: Totals  # node -> threads, every cell
    by_cell: Versioned[CellKey, Mapping[str, int]]  # cell -> node -> threads
    claims: Versioned[CellKey, Claimed]  # cell -> its reservations' claims (those with any)
    # No reservation counted here expires before this moment (None: none is counted). A
    # lower bound: after a release it may be earlier than the earliest left.
    next_expiry: datetime | None = field(default=None, compare=False)

    def others(self, cell: CellKey, node: str) -> int:
        """Threads other cells hold on the node (a cell's own reservation is replaced)."""
        own = self.by_cell.get(cell)
        return self.total.get(node, 0) - (own.get(node, 0) if own else 0)

    def changed(
        self,
        removed: Iterable[ReservationLike],
        added: Iterable[ReservationLike],
        *,
        whole: Iterable[ReservationLike],
    ) -> tuple[Reserved, dict[str, int]]:
        """These figures with `removed` (counted here) dropped and `added` held, and
        node -> the change of threads held: O(nodes they cover). `whole` is every
        reservation counted after the change (to rebuild the entry of a cell holding
        several)."""
        dropped, held_now = list(removed), list(added)
        delta: dict[str, int]
        if len(held_now) == 1:
            delta = dict(held_now[0].threads_by_node)  # the common case: a copy, in C
        else:
            delta = {}
            for reservation in held_now:
                for node, threads in reservation.threads_by_node.items():
                    delta[node] = delta.get(node, 0) + threads
        get = delta.get
        for reservation in dropped:
            for node, threads in reservation.threads_by_node.items():
                delta[node] = get(node, 0) - threads
        cells = {CellKey(*r.cell) for r in (*dropped, *held_now)}
        if not cells:
            return self, {}
        values: dict[CellKey, Mapping[str, int]] = {}
        gone: list[CellKey] = []
        claimed: dict[CellKey, Claimed] = {}
        unclaimed: list[CellKey] = []
        mine: dict[CellKey, list[ReservationLike]] = {cell: [] for cell in cells}
        for reservation in whole:
            found = mine.get(CellKey(*reservation.cell))
            if found is not None:
                found.append(reservation)
        for cell, held in mine.items():
            if len(held) == 1:
                values[cell] = held[0].threads_by_node
            elif held:
                own: dict[str, int] = {}
                for reservation in held:
                    for node, threads in reservation.threads_by_node.items():
                        own[node] = own.get(node, 0) + threads
                values[cell] = own
            else:
                gone.append(cell)
            claims = _claims_of(held)
            if claims:
                claimed[cell] = claims
            else:
                unclaimed.append(cell)  # a no-op unless it claimed before
        expiries = [r.expires_at for r in held_now]
        if self.next_expiry is not None:
            expiries.append(self.next_expiry)
        changed = Reserved(
            self.total.plus(delta),
            self.by_cell.updated(values, gone),
            self.claims.updated(claimed, unclaimed),
            min(expiries, default=None),
        )
        return changed, delta

    def expired(
        self, everything: Iterable[ReservationLike], now: datetime
    ) -> tuple[Reserved, dict[str, int]]:
        """These figures (of `everything`) at `now`: the expired ones dropped, and node ->
        the change of threads held. O(1) when none expired (see `next_expiry`)."""
        if self.next_expiry is None or self.next_expiry > now:
            return self, {}
        gone: list[ReservationLike] = []
        live: list[ReservationLike] = []
        for reservation in everything:
            (live if reservation.expires_at > now else gone).append(reservation)
        changed, delta = self.changed(gone, (), whole=live)
        next_expiry = min((r.expires_at for r in live), default=None)
        return replace(changed, next_expiry=next_expiry), delta


def _claims_of(reservations: Iterable[ReservationLike]) -> Claimed:
    return tuple((r.expires_at, r.claimed_nodes) for r in reservations if r.claimed_nodes)


def empty_reserved() -> Reserved:
    """No reservation: the start of a ledger's figures."""
    return Reserved(Totals(), Versioned(), Versioned(), None)


def reserved_of(reservations: Iterable[ReservationLike], now: datetime) -> Reserved:
    """The figures of `reservations` at `now`, summed from scratch."""
    total: dict[str, int] = {}
    by_cell: dict[CellKey, Mapping[str, int]] = {}
    claims: dict[CellKey, Claimed] = {}
    next_expiry: datetime | None = None
    for reservation in reservations:
        if reservation.expires_at <= now:
            continue
        if next_expiry is None or reservation.expires_at < next_expiry:
            next_expiry = reservation.expires_at
        key = CellKey(*reservation.cell)
        threads_by_node = reservation.threads_by_node
        if key in by_cell:  # several of one cell: summed
            own = dict(by_cell[key])
            for node, threads in threads_by_node.items():
                own[node] = own.get(node, 0) + threads
            by_cell[key] = own
        else:
            by_cell[key] = threads_by_node
        for node, threads in threads_by_node.items():
            total[node] = total.get(node, 0) + threads
        if reservation.claimed_nodes:
            claims[key] = (*claims.get(key, ()), *_claims_of((reservation,)))
    return Reserved(
        Totals({node: threads for node, threads in total.items() if threads}),
        Versioned(by_cell),
        Versioned(claims),
        next_expiry,
    )


def reserved_threads(snapshot: ClusterSnapshot) -> Reserved:
    return snapshot.derived(RESERVED, lambda: reserved_of(snapshot.reservations, snapshot.now))


RESERVED: Index[Reserved] = Index("usage.reserved", frozenset({Input.RESERVATIONS, Input.NOW}))


@dataclass(frozen=True, slots=True)
class PolicyNodes:
    """Every node's budget under one policy, indexed the way the planner asks."""

    policy_name: str
    policy: ThreadBudgetPolicySpec
    margin: Fraction
    limits: dict[str, NodeLimits]
    by_limit: dict[int, frozenset[str]]  # usable nodes by effective limit
    unusable: frozenset[str]  # budget unknown or stale, and no defaults to stand in
    pod_limits: tuple[tuple[int, frozenset[str]], ...]  # per-pod PID limit -> nodes, ascending
    stale_from: datetime | None  # after this moment some known budget is stale (None: never)

    def of(self, snapshot: ClusterSnapshot, node: str) -> NodeLimits:
        """The node's limits, also for a node the snapshot does not know."""
        found = self.limits.get(node)
        if found is not None:
            return found
        return node_limits(
            node, None, self.policy, snapshot.now, margin=self.margin, node_exists=False
        )


def policy_nodes(snapshot: ClusterSnapshot, policy_name: str) -> PolicyNodes:
    """Node budgets under the named policy (KeyError when there is no such policy)."""
    policy = snapshot.policies[policy_name]

    def compute() -> PolicyNodes:
        margin = margin_fraction(policy)
        limits = {
            name: node_limits(
                name,
                node.budget,
                policy,
                snapshot.now,
                margin=margin,
                received_at=node.budget_received_at,
                cell_pod_threads=node.cell_pod_threads,
            )
            for name, node in snapshot.nodes.items()
        }
        by_limit: dict[int, set[str]] = {}
        by_pod_limit: dict[int, set[str]] = {}
        unusable: set[str] = set()
        deadlines = [
            figures.as_of + timedelta(seconds=policy.stale_after_seconds)
            for figures in limits.values()
            if figures.status is BudgetStatus.KNOWN and figures.as_of is not None
        ]
        for name, figures in limits.items():
            if figures.limit is None:
                unusable.add(name)
                continue
            by_limit.setdefault(figures.limit, set()).add(name)
            if figures.pod_pids_limit is not None:
                by_pod_limit.setdefault(figures.pod_pids_limit, set()).add(name)
        return PolicyNodes(
            policy_name=policy_name,
            policy=policy,
            margin=margin,
            limits=limits,
            by_limit={limit: frozenset(names) for limit, names in by_limit.items()},
            unusable=frozenset(unusable),
            pod_limits=tuple(
                (limit, frozenset(names)) for limit, names in sorted(by_pod_limit.items())
            ),
            stale_from=min(deadlines, default=None),
        )

    return snapshot.derived(POLICY_NODES.of(policy_name), compute)


# One per policy: `POLICY_NODES.of(policy_name)`.
POLICY_NODES: Index[PolicyNodes] = Index(
    "usage.policy", frozenset({Input.NODES, Input.POLICIES, Input.NOW})
)


def used_threads(figures: NodeLimits, modelled: int) -> int:
    """Threads counted as in use: the larger of what the node reported and what it holds
    by the model - its other threads (the report's, less the cell pods' own readings) plus
    the modelled threads of the cell pods on it now.

    Not `max(observed, modelled)`: once the pods' modelled threads pass the last report,
    that forgets everything else on the node (an admitted scale-up then ends above the
    allowance by the node's other threads, as the kernel counts them)."""
    return max(figures.observed or 0, (figures.others or 0) + modelled)


def slack(snapshot: ClusterSnapshot, policy_name: str) -> dict[str, int]:
    """Usable node -> threads still free under the policy, after every reservation.

    free = allowed - used - reserved (all cells), used as `used_threads` counts it; the
    planner adds a cell's own reservation back on the nodes it covers.
    """

    def compute() -> dict[str, int]:
        nodes = policy_nodes(snapshot, policy_name)
        modelled = modelled_threads(snapshot)
        reserved = reserved_threads(snapshot).total.as_dict()
        free: dict[str, int] = {}
        for name, figures in nodes.limits.items():
            if figures.allowed is None:
                continue
            used = used_threads(figures, modelled.get(name, 0))
            free[name] = figures.allowed - used - reserved.get(name, 0)
        return free

    return snapshot.derived(SLACK.of(policy_name), compute)


# One per policy: `SLACK.of(policy_name)`.
SLACK: Index[dict[str, int]] = Index("usage.slack", frozenset(Input))


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One node's threads under a policy, as the fleet's gauges show them."""

    node: str
    limits: NodeLimits
    projected: int | None  # used (`used_threads`) + reserved; None when the limit is not
    headroom: float | None  # 1 - projected / limit


def node_usage(snapshot: ClusterSnapshot, policy_name: str) -> list[NodeUsage]:
    """Every node of the snapshot, by name (KeyError when there is no such policy)."""
    nodes = policy_nodes(snapshot, policy_name)
    modelled = modelled_threads(snapshot)
    reserved = reserved_threads(snapshot).total.as_dict()
    rows = []
    for name in sorted(snapshot.nodes):
        figures = nodes.limits[name]
        projected = (
            used_threads(figures, modelled.get(name, 0)) + reserved.get(name, 0)
            if figures.limit is not None
            else None
        )
        headroom = (
            1 - projected / figures.limit if projected is not None and figures.limit else None
        )
        rows.append(NodeUsage(name, figures, projected, headroom))
    return rows
