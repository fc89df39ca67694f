"""Which nodes a cell's new pods may land on.

A node is eligible for a cell when the scheduler could bind the cell's pods there: its
labels match the cell's nodeSelector, every NoSchedule/NoExecute taint is tolerated, it
is Ready and not cordoned, and (isolation) it hosts no pod of another cell of the same
service in the same namespace when either of the two cells is NodeExclusive. The last rule
is symmetric because required pod anti-affinity is: the scheduler also refuses a pod that
an existing pod's anti-affinity matches. It is namespaced because pod anti-affinity
without a namespace selector only sees pods of its own namespace.

Cell node pools (see `pools`) narrow it further: a NodeExclusive cell's pods may land on
its own pool's nodes only (plus the free nodes a decision claims for it), a Shared cell's on
nodes in no pool of its service.

The spread domains are what the scheduler's hostname spread constraint counts: every node
matching the pods' node selection (nodeSelector, pool label) whose blocking taints they
tolerate - cordoned nodes and nodes the anti-affinity keeps them off included. The
planner needs both sets: a domain that cannot receive pods caps every other node.

The per-node predicates spell the rules out; `eligible_nodes` answers the same question
for thousands of nodes with set operations over indexes kept on the snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from cellguard.api.v1alpha1 import Isolation, TaintEffect, Toleration, TolerationOperator
from cellguard.budget.pools import pool_label_key, pool_label_value
from cellguard.budget.snapshot import (
    CellKey,
    CellView,
    Claimed,
    ClusterSnapshot,
    Index,
    Input,
    Taint,
)

ON_NODES = frozenset({Input.NODES})
SCHEDULABLE: Index[frozenset[str]] = Index("eligibility.schedulable", ON_NODES)
TAINT_GROUPS: Index[dict[tuple[Taint, ...], frozenset[str]]] = Index(
    "eligibility.taint-groups", ON_NODES
)
BY_LABEL: Index[dict[str, frozenset[str]]] = Index("eligibility.label", ON_NODES)  # per key
BY_SERVICE: Index[dict[tuple[str, str], tuple[CellView, ...]]] = Index(
    "eligibility.by-service", frozenset({Input.CELLS})
)
# Per placement signature (nodeSelector, tolerations, pool) and per service.
DOMAINS: Index[frozenset[str]] = Index("eligibility.domains", ON_NODES)
PLACEMENT: Index[frozenset[str]] = Index("eligibility.placement", ON_NODES)
POOLED: Index[frozenset[str]] = Index("eligibility.pooled", ON_NODES)
# service -> cell -> (expires at, nodes) of each live reservation claiming free nodes. On
# NOW (expiry), but never rebuilt for it: `changes` moves it, as it moves the reserved
# figures, by the cells whose claims changed (`carry_claims`). Rebuilt from every
# reservation after each admitted NodeExclusive change, a burst of N new cells cost O(N^2).
CLAIMS: Index[dict[str, dict[CellKey, Claimed]]] = Index(
    "eligibility.claims", frozenset({Input.RESERVATIONS, Input.CELLS, Input.NOW})
)

# Only these effects keep a pod off a node; PreferNoSchedule is a preference.
BLOCKING_EFFECTS = frozenset({TaintEffect.NO_SCHEDULE.value, TaintEffect.NO_EXECUTE.value})


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """core/v1 Toleration.ToleratesTaint, rule for rule."""
    if toleration.effect is not None and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator is TolerationOperator.EXISTS:
        return True
    return (toleration.value or "") == taint.value


def blocking_taints(taints: Iterable[Taint]) -> tuple[Taint, ...]:
    return tuple(sorted((t for t in taints if t.effect in BLOCKING_EFFECTS), key=_taint_order))


def _taint_order(taint: Taint) -> tuple[str, str, str]:
    return (taint.key, taint.value, taint.effect)


def tolerates_all(tolerations: Iterable[Toleration], taints: Iterable[Taint]) -> bool:
    """Every blocking taint is tolerated by at least one toleration."""
    tolerations = tuple(tolerations)
    return all(
        any(tolerates(toleration, taint) for toleration in tolerations)
        for taint in blocking_taints(taints)
    )


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def may_share_nodes(cell: CellView, other: CellView) -> bool:
    """Whether pods of the two cells may run on the same node."""
    if other.key == cell.key or (other.namespace, other.service) != (cell.namespace, cell.service):
        return True
    exclusive = Isolation.NODE_EXCLUSIVE
    return cell.isolation is not exclusive and other.isolation is not exclusive


# --------------------------------------------------------------------------- indexes


def _schedulable(snapshot: ClusterSnapshot) -> frozenset[str]:
    # The scheduler does not read the Ready condition: it keeps pods off a NotReady node by
    # the node.kubernetes.io/not-ready and /unreachable taints the node lifecycle controller
    # adds. Until that taint is there, a NotReady node may still receive pods, so it stays
    # a receiver here too (the bound must cover every node the scheduler may use).
    def compute() -> frozenset[str]:
        return frozenset(name for name, node in snapshot.nodes.items() if not node.unschedulable)

    return snapshot.derived(SCHEDULABLE, compute)


def _taint_groups(snapshot: ClusterSnapshot) -> dict[tuple[Taint, ...], frozenset[str]]:
    """Nodes grouped by their blocking taints: fleets have few distinct taint sets."""

    def compute() -> dict[tuple[Taint, ...], frozenset[str]]:
        groups: dict[tuple[Taint, ...], set[str]] = {}
        for name, node in snapshot.nodes.items():
            groups.setdefault(blocking_taints(node.taints), set()).add(name)
        return {taints: frozenset(names) for taints, names in groups.items()}

    return snapshot.derived(TAINT_GROUPS, compute)


def _label_values(snapshot: ClusterSnapshot, key: str) -> dict[str, frozenset[str]]:
    """label value -> nodes carrying it, for one label key (built when a selector asks)."""

    def compute() -> dict[str, frozenset[str]]:
        values: dict[str, set[str]] = {}
        for name, node in snapshot.nodes.items():
            value = node.labels.get(key)
            if value is not None:
                values.setdefault(value, set()).add(name)
        return {value: frozenset(names) for value, names in values.items()}

    return snapshot.derived(BY_LABEL.of(key), compute)


def _cells_by_service(snapshot: ClusterSnapshot) -> dict[tuple[str, str], tuple[CellView, ...]]:
    """(namespace, service) -> its cells."""

    def compute() -> dict[tuple[str, str], tuple[CellView, ...]]:
        services: dict[tuple[str, str], list[CellView]] = {}
        for cell in snapshot.cells.values():
            services.setdefault((cell.namespace, cell.service), []).append(cell)
        return {service: tuple(cells) for service, cells in services.items()}

    return snapshot.derived(BY_SERVICE, compute)


def _tolerated(snapshot: ClusterSnapshot, cell: CellView) -> set[str]:
    tolerated: set[str] = set()
    for taints, names in _taint_groups(snapshot).items():
        if tolerates_all(cell.tolerations, taints):
            tolerated.update(names)
    return tolerated


def _selected(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str] | None:
    """Nodes matching the nodeSelector; None when the cell has none (every node)."""
    selected: frozenset[str] | None = None
    for key, value in cell.node_selector.items():
        matching = _label_values(snapshot, key).get(value, frozenset())
        selected = matching if selected is None else selected & matching
    return selected


def excluded_by_isolation(snapshot: ClusterSnapshot, cell: CellView) -> set[str]:
    """Nodes hosting pods of another cell of the same service the cell may not share with."""
    excluded: set[str] = set()
    for other in _cells_by_service(snapshot).get((cell.namespace, cell.service), ()):
        if not may_share_nodes(cell, other):
            excluded.update(snapshot.pods.of_cell(other.key))
    return excluded


def _placement_signature(cell: CellView) -> tuple[object, ...]:
    return (
        tuple(sorted(cell.node_selector.items())),
        tuple(
            sorted(
                (t.key or "", t.operator, t.value or "", t.effect or "") for t in cell.tolerations
            )
        ),
    )


def placement_domains(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """Nodes the cell's selector and tolerations allow, cordoned or not (pools aside).

    What the spread constraint (nodeAffinityPolicy and nodeTaintsPolicy Honor) counts as
    domains; a cordoned node leaves them only once the node.kubernetes.io/unschedulable
    taint is on it. Kept per placement: cells share few distinct combinations.
    """

    def compute() -> frozenset[str]:
        selected = _selected(snapshot, cell)
        tolerated = _tolerated(snapshot, cell)
        return frozenset(tolerated if selected is None else tolerated.intersection(selected))

    signature = _placement_signature(cell)
    return snapshot.derived(DOMAINS.of(signature), compute)


def placement_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """Schedulable (not cordoned) nodes the cell's selector and tolerations allow (isolation
    and pools aside)."""

    def compute() -> frozenset[str]:
        return placement_domains(snapshot, cell).intersection(_schedulable(snapshot))

    signature = _placement_signature(cell)
    return snapshot.derived(PLACEMENT.of(signature), compute)


def pool_owners(snapshot: ClusterSnapshot, service: str) -> dict[str, frozenset[str]]:
    """Pool label value (`<namespace>.<cell>`) -> the nodes in that cell's pool."""
    return _label_values(snapshot, pool_label_key(service))


def pooled_nodes(snapshot: ClusterSnapshot, service: str) -> frozenset[str]:
    """Nodes in the pool of some cell of `service`."""

    def compute() -> frozenset[str]:
        return frozenset().union(*pool_owners(snapshot, service).values())

    return snapshot.derived(POOLED.of(service), compute)


def own_pool(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    owners = pool_owners(snapshot, cell.service)
    return owners.get(pool_label_value(cell.namespace, cell.name), frozenset())


def _claims(snapshot: ClusterSnapshot, service: str) -> dict[CellKey, frozenset[str]]:
    """Cell of `service` -> free nodes its live reservation claims for its pool."""

    def compute() -> dict[str, dict[CellKey, Claimed]]:
        claims: dict[str, dict[CellKey, Claimed]] = {}
        now = snapshot.now
        for reservation in snapshot.reservations:
            if not reservation.claimed_nodes or reservation.expires_at <= now:
                continue
            key = CellKey(*reservation.cell)
            owner = snapshot.cells.get(key)
            if owner is not None:
                of_service = claims.setdefault(owner.service, {})
                held = (reservation.expires_at, reservation.claimed_nodes)
                of_service[key] = (*of_service.get(key, ()), held)
        return claims

    now = snapshot.now
    live: dict[CellKey, frozenset[str]] = {}
    for key, held in snapshot.derived(CLAIMS, compute).get(service, {}).items():
        nodes = frozenset().union(*(nodes for expires_at, nodes in held if expires_at > now))
        if nodes:
            live[key] = nodes
    return live


def claimed_by_others(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """Nodes another cell of the service claimed for its pool (not labelled yet)."""
    claims = _claims(snapshot, cell.service)
    return frozenset().union(*(nodes for key, nodes in claims.items() if key != cell.key))


def own_claims(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    return _claims(snapshot, cell.service).get(cell.key, frozenset())


# --------------------------------------------------------------------------- carrying over


def carry_cell_change(parent: ClusterSnapshot, child: ClusterSnapshot, key: CellKey) -> None:
    """Seed `child` (= parent with the cell `key` added, replaced or removed) with the
    cells by service of `parent`, adjusted for that one cell (its claims: `carry_claims`)."""
    before, after = parent.cells.get(key), child.cells.get(key)
    services = parent.peek(BY_SERVICE)
    if services is not None:  # a service's cells in any order: only their union is read
        updated = dict(services)
        if before is not None:
            group = (before.namespace, before.service)
            rest = tuple(c for c in updated.get(group, ()) if c.key != key)
            if rest:
                updated[group] = rest
            else:
                updated.pop(group, None)
        if after is not None:
            group = (after.namespace, after.service)
            updated[group] = (*updated.get(group, ()), after)
        child.seed(BY_SERVICE, updated)


def carry_claims(
    parent: ClusterSnapshot, child: ClusterSnapshot, claims: Mapping[CellKey, Claimed]
) -> None:
    """Seed `child` with parent's claims index, moved for the cells in `claims`: each one's
    live claims in `child` (empty: none), filed under its service in `child` (added,
    moved to another service or removed with the cell). Every other cell's claims must be
    as in parent. O(those cells + services), whatever the number of reservations."""
    held = parent.peek(CLAIMS)
    if held is None:
        return
    updated = dict(held) if claims else held  # derived values are never mutated
    for key, entry in claims.items():
        before, after = parent.cells.get(key), child.cells.get(key)
        if before is not None and (after is None or after.service != before.service):
            _file_claims(updated, before.service, key, ())
        if after is not None:  # a fresh build files no claims of a cell it does not hold
            _file_claims(updated, after.service, key, entry)
    child.seed(CLAIMS, updated)


def _file_claims(
    claims: dict[str, dict[CellKey, Claimed]], service: str, key: CellKey, entry: Claimed
) -> None:
    of_service = dict(claims.get(service, {}))
    if entry:
        of_service[key] = entry
    else:
        of_service.pop(key, None)
    if of_service:
        claims[service] = of_service
    else:
        claims.pop(service, None)


def reads_labels(index: Index[Any], keys: AbstractSet[str]) -> bool:
    """Whether the derived index `index` depends on node labels under any of `keys`."""
    if index.name in (DOMAINS.name, PLACEMENT.name):
        selector = index.of_what[0] if isinstance(index.of_what, tuple) else ()
        return any(key in keys for key, _value in selector)
    if index.name == BY_LABEL.name:
        return index.of_what in keys
    if index.name == POOLED.name:
        return isinstance(index.of_what, str) and pool_label_key(index.of_what) in keys
    return False


def carry_label_change(
    parent: ClusterSnapshot,
    child: ClusterSnapshot,
    name: str,
    before: Mapping[str, str],
    after: Mapping[str, str],
) -> None:
    """Seed `child` (= parent with node `name` relabelled from `before` to `after`) with
    parent's label index of each changed key, moved for that node; the indexes built on
    those labels (placements, pools) are rebuilt on use."""
    for key in before.keys() | after.keys():
        if before.get(key) == after.get(key):
            continue
        values = parent.peek(BY_LABEL.of(key))
        if values is None:
            continue
        updated = dict(values)
        old, new = before.get(key), after.get(key)
        if old is not None:
            rest = updated.get(old, frozenset()) - {name}
            if rest:
                updated[old] = rest
            else:
                updated.pop(old, None)
        if new is not None:
            updated[new] = updated.get(new, frozenset()) | {name}
        child.seed(BY_LABEL.of(key), updated)


def is_pooled(cell: CellView) -> bool:
    """NodeExclusive cells live in pools; Shared cells on the nodes of no pool."""
    return cell.isolation is Isolation.NODE_EXCLUSIVE


def spread_domains(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """The nodes the scheduler counts in the cell's hostname spread, as labelled now."""
    domains = placement_domains(snapshot, cell)
    if is_pooled(cell):
        return domains.intersection(own_pool(snapshot, cell))
    return domains.difference(pooled_nodes(snapshot, cell.service))


def eligible_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """The nodes the cell's new pods may land on: those that may receive them now and the
    free nodes a NodeExclusive cell may claim into its pool."""
    return receiving_nodes(snapshot, cell) | free_nodes(snapshot, cell)


def receiving_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """The nodes the cell's pods may land on now: its pool (NodeExclusive) or the nodes in
    no pool (Shared), less cordoned nodes, isolation and other cells' claims."""
    placement = placement_nodes(snapshot, cell)
    if is_pooled(cell):
        placement = placement.intersection(own_pool(snapshot, cell))
    else:
        placement = placement.difference(pooled_nodes(snapshot, cell.service))
    return placement.difference(
        excluded_by_isolation(snapshot, cell), claimed_by_others(snapshot, cell)
    )


def free_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """Nodes a NodeExclusive cell may claim for its pool: schedulable, matching its
    placement, in no pool of the service, hosting no pod of a cell it may not share with,
    not claimed by another cell (its own claims included)."""
    if not is_pooled(cell):
        return frozenset()
    return placement_nodes(snapshot, cell).difference(
        pooled_nodes(snapshot, cell.service),
        excluded_by_isolation(snapshot, cell),
        claimed_by_others(snapshot, cell),
    )


def ineligibility(snapshot: ClusterSnapshot, cell: CellView) -> Counter[str]:
    """Why nodes cannot take the cell's pods, first reason per node (for refusal messages)."""
    excluded = excluded_by_isolation(snapshot, cell)
    claimed = claimed_by_others(snapshot, cell)
    key = pool_label_key(cell.service)
    mine = pool_label_value(cell.namespace, cell.name)
    reasons: Counter[str] = Counter()
    for name, node in snapshot.nodes.items():
        owner = node.labels.get(key)
        if not selector_matches(cell.node_selector, node.labels):
            reasons["do not match its nodeSelector"] += 1
        elif not tolerates_all(cell.tolerations, node.taints):
            reasons["have taints it does not tolerate"] += 1
        elif node.unschedulable:
            reasons["are cordoned"] += 1
        elif name in excluded:
            reasons[f"host another cell of service {cell.service}"] += 1
        elif owner is not None and not is_pooled(cell):
            reasons[f"are in the pool of a NodeExclusive cell of service {cell.service}"] += 1
        elif owner is not None and owner != mine:
            reasons[f"are in the pool of another cell of service {cell.service}"] += 1
        elif name in claimed:
            reasons["are claimed by another cell's pending scale-up"] += 1
    return reasons
