"""Which nodes a cell's new pods may land on.

A node is eligible for a cell when the scheduler could bind the cell's pods there: its
labels match the cell's nodeSelector, every NoSchedule/NoExecute taint is tolerated, it
is Ready and not cordoned, and (isolation) it hosts no pod of another cell of the same
service in the same namespace when either of the two cells is NodeExclusive. The last rule
is symmetric because required pod anti-affinity is: the scheduler also refuses a pod that
an existing pod's anti-affinity matches. It is namespaced because pod anti-affinity
without a namespace selector only sees pods of its own namespace.

The per-node predicates spell the rules out; `eligible_nodes` answers the same question
for thousands of nodes with set operations over indexes kept on the snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from cellguard.api.v1alpha1 import Isolation, TaintEffect, Toleration, TolerationOperator
from cellguard.budget.snapshot import CELLS, NODES, CellView, ClusterSnapshot, Taint

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

    return snapshot.derived("eligibility.schedulable", frozenset({NODES}), compute)


def _taint_groups(snapshot: ClusterSnapshot) -> dict[tuple[Taint, ...], frozenset[str]]:
    """Nodes grouped by their blocking taints: fleets have few distinct taint sets."""

    def compute() -> dict[tuple[Taint, ...], frozenset[str]]:
        groups: dict[tuple[Taint, ...], set[str]] = {}
        for name, node in snapshot.nodes.items():
            groups.setdefault(blocking_taints(node.taints), set()).add(name)
        return {taints: frozenset(names) for taints, names in groups.items()}

    return snapshot.derived("eligibility.taint-groups", frozenset({NODES}), compute)


def _label_values(snapshot: ClusterSnapshot, key: str) -> dict[str, frozenset[str]]:
    """label value -> nodes carrying it, for one label key (built when a selector asks)."""

    def compute() -> dict[str, frozenset[str]]:
        values: dict[str, set[str]] = {}
        for name, node in snapshot.nodes.items():
            value = node.labels.get(key)
            if value is not None:
                values.setdefault(value, set()).add(name)
        return {value: frozenset(names) for value, names in values.items()}

    return snapshot.derived(f"eligibility.label:{key}", frozenset({NODES}), compute)


def _cells_by_service(snapshot: ClusterSnapshot) -> dict[tuple[str, str], tuple[CellView, ...]]:
    """(namespace, service) -> its cells."""

    def compute() -> dict[tuple[str, str], tuple[CellView, ...]]:
        services: dict[tuple[str, str], list[CellView]] = {}
        for cell in snapshot.cells.values():
            services.setdefault((cell.namespace, cell.service), []).append(cell)
        return {service: tuple(cells) for service, cells in services.items()}

    return snapshot.derived("eligibility.by-service", frozenset({CELLS}), compute)


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


def placement_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """Schedulable (not cordoned) nodes the cell's selector and tolerations allow (isolation aside).

    Kept per placement: cells share few distinct selector/toleration combinations.
    """
    signature = (
        tuple(sorted(cell.node_selector.items())),
        tuple(
            sorted(
                (t.key or "", t.operator, t.value or "", t.effect or "") for t in cell.tolerations
            )
        ),
    )

    def compute() -> frozenset[str]:
        nodes = set(_schedulable(snapshot))
        selected = _selected(snapshot, cell)
        if selected is not None:
            nodes.intersection_update(selected)
        nodes.intersection_update(_tolerated(snapshot, cell))
        return frozenset(nodes)

    return snapshot.derived(f"eligibility.placement:{signature}", frozenset({NODES}), compute)


def eligible_nodes(snapshot: ClusterSnapshot, cell: CellView) -> frozenset[str]:
    """The nodes the cell's new pods may land on."""
    return placement_nodes(snapshot, cell).difference(excluded_by_isolation(snapshot, cell))


def ineligibility(snapshot: ClusterSnapshot, cell: CellView) -> Counter[str]:
    """Why nodes are not eligible, first reason per node (for refusal messages)."""
    excluded = excluded_by_isolation(snapshot, cell)
    reasons: Counter[str] = Counter()
    for name, node in snapshot.nodes.items():
        if not selector_matches(cell.node_selector, node.labels):
            reasons["do not match its nodeSelector"] += 1
        elif not tolerates_all(cell.tolerations, node.taints):
            reasons["have taints it does not tolerate"] += 1
        elif node.unschedulable:
            reasons["are cordoned"] += 1
        elif name in excluded:
            reasons[f"host another cell of service {cell.service}"] += 1
    return reasons
